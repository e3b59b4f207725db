//! Backbone forward passes: a history of internal item rows in, the user vector `h` out.
//!
//! Both follow `docs/bundle.md` exactly (the PyTorch modules in `python/dpr/models/` are the
//! reference; tests check parity to 1e-4). A history longer than `max_len` keeps its most
//! recent `max_len` items; an empty history is run as the single padding item (row 0), which
//! is what the PyTorch model computes for a sequence of length 0.

mod gru4rec;
mod sasrec;

pub(crate) use sasrec::linear;

pub use gru4rec::Gru4Rec;
pub use sasrec::{SasRec, SasRecShape};

use crate::bundle::{BackboneConfig, BackboneWeights, BundleError};

/// A loaded backbone (the item embedding table is shared, passed in at each call).
#[derive(Debug)]
pub enum Backbone {
    SasRec(SasRec),
    Gru4Rec(Gru4Rec),
}

impl Backbone {
    /// The backbone `config` describes, from its weights (`d`: width, `eps`: LayerNorm epsilon).
    pub fn new(
        config: &BackboneConfig,
        d: usize,
        eps: f32,
        weights: BackboneWeights<Vec<f32>>,
    ) -> Result<Backbone, BundleError> {
        match (config.clone(), weights) {
            (
                BackboneConfig::Sasrec {
                    max_len,
                    num_blocks,
                    num_heads,
                    ffn_dim,
                    positions,
                },
                BackboneWeights::SasRec {
                    position,
                    blocks,
                    final_norm,
                },
            ) => Ok(Backbone::SasRec(SasRec::new(
                SasRecShape {
                    max_len,
                    num_blocks,
                    num_heads,
                    ffn_dim,
                    positions,
                },
                d,
                eps,
                position,
                blocks,
                final_norm,
            )?)),
            (BackboneConfig::Gru4rec { max_len, .. }, BackboneWeights::Gru4Rec { layers }) => {
                Ok(Backbone::Gru4Rec(Gru4Rec::new(max_len, d, layers)?))
            }
            _ => Err(BundleError::tensor(
                "backbone",
                "the backbone weights are of another kind than dpr.json's backbone",
            )),
        }
    }

    pub fn max_len(&self) -> usize {
        match self {
            Backbone::SasRec(m) => m.max_len,
            Backbone::Gru4Rec(m) => m.max_len,
        }
    }

    /// The part of `history` the model reads: its most recent `max_len` items.
    pub fn window<'h>(&self, history: &'h [u32]) -> &'h [u32] {
        &history[history.len().saturating_sub(self.max_len())..]
    }

    /// The user vector (`dim` floats) after `history` (internal rows, oldest first, each in
    /// `0..embedding.rows`), written to `out`. Only [`Backbone::window`] of it is read.
    pub fn user_vector(&self, embedding: Rows<'_>, history: &[u32], out: &mut [f32]) {
        const PADDING: [u32; 1] = [0];
        let history = if history.is_empty() {
            &PADDING[..]
        } else {
            self.window(history)
        };
        match self {
            Backbone::SasRec(m) => m.user_vector(embedding, history, out),
            Backbone::Gru4Rec(m) => m.user_vector(embedding, history, out),
        }
    }
}

/// The item embedding rows as the backbone reads them: the first `width` floats of each
/// `stride`-float row (the serving table stores `[embedding, attributes]` per item).
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    pub data: &'a [f32],
    pub stride: usize,
    pub width: usize,
}

impl<'a> Rows<'a> {
    #[inline]
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.stride..i * self.stride + self.width]
    }
}

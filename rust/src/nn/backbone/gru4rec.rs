//! GRU4Rec inference: a stacked GRU (PyTorch gate order r, z, n); the top layer's last output.

use super::sasrec::linear;
use super::Rows;
use crate::bundle::{BundleError, GruLayerWeights};
use crate::nn::linalg::sigmoid;

#[derive(Debug)]
struct Layer {
    input: crate::nn::linalg::Linear,
    recurrent: crate::nn::linalg::Linear,
}

/// The GRU4Rec weights (see `docs/bundle.md`).
#[derive(Debug)]
pub struct Gru4Rec {
    pub max_len: usize,
    dim: usize,
    layers: Vec<Layer>,
}

impl Gru4Rec {
    pub fn new(
        max_len: usize,
        d: usize,
        layers: Vec<GruLayerWeights<Vec<f32>>>,
    ) -> Result<Gru4Rec, BundleError> {
        let layers = layers
            .into_iter()
            .enumerate()
            .map(|(l, w)| {
                Ok(Layer {
                    input: linear(w.input, &format!("backbone.gru.weight_ih_l{l}"))?,
                    recurrent: linear(w.recurrent, &format!("backbone.gru.weight_hh_l{l}"))?,
                })
            })
            .collect::<Result<Vec<_>, BundleError>>()?;
        Ok(Gru4Rec {
            max_len,
            dim: d,
            layers,
        })
    }

    /// `history`: 1..=max_len internal rows.
    pub fn user_vector(&self, embedding: Rows<'_>, history: &[u32], out: &mut [f32]) {
        let (n, d) = (history.len(), self.dim);
        let mut seq = vec![0.0f32; n * d];
        for (&item, row) in history.iter().zip(seq.chunks_exact_mut(d)) {
            row.copy_from_slice(embedding.row(item as usize));
        }
        let mut gates_in = vec![0.0f32; n * 3 * d];
        let mut gates_h = vec![0.0f32; 3 * d];
        let mut h = vec![0.0f32; d];
        for layer in &self.layers {
            // Input projections for every step at once; the recurrence is sequential.
            layer.input.apply(&seq, n, &mut gates_in);
            h.iter_mut().for_each(|x| *x = 0.0);
            for t in 0..n {
                layer.recurrent.apply_row(&h, &mut gates_h);
                let gi = &gates_in[t * 3 * d..(t + 1) * 3 * d];
                for j in 0..d {
                    let r = sigmoid(gi[j] + gates_h[j]);
                    let z = sigmoid(gi[d + j] + gates_h[d + j]);
                    let c = (gi[2 * d + j] + r * gates_h[2 * d + j]).tanh();
                    h[j] = (1.0 - z) * c + z * h[j];
                }
                seq[t * d..(t + 1) * d].copy_from_slice(&h);
            }
        }
        out.copy_from_slice(&h);
    }
}

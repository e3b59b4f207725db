//! SASRec inference: pre-norm causal self-attention blocks, user vector at the last position.

use super::Rows;
use crate::bundle::{BundleError, LinearWeights, NormWeights, Positions, SasRecBlockWeights};
use crate::nn::linalg::{gemv, gemv_transposed, layer_norm, relu, softmax, Linear};

#[derive(Debug)]
struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

#[derive(Debug)]
struct Block {
    attention_norm: Norm,
    query: Linear,
    /// Key and value projections stacked (`2d × d`): one product gives each row `[k, v]`.
    key_value: Linear,
    out: Linear,
    ffn_norm: Norm,
    ffn_in: Linear,
    ffn_out: Linear,
}

/// The SASRec weights (see `docs/bundle.md`).
#[derive(Debug)]
pub struct SasRec {
    pub max_len: usize,
    dim: usize,
    num_heads: usize,
    eps: f32,
    positions: Positions,
    position: Vec<f32>,
    blocks: Vec<Block>,
    final_norm: Norm,
}

fn norm(w: NormWeights<Vec<f32>>) -> Norm {
    Norm {
        weight: w.weight,
        bias: w.bias,
    }
}

/// A [`Linear`] from its weights (`what` names the layer in the error, which the bundle
/// reader's shape check makes unreachable).
pub(crate) fn linear(w: LinearWeights<Vec<f32>>, what: &str) -> Result<Linear, BundleError> {
    Linear::new(w.weight, w.bias, w.out_dim, w.in_dim).ok_or_else(|| BundleError::Tensor {
        tensor: what.to_owned(),
        message: format!("tensor '{what}' has the wrong size"),
    })
}

/// One layer computing `[a(x), b(x)]` (both `out × in` with the same input width).
fn stacked(a: Linear, b: Linear) -> Linear {
    let (out_dim, in_dim) = (a.out_dim + b.out_dim, a.in_dim);
    Linear::new(
        [a.weight, b.weight].concat(),
        [a.bias, b.bias].concat(),
        out_dim,
        in_dim,
    )
    .unwrap_or_else(|| unreachable!("both parts have in_dim columns and their own biases"))
}

/// The hyper-parameters `dpr.json` gives a SASRec backbone.
#[derive(Debug, Clone, Copy)]
pub struct SasRecShape {
    pub max_len: usize,
    pub num_blocks: usize,
    pub num_heads: usize,
    pub ffn_dim: usize,
    pub positions: Positions,
}

impl SasRec {
    pub fn new(
        shape: SasRecShape,
        d: usize,
        eps: f32,
        position: Vec<f32>,
        blocks: Vec<SasRecBlockWeights<Vec<f32>>>,
        final_norm: NormWeights<Vec<f32>>,
    ) -> Result<SasRec, BundleError> {
        let SasRecShape {
            max_len,
            num_heads,
            positions,
            ..
        } = shape;
        let blocks = blocks
            .into_iter()
            .enumerate()
            .map(|(b, w)| {
                let p = format!("backbone.blocks.{b}");
                Ok(Block {
                    attention_norm: norm(w.attention_norm),
                    query: linear(w.query, &format!("{p}.attention.query"))?,
                    key_value: stacked(
                        linear(w.key, &format!("{p}.attention.key"))?,
                        linear(w.value, &format!("{p}.attention.value"))?,
                    ),
                    out: linear(w.out, &format!("{p}.attention.out"))?,
                    ffn_norm: norm(w.ffn_norm),
                    ffn_in: linear(w.ffn_in, &format!("{p}.ffn_in"))?,
                    ffn_out: linear(w.ffn_out, &format!("{p}.ffn_out"))?,
                })
            })
            .collect::<Result<Vec<_>, BundleError>>()?;
        Ok(SasRec {
            max_len,
            dim: d,
            num_heads,
            eps,
            positions,
            position,
            blocks,
            final_norm: norm(final_norm),
        })
    }

    /// `history`: 1..=max_len internal rows. Writes the final-norm state of the last position.
    pub fn user_vector(&self, embedding: Rows<'_>, history: &[u32], out: &mut [f32]) {
        let (n, d) = (history.len(), self.dim);
        let scale = (d as f32).sqrt();
        let mut x = vec![0.0f32; n * d];
        for (t, (&item, row)) in history.iter().zip(x.chunks_exact_mut(d)).enumerate() {
            let e = embedding.row(item as usize);
            let row_index = match self.positions {
                Positions::FromEnd => n - 1 - t,
                Positions::FromStart => t,
            };
            let p = &self.position[row_index * d..(row_index + 1) * d];
            for ((v, e), p) in row.iter_mut().zip(e).zip(p) {
                *v = e * scale + p;
            }
        }
        let mut normed = vec![0.0f32; n * d];
        let mut q = vec![0.0f32; n * d];
        let mut kv = vec![0.0f32; n * 2 * d];
        let mut attended = vec![0.0f32; n * d];
        let mut projected = vec![0.0f32; n * d];
        let ffn_dim = self.blocks.first().map_or(0, |b| b.ffn_in.out_dim);
        let mut hidden = vec![0.0f32; n * ffn_dim];
        let mut weights = vec![0.0f32; n];
        let last = self.blocks.len().saturating_sub(1);
        // Every block needs all positions' keys and values, but the output is read only at
        // the last position, so the final block computes queries onward for that row alone.
        let mut first_row = 0;
        for (b, block) in self.blocks.iter().enumerate() {
            normed.copy_from_slice(&x);
            layer_norm(
                &mut normed,
                d,
                &block.attention_norm.weight,
                &block.attention_norm.bias,
                self.eps,
            );
            if b == last {
                first_row = n - 1;
            }
            let rows = n - first_row;
            block.key_value.apply(&normed, n, &mut kv);
            block.query.apply(&normed[first_row * d..], rows, &mut q);
            self.attend(&q[..rows * d], &kv, first_row, &mut weights, &mut attended);
            block.out.apply(&attended, rows, &mut projected);
            let xs = &mut x[first_row * d..];
            for (xv, pv) in xs.iter_mut().zip(&projected[..rows * d]) {
                *xv += pv;
            }
            let normed_rows = &mut normed[..rows * d];
            normed_rows.copy_from_slice(xs);
            layer_norm(
                normed_rows,
                d,
                &block.ffn_norm.weight,
                &block.ffn_norm.bias,
                self.eps,
            );
            block.ffn_in.apply(normed_rows, rows, &mut hidden);
            relu(&mut hidden[..rows * ffn_dim]);
            block.ffn_out.apply(&hidden, rows, &mut projected);
            for (xv, pv) in xs.iter_mut().zip(&projected[..rows * d]) {
                *xv += pv;
            }
        }
        out.copy_from_slice(&x[(n - 1) * d..n * d]);
        layer_norm(
            out,
            d,
            &self.final_norm.weight,
            &self.final_norm.bias,
            self.eps,
        );
    }

    /// Causal multi-head attention for query rows `first_row..n` (`q` holds just those rows;
    /// row `j` of `kv` is `[k_j, v_j]`).
    fn attend(
        &self,
        q: &[f32],
        kv: &[f32],
        first_row: usize,
        weights: &mut [f32],
        out: &mut [f32],
    ) {
        let d = self.dim;
        let head = d / self.num_heads;
        let scale = 1.0 / (head as f32).sqrt();
        for (r, q_row) in q.chunks_exact(d).enumerate() {
            let t = first_row + r;
            let out_row = &mut out[r * d..(r + 1) * d];
            out_row.iter_mut().for_each(|o| *o = 0.0);
            for h in 0..self.num_heads {
                let cols = h * head..(h + 1) * head;
                let w = &mut weights[..=t];
                gemv(&kv[cols.start..], 2 * d, &q_row[cols.clone()], w);
                w.iter_mut().for_each(|x| *x *= scale);
                softmax(w);
                gemv_transposed(w, &kv[d + cols.start..], 2 * d, &mut out_row[cols]);
            }
        }
    }
}

//! SASRec inference: pre-norm causal self-attention blocks, user vector at the last position.

use std::cell::RefCell;

use super::Rows;
use crate::bundle::{BundleError, LinearWeights, NormWeights, Positions, SasRecBlockWeights};
use crate::nn::linalg::{gemm, gemv, layer_norm, relu, scaled_softmax, Linear, Operand, Shape};

#[derive(Debug)]
struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

#[derive(Debug)]
struct Block {
    attention_norm: Norm,
    /// Key, value and query projections stacked (`3d × d`): one product gives each row
    /// `[k, v, q]`, and the first `2d` columns alone the keys and values.
    kvq: Linear,
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

/// One layer computing `[a(x), b(x), c(x)]` (all `out × in` with the same input width).
fn stacked(a: Linear, b: Linear, c: Linear) -> Linear {
    let (out_dim, in_dim) = (a.out_dim + b.out_dim + c.out_dim, a.in_dim);
    Linear::new(
        [a.weight, b.weight, c.weight].concat(),
        [a.bias, b.bias, c.bias].concat(),
        out_dim,
        in_dim,
    )
    .unwrap_or_else(|| unreachable!("all parts have in_dim columns and their own biases"))
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
                    kvq: stacked(
                        linear(w.key, &format!("{p}.attention.key"))?,
                        linear(w.value, &format!("{p}.attention.value"))?,
                        linear(w.query, &format!("{p}.attention.query"))?,
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
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            self.forward(embedding, history, &mut scratch, out);
        });
    }

    fn forward(&self, embedding: Rows<'_>, history: &[u32], s: &mut Scratch, out: &mut [f32]) {
        let (n, d) = (history.len(), self.dim);
        let ffn_dim = self.blocks.first().map_or(0, |b| b.ffn_in.out_dim);
        s.size(n, d, ffn_dim);
        let scale = (d as f32).sqrt();
        let x = &mut s.x[..n * d];
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
        let last = self.blocks.len().saturating_sub(1);
        for (b, block) in self.blocks.iter().enumerate() {
            // Every block needs all positions' keys and values, but the output is read only
            // at the last position, so the final block computes queries onward for that row.
            let first_row = if b == last { n - 1 } else { 0 };
            self.block(block, n, first_row, s);
        }
        out.copy_from_slice(&s.x[(n - 1) * d..n * d]);
        layer_norm(
            out,
            d,
            &self.final_norm.weight,
            &self.final_norm.bias,
            self.eps,
        );
    }

    /// One pre-norm block over `s.x` (`n` rows), updating rows `first_row..n`.
    fn block(&self, block: &Block, n: usize, first_row: usize, s: &mut Scratch) {
        let d = self.dim;
        let rows = n - first_row;
        let ffn_dim = block.ffn_in.out_dim;
        let normed = &mut s.normed[..n * d];
        normed.copy_from_slice(&s.x[..n * d]);
        let norm = &block.attention_norm;
        layer_norm(normed, d, &norm.weight, &norm.bias, self.eps);
        if rows == 1 {
            self.attend_last(block, n, s);
        } else {
            // Rows of `kvq` are `[k, v, q]` (this path always starts at row 0).
            block.kvq.apply(normed, n, &mut s.kvq[..n * 3 * d]);
            self.attend(n, first_row, s);
        }
        let projected = &mut s.projected[..rows * d];
        block.out.apply(&s.attended[..rows * d], rows, projected);
        let xs = &mut s.x[first_row * d..n * d];
        for (xv, pv) in xs.iter_mut().zip(projected.iter()) {
            *xv += pv;
        }
        let normed_rows = &mut s.normed[..rows * d];
        normed_rows.copy_from_slice(xs);
        let norm = &block.ffn_norm;
        layer_norm(normed_rows, d, &norm.weight, &norm.bias, self.eps);
        let hidden = &mut s.hidden[..rows * ffn_dim];
        block.ffn_in.apply(normed_rows, rows, hidden);
        relu(hidden);
        block.ffn_out.apply_sparse(hidden, rows, projected);
        for (xv, pv) in xs.iter_mut().zip(projected.iter()) {
            *xv += pv;
        }
    }

    /// Causal multi-head attention for query rows `first_row..n` of `s.kvq` into
    /// `s.attended` (row `t - first_row`). Per head, in bands of [`BAND`] query rows: the
    /// scores of a band against the keys up to its last row are one product with the
    /// transposed keys, and the weighted sum of values another (weights past a row's own
    /// position are zero).
    fn attend(&self, n: usize, first_row: usize, s: &mut Scratch) {
        let d = self.dim;
        let head = d / self.num_heads;
        let scale = 1.0 / (head as f32).sqrt();
        let kvq = &s.kvq[..n * 3 * d];
        let keys = &mut s.keys[..head * n];
        let scores = &mut s.scores[..BAND * n];
        for h in 0..self.num_heads {
            let col = h * head;
            for (j, row) in kvq.chunks_exact(3 * d).enumerate() {
                for (i, &k) in row[col..col + head].iter().enumerate() {
                    keys[i * n + j] = k;
                }
            }
            for start in (first_row..n).step_by(BAND) {
                let end = (start + BAND).min(n);
                let band = end - start;
                gemm(
                    Operand::new(&kvq[start * 3 * d + 2 * d + col..], 3 * d),
                    Operand::new(keys, n),
                    None,
                    Shape {
                        rows: band,
                        depth: head,
                        cols: end,
                    },
                    scores,
                    n,
                );
                for (r, row) in scores.chunks_exact_mut(n).take(band).enumerate() {
                    let t = start + r;
                    scaled_softmax(&mut row[..=t], scale);
                    row[t + 1..end].fill(0.0);
                }
                gemm(
                    Operand::new(scores, n),
                    Operand::new(&kvq[d + col..], 3 * d),
                    None,
                    Shape {
                        rows: band,
                        depth: end,
                        cols: head,
                    },
                    &mut s.attended[(start - first_row) * d + col..],
                    d,
                );
            }
        }
    }
}

impl SasRec {
    /// Attention for the last row alone, from the normed rows `s.normed` into `s.attended`,
    /// without projecting every row's key and value: per head,
    /// `q·(W_k x_j + b_k) = (W_kᵀ q)·x_j + q·b_k`, whose second term is the same for every
    /// `j` and so leaves the softmax unchanged, and `Σ_j w_j (W_v x_j + b_v) =
    /// W_v (Σ_j w_j x_j) + b_v` since the weights sum to one: O(n·d) per head, not O(n·d²).
    fn attend_last(&self, block: &Block, n: usize, s: &mut Scratch) {
        let d = self.dim;
        let head = d / self.num_heads;
        let scale = 1.0 / (head as f32).sqrt();
        let normed = &s.normed[..n * d];
        let q = &mut s.kvq[..d];
        block
            .kvq
            .apply_columns(&normed[(n - 1) * d..], d, 1, 2 * d..3 * d, q, d);
        let (key_query, pooled) = s.keys[..2 * d].split_at_mut(d);
        let weights = &mut s.scores[..n];
        for h in 0..self.num_heads {
            let col = h * head;
            gemm(
                Operand::new(&q[col..], head),
                Operand::new(&block.kvq.weight[col * d..], d),
                None,
                Shape {
                    rows: 1,
                    depth: head,
                    cols: d,
                },
                key_query,
                d,
            );
            gemv(normed, d, key_query, weights);
            scaled_softmax(weights, scale);
            gemm(
                Operand::new(weights, n),
                Operand::new(normed, d),
                None,
                Shape {
                    rows: 1,
                    depth: n,
                    cols: d,
                },
                pooled,
                d,
            );
            block.kvq.apply_columns(
                pooled,
                d,
                1,
                d + col..d + col + head,
                &mut s.attended[col..],
                d,
            );
        }
    }
}

/// Query rows per attention band: the scores of a band are `BAND × n` floats.
const BAND: usize = 16;

/// The per-thread buffers of a forward pass, grown to the longest history seen and reused,
/// so a query allocates nothing.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    normed: Vec<f32>,
    kvq: Vec<f32>,
    keys: Vec<f32>,
    scores: Vec<f32>,
    attended: Vec<f32>,
    projected: Vec<f32>,
    hidden: Vec<f32>,
}

impl Scratch {
    fn size(&mut self, n: usize, d: usize, ffn_dim: usize) {
        let grow = |v: &mut Vec<f32>, len: usize| {
            if v.len() < len {
                v.resize(len, 0.0);
            }
        };
        grow(&mut self.x, n * d);
        grow(&mut self.normed, n * d);
        grow(&mut self.kvq, n * 3 * d);
        grow(&mut self.keys, n.max(2) * d);
        grow(&mut self.scores, BAND * n);
        grow(&mut self.attended, n * d);
        grow(&mut self.projected, n * d);
        grow(&mut self.hidden, n * ffn_dim);
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

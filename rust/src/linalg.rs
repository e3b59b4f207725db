//! The few dense operations inference needs, on row-major `f32` slices.
//!
//! Weights follow PyTorch's `nn.Linear` layout (`out × in`, `y = x Wᵀ + b`). Matrix products
//! go through `matrixmultiply::sgemm` (cache-blocked, SIMD); a single row uses the fixed-order
//! [`dot`] so its result does not depend on the batch it came in.

pub use crate::retrieve::dot;

/// A fully connected layer, `y = x Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `out × in`, row-major.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub in_dim: usize,
    pub out_dim: usize,
}

impl Linear {
    /// Builds a layer from PyTorch-layout parts; `None` if the sizes disagree.
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, out_dim: usize, in_dim: usize) -> Option<Self> {
        (weight.len() == out_dim * in_dim && bias.len() == out_dim).then_some(Linear {
            weight,
            bias,
            in_dim,
            out_dim,
        })
    }

    /// `out = W x + b` for one input row.
    #[inline]
    pub fn apply_row(&self, x: &[f32], out: &mut [f32]) {
        debug_assert_eq!(x.len(), self.in_dim);
        for ((o, w), b) in out
            .iter_mut()
            .zip(self.weight.chunks_exact(self.in_dim))
            .zip(&self.bias)
        {
            *o = dot(w, x) + b;
        }
    }

    /// `out (rows × out_dim) = x (rows × in_dim) Wᵀ + b`.
    pub fn apply(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        assert!(x.len() >= rows * self.in_dim && out.len() >= rows * self.out_dim);
        if rows == 1 {
            return self.apply_row(&x[..self.in_dim], &mut out[..self.out_dim]);
        }
        for row in out.chunks_exact_mut(self.out_dim).take(rows) {
            row.copy_from_slice(&self.bias);
        }
        // SAFETY: the assert above bounds every access: A is rows × in_dim (row stride in_dim),
        // B = Wᵀ is in_dim × out_dim read from W (out × in) with strides (1, in_dim), and C is
        // rows × out_dim (row stride out_dim).
        unsafe {
            matrixmultiply::sgemm(
                rows,
                self.in_dim,
                self.out_dim,
                1.0,
                x.as_ptr(),
                self.in_dim as isize,
                1,
                self.weight.as_ptr(),
                1,
                self.in_dim as isize,
                1.0,
                out.as_mut_ptr(),
                self.out_dim as isize,
                1,
            );
        }
    }
}

/// Layer normalisation over each row of `x` (`rows × dim`), in place: biased variance.
pub fn layer_norm(x: &mut [f32], dim: usize, weight: &[f32], bias: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(dim) {
        let mean = row.iter().sum::<f32>() / dim as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

#[inline]
pub fn relu(x: &mut [f32]) {
    for v in x {
        *v = v.max(0.0);
    }
}

/// Softmax in place, shifted by the maximum for stability.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x {
        *v *= inv;
    }
}

#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `y += a * x`.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_naive_for_one_and_many_rows() {
        let (out_dim, in_dim, rows) = (5, 7, 3);
        let weight: Vec<f32> = (0..out_dim * in_dim)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let bias: Vec<f32> = (0..out_dim).map(|i| i as f32 * 0.1).collect();
        let layer = Linear::new(weight.clone(), bias.clone(), out_dim, in_dim).unwrap();
        let x: Vec<f32> = (0..rows * in_dim)
            .map(|i| (i as f32 * 0.11).cos())
            .collect();
        let mut out = vec![0.0; rows * out_dim];
        layer.apply(&x, rows, &mut out);
        for r in 0..rows {
            let mut single = vec![0.0; out_dim];
            layer.apply(&x[r * in_dim..(r + 1) * in_dim], 1, &mut single);
            for o in 0..out_dim {
                let naive: f32 = (0..in_dim)
                    .map(|i| weight[o * in_dim + i] * x[r * in_dim + i])
                    .sum::<f32>()
                    + bias[o];
                assert!((out[r * out_dim + o] - naive).abs() < 1e-5);
                assert!((single[o] - naive).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn layer_norm_gives_zero_mean_unit_variance() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        layer_norm(&mut x, 4, &[1.0; 4], &[0.0; 4], 1e-5);
        let mean: f32 = x.iter().sum::<f32>() / 4.0;
        let var: f32 = x.iter().map(|v| v * v).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-3);
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_inputs() {
        let mut x = vec![1000.0, 1001.0, 999.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] > x[0] && x[0] > x[2]);
    }
}

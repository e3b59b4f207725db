// Over 400 lines because each hot kernel has a portable and an AVX2+FMA twin, and tests.
//! The few dense operations inference needs, on row-major `f32` slices.
//!
//! Weights follow PyTorch's `nn.Linear` layout (`out × in`, `y = x Wᵀ + b`). Matrix products
//! go through `matrixmultiply::sgemm` (cache-blocked, SIMD); a single row uses the fixed-order
//! [`dot`] so its result does not depend on the batch it came in.
//!
//! [`dot`] and [`axpy`] carry the per-query hot loops (single-row layers, attention, the exact
//! scan). The portable build targets baseline x86-64 (SSE2), so on x86-64 they switch at run
//! time to AVX2 + FMA kernels where the CPU has them; the choice is made once per process, so
//! a given machine always computes the same result for the same inputs.

/// A fully connected layer, `y = x Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `out × in`, row-major.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub in_dim: usize,
    pub out_dim: usize,
    /// `Wᵀ` (`in × out`, row-major): each input value scales one contiguous weight row, which
    /// is what the SIMD kernel streams.
    transposed: Vec<f32>,
}

impl Linear {
    /// Builds a layer from PyTorch-layout parts; `None` if the sizes disagree.
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, out_dim: usize, in_dim: usize) -> Option<Self> {
        if weight.len() != out_dim * in_dim || bias.len() != out_dim {
            return None;
        }
        let mut transposed = vec![0.0f32; weight.len()];
        for (o, row) in weight.chunks_exact(in_dim.max(1)).enumerate() {
            for (i, &w) in row.iter().enumerate() {
                transposed[i * out_dim + o] = w;
            }
        }
        Some(Linear {
            weight,
            bias,
            in_dim,
            out_dim,
            transposed,
        })
    }

    /// `out = W x + b` for one input row.
    #[inline]
    pub fn apply_row(&self, x: &[f32], out: &mut [f32]) {
        debug_assert_eq!(x.len(), self.in_dim);
        #[cfg(target_arch = "x86_64")]
        if x86::has_avx2_fma() {
            // SAFETY: AVX2 and FMA are present; x holds in_dim values (sliced), out out_dim.
            return unsafe {
                x86::linear_rows(
                    &x[..self.in_dim],
                    1,
                    &self.transposed,
                    &self.bias,
                    &mut out[..self.out_dim],
                )
            };
        }
        gemv(
            &self.weight,
            self.in_dim,
            &x[..self.in_dim],
            &mut out[..self.out_dim],
        );
        for (o, b) in out.iter_mut().zip(&self.bias) {
            *o += b;
        }
    }

    /// `out (rows × out_dim) = x (rows × in_dim) Wᵀ + b`.
    pub fn apply(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        assert!(x.len() >= rows * self.in_dim && out.len() >= rows * self.out_dim);
        if rows == 1 {
            return self.apply_row(&x[..self.in_dim], &mut out[..self.out_dim]);
        }
        #[cfg(target_arch = "x86_64")]
        if x86::has_avx2_fma() {
            // SAFETY: AVX2 and FMA are present; the assert above sizes x and out.
            return unsafe {
                x86::linear_rows(
                    &x[..rows * self.in_dim],
                    rows,
                    &self.transposed,
                    &self.bias,
                    &mut out[..rows * self.out_dim],
                )
            };
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
        let mean = lane_sum(row, |v| v) / dim as f32;
        let var = lane_sum(row, |v| (v - mean) * (v - mean)) / dim as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

/// `Σ f(x_i)` over eight interleaved partial sums, which the compiler keeps in SIMD lanes
/// (a plain left-to-right float sum cannot be vectorised).
#[inline]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
        + tail
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

/// `a · b` over the common length.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { x86::dot(a, b) };
    }
    dot_portable(a, b)
}

/// `y += a * x` over the common length.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2_fma() {
        // SAFETY: as in `dot`.
        return unsafe { x86::axpy(a, x, y) };
    }
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// `out[r] = rows[r·stride ..][..x.len()] · x` for every `r < out.len()`: a matrix-vector
/// product over rows that sit `stride` floats apart (a column block of a wider matrix).
///
/// # Panics
/// If `rows` is too short for `out.len()` rows.
#[inline]
pub fn gemv(rows: &[f32], stride: usize, x: &[f32], out: &mut [f32]) {
    if let Some(last) = out.len().checked_sub(1) {
        assert!(
            last * stride + x.len() <= rows.len(),
            "gemv: matrix too short"
        );
    }
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2_fma() {
        // SAFETY: AVX2 and FMA are present; the bound is checked above.
        return unsafe { x86::gemv(rows, stride, x, out) };
    }
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot_portable(&rows[r * stride..r * stride + x.len()], x);
    }
}

/// `out += Σ_j weights[j] · rows[j·stride ..][..out.len()]`: the transposed product.
///
/// # Panics
/// If `rows` is too short for `weights.len()` rows.
#[inline]
pub fn gemv_transposed(weights: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    if let Some(last) = weights.len().checked_sub(1) {
        assert!(
            last * stride + out.len() <= rows.len(),
            "gemv_transposed: matrix too short"
        );
    }
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2_fma() {
        // SAFETY: AVX2 and FMA are present; the bound is checked above.
        return unsafe { x86::gemv_transposed(weights, rows, stride, out) };
    }
    let width = out.len();
    for (j, &w) in weights.iter().enumerate() {
        for (o, v) in out.iter_mut().zip(&rows[j * stride..j * stride + width]) {
            *o += w * v;
        }
    }
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (xa, xb) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(xa).zip(xb) {
            *s += x * y;
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    pub fn has_avx2_fma() -> bool {
        static DETECTED: OnceLock<bool> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }

    /// `out (rows × O) = x (rows × I) · wt + bias`, with `wt` the `I × O` transposed weight
    /// (`O = bias.len()`, `I = x.len() / rows`). Output columns go in blocks of 64 held in
    /// eight registers while every input value adds its scaled weight row; a block's weights
    /// stay in L1 across all rows.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `x.len() == rows · I`, `wt.len() == I · O` and
    /// `out.len() == rows · O`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn linear_rows(x: &[f32], rows: usize, wt: &[f32], bias: &[f32], out: &mut [f32]) {
        const LANES: usize = 8;
        const BLOCK: usize = 8 * LANES;
        let width = bias.len();
        let in_dim = x.len().checked_div(rows).unwrap_or(0);
        debug_assert!(wt.len() == in_dim * width && out.len() == rows * width);
        let (xp, wp, bp, op) = (x.as_ptr(), wt.as_ptr(), bias.as_ptr(), out.as_mut_ptr());
        let mut j = 0;
        while j + BLOCK <= width {
            for r in 0..rows {
                let mut acc = [_mm256_setzero_ps(); 8];
                for (k, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(bp.add(j + k * LANES));
                }
                for i in 0..in_dim {
                    let xi = _mm256_set1_ps(*xp.add(r * in_dim + i));
                    let w = wp.add(i * width + j);
                    for (k, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(xi, _mm256_loadu_ps(w.add(k * LANES)), *a);
                    }
                }
                for (k, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(op.add(r * width + j + k * LANES), *a);
                }
            }
            j += BLOCK;
        }
        while j + LANES <= width {
            for r in 0..rows {
                let mut a = _mm256_loadu_ps(bp.add(j));
                for i in 0..in_dim {
                    let xi = _mm256_set1_ps(*xp.add(r * in_dim + i));
                    a = _mm256_fmadd_ps(xi, _mm256_loadu_ps(wp.add(i * width + j)), a);
                }
                _mm256_storeu_ps(op.add(r * width + j), a);
            }
            j += LANES;
        }
        for c in j..width {
            for r in 0..rows {
                let mut a = *bp.add(c);
                for i in 0..in_dim {
                    a = (*xp.add(r * in_dim + i)).mul_add(*wp.add(i * width + c), a);
                }
                *op.add(r * width + c) = a;
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `rows` holds `out.len()` rows of `x.len()` floats
    /// at `stride`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemv(rows: &[f32], stride: usize, x: &[f32], out: &mut [f32]) {
        let width = x.len();
        let blocked = out.len() / 4 * 4;
        for r in (0..blocked).step_by(4) {
            let four = dot4(rows.as_ptr().add(r * stride), stride, x);
            out.get_unchecked_mut(r..r + 4).copy_from_slice(&four);
        }
        for r in blocked..out.len() {
            *out.get_unchecked_mut(r) = dot(rows.get_unchecked(r * stride..r * stride + width), x);
        }
    }

    /// [`dot`] of four rows (`stride` apart from `rows`) with `x`, each bit for bit what
    /// `dot` returns: the same partial sums in the same order, with the four horizontal
    /// reductions done together by one 4×4 transpose.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; the four rows of `x.len()` floats are readable.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot4(rows: *const f32, stride: usize, x: &[f32]) -> [f32; 4] {
        let n = x.len();
        let px = x.as_ptr();
        let p = [
            rows,
            rows.add(stride),
            rows.add(2 * stride),
            rows.add(3 * stride),
        ];
        let mut acc0 = [_mm256_setzero_ps(); 4];
        let mut acc1 = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 16 <= n {
            let (x0, x1) = (_mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(px.add(i + 8)));
            for k in 0..4 {
                acc0[k] = _mm256_fmadd_ps(_mm256_loadu_ps(p[k].add(i)), x0, acc0[k]);
                acc1[k] = _mm256_fmadd_ps(_mm256_loadu_ps(p[k].add(i + 8)), x1, acc1[k]);
            }
            i += 16;
        }
        if i + 8 <= n {
            let x0 = _mm256_loadu_ps(px.add(i));
            for k in 0..4 {
                acc0[k] = _mm256_fmadd_ps(_mm256_loadu_ps(p[k].add(i)), x0, acc0[k]);
            }
            i += 8;
        }
        let mut quads = [_mm_setzero_ps(); 4];
        for k in 0..4 {
            let acc = _mm256_add_ps(acc0[k], acc1[k]);
            quads[k] = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        }
        // Transpose: lane j of `cols[j]` holds lane j of every row's quad.
        let t0 = _mm_unpacklo_ps(quads[0], quads[1]);
        let t1 = _mm_unpackhi_ps(quads[0], quads[1]);
        let t2 = _mm_unpacklo_ps(quads[2], quads[3]);
        let t3 = _mm_unpackhi_ps(quads[2], quads[3]);
        let cols = [
            _mm_movelh_ps(t0, t2),
            _mm_movehl_ps(t2, t0),
            _mm_movelh_ps(t1, t3),
            _mm_movehl_ps(t3, t1),
        ];
        // `dot` adds (q0 + q2) + (q1 + q3).
        let sums = _mm_add_ps(_mm_add_ps(cols[0], cols[2]), _mm_add_ps(cols[1], cols[3]));
        let mut out = [0.0f32; 4];
        _mm_storeu_ps(out.as_mut_ptr(), sums);
        if i < n {
            for (k, o) in out.iter_mut().enumerate() {
                for j in i..n {
                    *o += *p[k].add(j) * *px.add(j);
                }
            }
        }
        out
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `rows` holds `weights.len()` rows of `out.len()`
    /// floats at `stride`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemv_transposed(weights: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        let width = out.len();
        for (j, &w) in weights.iter().enumerate() {
            axpy(w, rows.get_unchecked(j * stride..j * stride + width), out);
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY (all loads): i + 16 <= n, resp. i + 8 <= n, bounds both slices.
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            i += 16;
        }
        if i + 8 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            i += 8;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let quad = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        let single = _mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1));
        let mut sum = _mm_cvtss_f32(single);
        while i < n {
            sum += a[i] * b[i];
            i += 1;
        }
        sum
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let va = _mm256_set1_ps(a);
        let mut i = 0;
        // SAFETY: i + 8 <= n bounds both slices.
        while i + 8 <= n {
            let v = _mm256_fmadd_ps(va, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
            _mm256_storeu_ps(py.add(i), v);
            i += 8;
        }
        while i < n {
            y[i] += a * x[i];
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_naive_for_one_and_many_rows() {
        // Shapes covering the 64-column blocks, the 8-column tail and the scalar tail.
        for (out_dim, in_dim, rows) in [
            (5, 7, 3),
            (128, 64, 50),
            (83, 64, 4),
            (200, 33, 2),
            (64, 256, 1),
        ] {
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
                    let tolerance = 1e-5 * (1.0 + in_dim as f32);
                    assert!(
                        (out[r * out_dim + o] - naive).abs() < tolerance,
                        "{out_dim}x{in_dim}"
                    );
                    assert!((single[o] - naive).abs() < tolerance, "{out_dim}x{in_dim}");
                }
            }
        }
    }

    #[test]
    fn dot_and_axpy_match_naive_at_every_length() {
        for n in 0..70 {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-5, "dot, n = {n}");
            assert!(
                (dot_portable(&a, &b) - naive).abs() < 1e-5,
                "portable dot, n = {n}"
            );
            let mut y = b.clone();
            axpy(0.5, &a, &mut y);
            for i in 0..n {
                assert!((y[i] - (b[i] + 0.5 * a[i])).abs() < 1e-6, "axpy, n = {n}");
            }
        }
    }

    #[test]
    fn gemv_and_its_transpose_match_naive_on_strided_rows() {
        let (rows, stride, width) = (7, 45, 37);
        let data: Vec<f32> = (0..rows * stride)
            .map(|i| (i as f32 * 0.13).sin())
            .collect();
        let x: Vec<f32> = (0..width).map(|i| (i as f32 * 0.7).cos()).collect();
        let mut out = vec![0.0; rows];
        gemv(&data, stride, &x, &mut out);
        let w: Vec<f32> = (0..rows).map(|i| i as f32 - 2.5).collect();
        let mut back = vec![1.0; width];
        gemv_transposed(&w, &data, stride, &mut back);
        for r in 0..rows {
            let naive: f32 = (0..width).map(|c| data[r * stride + c] * x[c]).sum();
            assert!((out[r] - naive).abs() < 1e-5);
        }
        for c in 0..width {
            let naive: f32 = 1.0 + (0..rows).map(|r| w[r] * data[r * stride + c]).sum::<f32>();
            assert!((back[c] - naive).abs() < 1e-4);
        }
    }

    #[test]
    fn gemv_equals_dot_bit_for_bit() {
        // The exact scan (gemv) and HNSW rescoring (dot) must give identical scores.
        for width in [1, 7, 8, 15, 16, 24, 32, 37, 64, 80, 83] {
            for rows in [1, 3, 4, 5, 8, 13] {
                let stride = width + 3;
                let data: Vec<f32> = (0..rows * stride)
                    .map(|i| (i as f32 * 0.173).sin() * 3.0)
                    .collect();
                let x: Vec<f32> = (0..width).map(|i| (i as f32 * 0.71).cos()).collect();
                let mut out = vec![0.0; rows];
                gemv(&data, stride, &x, &mut out);
                for (r, &o) in out.iter().enumerate() {
                    let single = dot(&data[r * stride..r * stride + width], &x);
                    assert_eq!(o.to_bits(), single.to_bits(), "width {width} row {r}");
                }
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

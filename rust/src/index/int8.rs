//! The item table as int8 codes for the exact scan on CPUs with AVX-512 VNNI: a quarter of
//! the float32 bytes, scored with integer dot products and a proven error bound
//! ([`crate::index::compact`] rescores every row the bound leaves in doubt).
//!
//! Why: the bfloat16 scan streams 2 bytes a value from L2 and is bound by that stream
//! (`benches/results/profile.md`); `vdpbf16ps` is also slow on some cores. Codes take 1 byte a
//! value and `vpdpbusd` adds four byte products into each of 16 row scores.
//!
//! **Codes.** Column `j` has a step `s_j` (its largest magnitude over 127) and row `i` the code
//! `c_ij = round(t_ij / s_j)`; `d_j` is the largest `|t_ij − s_j c_ij|` of the column, measured
//! exactly when the copy is made (binary columns such as attribute flags come out exact but for
//! the rounding of `s_j`). Codes are stored as `c + 128` (unsigned bytes, 128 being zero).
//!
//! **The query** becomes `y_j = q_j s_j`, written with two int8 levels:
//! `y_j = σ_hi h_j + σ_lo l_j + e_j` (`h`, `l` in `[−127, 127]`, `σ_lo` fitted to what `σ_hi`
//! leaves), so its own rounding `e_j` is ~2⁻¹⁵ of the largest `|y_j|`. Then, exactly,
//!
//! `Σ_j q_j t_ij = σ_hi Σ_j h_j c_ij + σ_lo Σ_j l_j c_ij + Σ_j e_j c_ij + Σ_j q_j (t_ij − s_j c_ij)`
//!
//! so the approximate score `a_i` (the two integer sums, each exact in `i32` and in `f32`, scaled)
//! is off the real dot product by at most `max_j |e_j| · L + Σ_j |q_j| d_j`, `L` being the
//! largest `Σ_j |c_ij|` over rows. [`Int8Rows::prepare`] adds the float32 rounding of `a_i` and
//! of the float32 dot product the scan reports, and returns that bound.

use super::compact::BLOCK;
use super::exact::Matrix;

/// Codes per quad: the four bytes one `vpdpbusd` lane multiplies.
const QUAD: usize = 4;

/// The largest code magnitude.
const CODE_MAX: f64 = 127.0;

/// Beyond this width a row's `i32` sum of stored bytes times codes (255 · 127 a column) could
/// overflow.
const MAX_COLS: usize = 16_384;

/// The unsigned byte storing code 0.
const ZERO: u8 = 128;

/// The int8 copy of an item matrix.
pub struct Int8Rows {
    /// Block `b`, quad `g`, lane `l` (row `b · BLOCK + l`), column `4g + j` at
    /// `((b · quads + g) · BLOCK + l) · 4 + j`, as `code + 128`; padding rows and columns hold
    /// 128 (code 0).
    codes: Vec<u8>,
    rows: usize,
    cols: usize,
    /// `s_j`, the step of column `j`.
    step: Vec<f32>,
    /// `d_j`, the largest `|t_ij − s_j c_ij|` of column `j`.
    deviation: Vec<f64>,
    /// `L`, the largest `Σ_j |c_ij|` of a row.
    code_l1: f64,
    /// The largest Euclidean norm of a float32 row.
    max_norm: f64,
}

/// A query as [`Int8Rows::scores`] reads it, with its error bound.
pub struct Int8Query {
    /// Four `h_j` (then four `l_j`) per quad, as the bytes of one `u32` (column `4g` lowest).
    high: Vec<u32>,
    low: Vec<u32>,
    /// `128 · Σ_j h_j` and `128 · Σ_j l_j`: what the stored `+ 128` adds to each sum.
    high_offset: i32,
    low_offset: i32,
    sigma_high: f32,
    sigma_low: f32,
    /// `B ≥ |a_i − e_i|` for every row, `e_i` being the float32 dot product of the exact scan.
    pub bound: f64,
}

impl Int8Rows {
    /// The int8 copy of `items`, or `None` when a value is not finite, or a row's integer sums
    /// could overflow or lose bits in float32 (beyond [`MAX_COLS`] columns, or ~1,000 columns
    /// of large codes).
    pub fn new(items: Matrix<'_>) -> Option<Self> {
        let (rows, cols) = (items.rows(), items.cols());
        let values = items.as_slice();
        if rows == 0 || cols == 0 || cols > MAX_COLS || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut step = vec![0.0f32; cols];
        for row in values.chunks_exact(cols) {
            for (s, v) in step.iter_mut().zip(row) {
                *s = s.max(v.abs());
            }
        }
        for s in &mut step {
            let fitted = (f64::from(*s) / CODE_MAX) as f32;
            *s = if fitted.is_normal() { fitted } else { 1.0 };
        }
        let quads = cols.div_ceil(QUAD);
        let mut codes = vec![ZERO; rows.div_ceil(BLOCK) * quads * BLOCK * QUAD];
        let mut deviation = vec![0.0f64; cols];
        let (mut code_l1, mut max_norm) = (0.0f64, 0.0f64);
        for (r, row) in values.chunks_exact(cols).enumerate() {
            let (b, lane) = (r / BLOCK, r % BLOCK);
            let mut l1 = 0.0f64;
            for (c, (&v, &s)) in row.iter().zip(&step).enumerate() {
                let code = (f64::from(v) / f64::from(s))
                    .round()
                    .clamp(-CODE_MAX, CODE_MAX);
                let (quad, j) = (c / QUAD, c % QUAD);
                codes[((b * quads + quad) * BLOCK + lane) * QUAD + j] = (code as i32 + 128) as u8;
                deviation[c] = deviation[c].max((f64::from(v) - f64::from(s) * code).abs());
                l1 += code.abs();
            }
            code_l1 = code_l1.max(l1);
            let norm = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>();
            max_norm = max_norm.max(norm.sqrt());
        }
        // Both integer sums reach at most 127 · L and must stay exact in float32.
        if CODE_MAX * code_l1 >= f64::from(1u32 << 24) {
            return None;
        }
        Some(Self {
            codes,
            rows,
            cols,
            step,
            deviation,
            code_l1,
            max_norm,
        })
    }

    /// `query` in the form [`Int8Rows::scores`] reads, with its error bound; `None` when a
    /// value is not finite or beyond `max_magnitude`, or a score could be (only the float32
    /// scan is exact there).
    pub fn prepare(&self, query: &[f32], max_magnitude: f32) -> Option<Int8Query> {
        if query.len() != self.cols {
            return None;
        }
        let (mut l2, mut deviation) = (0.0f64, 0.0f64);
        for (&q, &d) in query.iter().zip(&self.deviation) {
            if !q.is_finite() || q.abs() > max_magnitude {
                return None;
            }
            let q = f64::from(q);
            l2 += q * q;
            deviation += q.abs() * d;
        }
        let largest = l2.sqrt() * self.max_norm;
        if largest > f64::from(max_magnitude) {
            return None;
        }
        // y_j = q_j s_j, exact in f64 (two 24-bit significands).
        let mut rest: Vec<f64> = query
            .iter()
            .zip(&self.step)
            .map(|(&q, &s)| f64::from(q) * f64::from(s))
            .collect();
        let (sigma_high, high) = level(&rest);
        // What the high level leaves of y: y_j − σ_hi h_j.
        for (v, &h) in rest.iter_mut().zip(&high) {
            *v -= f64::from(sigma_high) * f64::from(h);
        }
        let (sigma_low, low) = level(&rest);
        let (mut rounding, mut rest_largest) = (0.0f64, 0.0f64);
        for (&r, &l) in rest.iter().zip(&low) {
            rounding = rounding.max((r - f64::from(sigma_low) * f64::from(l)).abs());
            rest_largest = rest_largest.max(r.abs());
        }
        let pack = |codes: &[i8]| -> (Vec<u32>, i32) {
            let quads = codes
                .chunks(QUAD)
                .map(|quad| {
                    quad.iter()
                        .enumerate()
                        .fold(0u32, |word, (j, &c)| word | u32::from(c as u8) << (8 * j))
                })
                .collect();
            let sum: i32 = codes.iter().map(|&c| i32::from(c)).sum();
            (quads, i32::from(ZERO) * sum)
        };
        let (high, high_offset) = pack(&high);
        let (low, low_offset) = pack(&low);
        let unit = 2f64.powi(-24);
        let quantised = rounding * self.code_l1 + deviation;
        // Float32 rounding: the exact scan's dot product (cols terms) and the two scaled sums
        // (each within `largest + quantised + rest_largest · L` of the score's magnitude).
        let magnitude = largest + quantised + rest_largest * self.code_l1;
        let float = (4.0 * self.cols as f64 + 16.0) * unit * magnitude;
        // 1% slack covers the rounding of this very computation.
        let bound = 1.01 * (quantised + float);
        Some(Int8Query {
            high,
            low,
            high_offset,
            low_offset,
            sigma_high,
            sigma_low,
            bound,
        })
    }

    /// Approximate scores of every row into `out` (whole blocks, padding rows included) and
    /// each block's largest into `maxima`, with VNNI where `vnni` says the CPU has it.
    pub fn scores(&self, query: &Int8Query, vnni: bool, out: &mut [f32], maxima: &mut [f32]) {
        let blocks = self.rows.div_ceil(BLOCK);
        assert!(out.len() == blocks * BLOCK && maxima.len() == blocks);
        #[cfg(target_arch = "x86_64")]
        if vnni {
            // SAFETY: the caller detected AVX-512F and AVX-512 VNNI; `codes` holds `blocks`
            // blocks of `high.len()` quads, `out` `blocks · BLOCK` scores, `maxima` `blocks`.
            unsafe { simd::scores(&self.codes, query, out, maxima) };
            return;
        }
        let _ = vnni;
        scores_portable(&self.codes, query, out, maxima);
    }
}

/// `σ` and the codes `round(v / σ)` of `values`, with `σ` the largest magnitude over 127
/// rounded to float32 (zero, and zero codes, when that is not a normal float).
fn level(values: &[f64]) -> (f32, Vec<i8>) {
    let largest = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let sigma = (largest / CODE_MAX) as f32;
    if !sigma.is_normal() {
        return (0.0, vec![0; values.len()]);
    }
    let codes = values
        .iter()
        .map(|&v| (v / f64::from(sigma)).round().clamp(-CODE_MAX, CODE_MAX) as i8)
        .collect();
    (sigma, codes)
}

/// The score of one row from its two integer sums (stored-byte sums less the offsets), in the
/// float32 operations the SIMD kernel performs.
fn scaled(high: i32, low: i32, query: &Int8Query) -> f32 {
    let high = (high - query.high_offset) as f32 * query.sigma_high;
    ((low - query.low_offset) as f32).mul_add(query.sigma_low, high)
}

fn scores_portable(codes: &[u8], query: &Int8Query, out: &mut [f32], maxima: &mut [f32]) {
    let quads = query.high.len();
    let blocks = codes.chunks_exact(quads * BLOCK * QUAD);
    for ((block, scores), max) in blocks.zip(out.chunks_exact_mut(BLOCK)).zip(maxima) {
        for (lane, score) in scores.iter_mut().enumerate() {
            let (mut high, mut low) = (0i32, 0i32);
            for (g, (&h, &l)) in query.high.iter().zip(&query.low).enumerate() {
                let at = (g * BLOCK + lane) * QUAD;
                for (j, &byte) in block[at..at + QUAD].iter().enumerate() {
                    let byte = i32::from(byte);
                    high += byte * i32::from((h >> (8 * j)) as u8 as i8);
                    low += byte * i32::from((l >> (8 * j)) as u8 as i8);
                }
            }
            *score = scaled(high, low, query);
        }
        *max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{Int8Query, BLOCK};

    /// # Safety
    /// AVX-512F and AVX-512 VNNI; `codes` holds `out.len() / BLOCK` blocks of
    /// `query.high.len()` quads, and `maxima` one float per block.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn scores(codes: &[u8], query: &Int8Query, out: &mut [f32], maxima: &mut [f32]) {
        let (high, low) = (&query.high, &query.low);
        let quads = high.len();
        let pairs = quads / 2;
        let mut p = codes.as_ptr() as *const __m512i;
        let word = |v: u32| _mm512_set1_epi32(v as i32);
        let high_offset = _mm512_set1_epi32(query.high_offset);
        let low_offset = _mm512_set1_epi32(query.low_offset);
        let sigma_high = _mm512_set1_ps(query.sigma_high);
        let sigma_low = _mm512_set1_ps(query.sigma_low);
        for (scores, max) in out.chunks_exact_mut(BLOCK).zip(maxima) {
            // Two lines in flight, each feeding both levels: four independent sums.
            let zero = _mm512_setzero_si512();
            let (mut h0, mut h1, mut l0, mut l1) = (zero, zero, zero, zero);
            for g in 0..pairs {
                let (a, b) = (_mm512_loadu_si512(p), _mm512_loadu_si512(p.add(1)));
                h0 = _mm512_dpbusd_epi32(h0, a, word(high[2 * g]));
                l0 = _mm512_dpbusd_epi32(l0, a, word(low[2 * g]));
                h1 = _mm512_dpbusd_epi32(h1, b, word(high[2 * g + 1]));
                l1 = _mm512_dpbusd_epi32(l1, b, word(low[2 * g + 1]));
                p = p.add(2);
            }
            if quads % 2 == 1 {
                let a = _mm512_loadu_si512(p);
                h0 = _mm512_dpbusd_epi32(h0, a, word(high[quads - 1]));
                l0 = _mm512_dpbusd_epi32(l0, a, word(low[quads - 1]));
                p = p.add(1);
            }
            let high_sum = _mm512_sub_epi32(_mm512_add_epi32(h0, h1), high_offset);
            let low_sum = _mm512_sub_epi32(_mm512_add_epi32(l0, l1), low_offset);
            let sum = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(low_sum),
                sigma_low,
                _mm512_mul_ps(_mm512_cvtepi32_ps(high_sum), sigma_high),
            );
            _mm512_storeu_ps(scores.as_mut_ptr(), sum);
            *max = _mm512_reduce_max_ps(sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::compact::tests::wave;
    use crate::index::exact;

    /// A table shaped like a bundle's: `free` embedding columns, then 0/1 attribute flags
    /// (some rows with none), the embedding at `scale`.
    fn table(rows: usize, free: usize, flags: usize, scale: f32, seed: u64) -> Vec<f32> {
        let noise = wave(rows * free, seed);
        (0..rows)
            .flat_map(|r| {
                let embedding: Vec<f32> = noise[r * free..(r + 1) * free]
                    .iter()
                    .map(|v| v * scale)
                    .collect();
                let flags = (0..flags).map(move |f| f32::from(u8::from((r * 7 + f * 3) % 5 == 0)));
                embedding.into_iter().chain(flags)
            })
            .collect()
    }

    fn scores_of(copy: &Int8Rows, query: &Int8Query, vnni: bool) -> Vec<f32> {
        let blocks = copy.rows.div_ceil(BLOCK);
        let (mut out, mut maxima) = (vec![0.0; blocks * BLOCK], vec![0.0; blocks]);
        copy.scores(query, vnni, &mut out, &mut maxima);
        for (block, &max) in out.chunks_exact(BLOCK).zip(&maxima) {
            assert_eq!(max, block.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        }
        out.truncate(copy.rows);
        out
    }

    #[test]
    fn the_bound_covers_every_row() {
        for (rows, free, flags) in [
            (1, 1, 0),
            (17, 5, 3),
            (300, 64, 28),
            (100, 0, 9),
            (64, 30, 0),
        ] {
            for (scale, query_scale) in
                [(1.0f32, 1.0f32), (1e-3, 50.0), (30.0, 1e-4), (1e-20, 1e20)]
            {
                let data = table(rows, free, flags, scale, rows as u64);
                let cols = free + flags;
                let items = Matrix::new(&data, rows, cols).unwrap();
                let copy = Int8Rows::new(items).unwrap();
                for seed in 0..20 {
                    let mut q: Vec<f32> =
                        wave(cols, seed).iter().map(|v| v * query_scale).collect();
                    if seed == 0 {
                        q.fill(0.0);
                    } else if seed == 1 && flags > 0 {
                        // Attribute weights far above the embedding's, as a refusal gives.
                        q[free] = -9.0 * query_scale;
                    }
                    let query = copy.prepare(&q, 1e30).unwrap();
                    for (row, &a) in scores_of(&copy, &query, false).iter().enumerate() {
                        let e = exact::dot(items.row(row), &q);
                        let gap = (f64::from(a) - f64::from(e)).abs();
                        assert!(
                            gap <= query.bound,
                            "{rows}×{cols} scale {scale} seed {seed} row {row}: {gap} > {}",
                            query.bound
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_bound_is_tight_enough_to_prune() {
        // Shaped like ML-1M's table: the rows within 2B of the 10th best are few.
        let (rows, free, flags) = (3125, 64, 28);
        let data = table(rows, free, flags, 0.5, 3);
        let items = Matrix::new(&data, rows, free + flags).unwrap();
        let copy = Int8Rows::new(items).unwrap();
        let mut q = wave(free + flags, 9);
        q[free + 2] = -6.0;
        let query = copy.prepare(&q, 1e30).unwrap();
        let mut scores = scores_of(&copy, &query, false);
        scores.sort_unstable_by(|a, b| b.total_cmp(a));
        let within = scores
            .iter()
            .filter(|&&a| f64::from(a) >= f64::from(scores[9]) - 2.0 * query.bound);
        assert!(within.count() < 100);
    }

    #[test]
    fn vnni_scores_are_the_portable_scores_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni")
        {
            for (rows, cols) in [(1usize, 1usize), (16, 4), (33, 7), (300, 92), (50, 129)] {
                let data = table(rows, cols.saturating_sub(3), cols.min(3), 2.0, cols as u64);
                let copy = Int8Rows::new(Matrix::new(&data, rows, cols).unwrap()).unwrap();
                for seed in 0..5 {
                    let query = copy.prepare(&wave(cols, seed), 1e30).unwrap();
                    let (simd, portable) = (
                        scores_of(&copy, &query, true),
                        scores_of(&copy, &query, false),
                    );
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&simd), bits(&portable), "{rows}×{cols} seed {seed}");
                }
            }
        }
    }

    #[test]
    fn unusable_tables_and_queries_leave_no_codes() {
        let mut data = wave(16 * 4, 1);
        data[5] = f32::NAN;
        assert!(Int8Rows::new(Matrix::new(&data, 16, 4).unwrap()).is_none());
        data[5] = 0.25;
        let copy = Int8Rows::new(Matrix::new(&data, 16, 4).unwrap()).unwrap();
        assert!(copy
            .prepare(&[0.0, f32::INFINITY, 0.0, 0.0], 1e30)
            .is_none());
        assert!(copy.prepare(&[0.0, 2e30, 0.0, 0.0], 1e30).is_none());
        assert!(copy.prepare(&[0.0, 1.0, 0.0], 1e30).is_none());
        assert!(copy.prepare(&[0.0, 1.0, 0.0, 0.5], 1e30).is_some());
    }
}

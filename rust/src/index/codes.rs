//! The item vectors as int8 codes (one scale per dimension), which the graph walk and the
//! filtered gather-scan score: a 64-float vector shrinks from four cache lines to one, and a
//! walk waits mostly on those lines (measured at 10k and 100k items, d = 64: 1.1x and 1.4x the
//! queries/s of walking the float vectors at equal recall). Each row starts on its own line:
//! packed at 64 bytes from a 16-byte-aligned buffer, every row straddled two lines, and at 1M
//! items the gather-scan ran at a third of its speed (`benches/results/retrieval-1m.md`).
//! Scores from codes are approximate; the walk's results are rescored exactly before anyone
//! sees them (see [`crate::index::graph`]).

use crate::index::pages;

/// One cache line of codes: the table is made of these, so every row starts on a line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([i8; LINE]);

const LINE: usize = 64;

/// `codes[i * stride + j] * scale[j]` approximates vector `i`'s value `j`. Rows are `stride`
/// bytes apart, a power of two up to a line and whole lines beyond, so that no row straddles
/// more cache lines than its size needs (a row that did would cost two memory waits).
pub struct Codes {
    lines: Vec<Line>,
    scale: Vec<f32>,
    dim: usize,
    stride: usize,
}

/// A query for [`Codes::score_vnni`]: the [`Codes::scaled`] query rounded to multiples of
/// `step` (`max |value| / 127`), each stored as `multiple + 128`, padded with 128 (a zero) to
/// whole 64-byte blocks.
pub struct QueryBytes {
    bytes: Vec<u8>,
    step: f32,
}

impl Codes {
    /// Codes of the `vectors.len() / dim` rows of `vectors` (finite values).
    pub fn new(vectors: &[f32], dim: usize) -> Self {
        let mut scale = vec![0.0f32; dim];
        for row in vectors.chunks_exact(dim) {
            for (s, v) in scale.iter_mut().zip(row) {
                *s = s.max(v.abs());
            }
        }
        for s in &mut scale {
            *s = if *s > 0.0 { *s / 127.0 } else { 1.0 };
        }
        let stride = if dim <= LINE {
            dim.max(1).next_power_of_two()
        } else {
            dim.next_multiple_of(LINE)
        };
        let rows = vectors.len() / dim.max(1);
        let mut lines = pages::filled((rows * stride).div_ceil(LINE), Line([0; LINE]));
        let bytes = as_bytes_mut(&mut lines);
        for (out, row) in bytes
            .chunks_exact_mut(stride)
            .zip(vectors.chunks_exact(dim))
        {
            for ((o, v), s) in out.iter_mut().zip(row).zip(&scale) {
                *o = (v / s).round().clamp(-127.0, 127.0) as i8;
            }
        }
        Self {
            lines,
            scale,
            dim,
            stride,
        }
    }

    /// The query with each value multiplied by its dimension's scale, so that
    /// [`Codes::score`] is a plain dot product with the codes.
    pub fn scaled(&self, query: &[f32]) -> Vec<f32> {
        query.iter().zip(&self.scale).map(|(q, s)| q * s).collect()
    }

    /// Node `node`'s codes.
    #[inline(always)]
    pub fn of(&self, node: u32) -> &[i8] {
        &as_bytes(&self.lines)[node as usize * self.stride..][..self.dim]
    }

    /// The approximate score of `codes` against a [`Codes::scaled`] query.
    #[inline(always)]
    pub fn score(scaled: &[f32], codes: &[i8]) -> f32 {
        scaled.iter().zip(codes).map(|(q, &c)| q * c as f32).sum()
    }

    /// The same score with AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn score_avx2(scaled: &[f32], codes: &[i8]) -> f32 {
        use std::arch::x86_64::*;
        let n = scaled.len().min(codes.len());
        let (q, c) = (scaled.as_ptr(), codes.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY (all loads): i + 16 <= n, resp. i + 8 <= n, bounds both slices.
        while i + 16 <= n {
            let a = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(c.add(i).cast())));
            let b = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(c.add(i + 8).cast())));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i)), a, acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i + 8)), b, acc1);
            i += 16;
        }
        if i + 8 <= n {
            let a = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(c.add(i).cast())));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i)), a, acc0);
            i += 8;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let quad = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        let mut sum = _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)));
        while i < n {
            sum += scaled[i] * codes[i] as f32;
            i += 1;
        }
        sum
    }

    /// The [`QueryBytes`] of a [`Codes::scaled`] query.
    pub fn query_bytes(&self, scaled: &[f32]) -> QueryBytes {
        let largest = scaled.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let step = if largest > 0.0 && largest.is_finite() {
            largest / 127.0
        } else {
            1.0
        };
        let mut bytes = vec![128u8; self.dim.next_multiple_of(LINE)];
        for (b, v) in bytes.iter_mut().zip(scaled) {
            *b = ((v / step).round().clamp(-127.0, 127.0) as i32 + 128) as u8;
        }
        QueryBytes { bytes, step }
    }

    /// Node `node`'s approximate score against `query`, from VNNI byte dot products:
    /// `sum (q + 128) c - 128 sum c` is `sum q c` exactly in integers, so bytes read past the
    /// row's end (where `q` is zero) add nothing, and masked loads never read past the table.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VNNI.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn score_vnni(&self, query: &QueryBytes, node: u32) -> f32 {
        use std::arch::x86_64::*;
        let row = self.of(node).as_ptr();
        let ones = _mm512_set1_epi8(1);
        let (mut products, mut sums) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for (block, q) in query.bytes.chunks_exact(LINE).enumerate() {
            let left = self.dim - block * LINE;
            let mask = if left >= LINE {
                u64::MAX
            } else {
                (1u64 << left) - 1
            };
            // SAFETY: the mask keeps the load inside the row's `dim` codes; `q` is 64 bytes.
            let codes = _mm512_maskz_loadu_epi8(mask, row.add(block * LINE));
            let q = _mm512_loadu_si512(q.as_ptr().cast());
            products = _mm512_dpbusd_epi32(products, q, codes);
            sums = _mm512_dpbusd_epi32(sums, ones, codes);
        }
        let total = _mm512_reduce_add_epi32(_mm512_sub_epi32(products, _mm512_slli_epi32(sums, 7)));
        total as f32 * query.step
    }
}

fn as_bytes(lines: &[Line]) -> &[i8] {
    // SAFETY: `Line` is `LINE` plain bytes with no padding (repr(C), size = align = 64).
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast(), lines.len() * LINE) }
}

fn as_bytes_mut(lines: &mut [Line]) -> &mut [i8] {
    // SAFETY: as in `as_bytes`; every byte pattern is a valid `i8`.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * LINE) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::linalg;

    #[test]
    fn codes_approximate_the_dot_product() {
        let (n, dim) = (50, 37);
        let vectors: Vec<f32> = (0..n * dim)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let query: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).sin()).collect();
        let codes = Codes::new(&vectors, dim);
        let scaled = codes.scaled(&query);
        for (i, row) in vectors.chunks_exact(dim).enumerate() {
            let exact = linalg::dot(&query, row);
            let approx = Codes::score(&scaled, codes.of(i as u32));
            let bound: f32 = query.iter().map(|q| q.abs() * 2.0 / 127.0).sum();
            assert!((exact - approx).abs() <= bound, "{exact} vs {approx}");
            #[cfg(target_arch = "x86_64")]
            if linalg::x86::has_avx2_fma() {
                // SAFETY: checked just above.
                let simd = unsafe { Codes::score_avx2(&scaled, codes.of(i as u32)) };
                assert!((simd - approx).abs() <= 1e-4 * approx.abs().max(1.0));
            }
        }
        // Rows start on a line, or share one without crossing its end.
        for dim in [1, 8, 37, 64, 82, 130] {
            let codes = Codes::new(&vec![0.5; 9 * dim], dim);
            for node in 0..9 {
                let row = codes.of(node);
                let (at, len) = (row.as_ptr() as usize, row.len());
                assert_eq!(len, dim);
                assert!(
                    at % 64 + len.min(64) <= 64 && (dim < 64 || at % 64 == 0),
                    "{dim}"
                );
            }
        }
        // A zero column keeps a usable scale.
        let zeros = Codes::new(&[0.0; 8], 4);
        assert_eq!(Codes::score(&zeros.scaled(&[1.0; 4]), zeros.of(1)), 0.0);
    }

    #[test]
    fn vnni_scores_are_the_codes_scores_up_to_the_query_rounding() {
        #[cfg(target_arch = "x86_64")]
        if linalg::x86::has_avx512_vnni() {
            for dim in [1, 8, 37, 64, 82, 130] {
                let n = 23;
                let vectors: Vec<f32> = (0..n * dim)
                    .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
                    .collect();
                let codes = Codes::new(&vectors, dim);
                for seed in 0..3 {
                    let query: Vec<f32> = (0..dim)
                        .map(|i| ((i + 11 * seed) as f32 * 0.37).sin() * 10f32.powi(seed as i32))
                        .collect();
                    let scaled = codes.scaled(&query);
                    let bytes = codes.query_bytes(&scaled);
                    let largest = scaled.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    for node in 0..n as u32 {
                        let want = Codes::score(&scaled, codes.of(node));
                        let units: f32 = codes.of(node).iter().map(|&c| f32::from(c).abs()).sum();
                        // Half a step of rounding per code unit, and float rounding.
                        let bound = 0.5 * largest / 127.0 * units + 1e-4 * want.abs().max(1.0);
                        // SAFETY: checked just above.
                        let got = unsafe { codes.score_vnni(&bytes, node) };
                        assert!((got - want).abs() <= bound, "d {dim}: {got} vs {want}");
                    }
                }
            }
            // A zero query scores zero.
            let codes = Codes::new(&[0.5, -1.0, 0.25, 1.0], 2);
            let bytes = codes.query_bytes(&[0.0, 0.0]);
            // SAFETY: checked above.
            assert_eq!(unsafe { codes.score_vnni(&bytes, 1) }, 0.0);
        }
    }
}

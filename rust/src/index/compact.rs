//! The exact scan from a compact copy of the item table: approximate scores from a fraction of
//! the bytes, then float32 rescoring of every row that could still be in the top `k`. The
//! result is the float32 scan's, hit for hit and bit for bit ([`crate::index::exact::top_k_where`]).
//!
//! Why: a few thousand items of width ~90 make a float32 table of about 1 MB, which does not
//! stay in a core's L2 beside the steering weights, so every query streamed it from L3. The
//! copy is one of two kinds, chosen for the CPU when the bundle loads ([`kernel`]):
//!
//! - **int8 codes** ([`crate::index::int8`]) where the CPU has AVX-512 VNNI: a quarter of the
//!   bytes, integer dot products, and its own error bound.
//! - **bfloat16** elsewhere: half the bytes, in blocks of [`BLOCK`] rows, and inside a block
//!   the columns in pairs, each row's two values side by side. One 64-byte line then holds a
//!   column pair of 16 rows: AVX-512 BF16's `vdpbf16ps` multiplies it by the query's pair and
//!   adds both products into 16 row scores in one instruction; without it, a shift and a mask
//!   widen the line into two float32 registers. No horizontal sums either way.
//!
//! Why the result is exact. Let `e_r` be a row's float32 score (as `dot` computes it) and `a_r`
//! its approximate score; the copy gives `B ≥ |a_r − e_r|` for every row (for bfloat16,
//! [`CompactRows::bf16_error_bound`]: rounding of the table and of the query is at most 2⁻⁹
//! relative each, and both sums' float32 rounding at most `n·2⁻²⁴` of `Σ|x_i t_i|`, which
//! Cauchy–Schwarz bounds with the largest row norm). Let `τ` be the `k`-th best approximate
//! score among eligible rows. The `k` rows scoring at least `τ` approximately score at least
//! `τ − B` exactly, so the `k`-th best exact score is at least `τ − B`, and every row of the
//! exact top `k` (ties included) has `a_r ≥ τ − 2B`. Those rows are rescored in float32 and
//! ranked by [`rank_order`]. On ML-1M's table `2B` leaves 10–13 rows to rescore for `k = 10`
//! from bfloat16, and 15–30 from int8 codes.

use std::cell::RefCell;

use half::bf16;

use super::exact::{self, sorted_exclusions, Keep, Matrix, RetrieveError};
use super::int8::{Int8Query, Int8Rows};
use super::rank::{rank_order, Hit};
use crate::nn::linalg::{self, Level};

/// Rows per block of the compact layouts (one AVX-512 register of scores).
pub const BLOCK: usize = 16;

/// Above this share of the rows, `k` makes nearly every row a candidate: the float32 scan is
/// cheaper than approximating and then rescoring them all.
const MAX_K_SHARE: usize = 8;

/// Table values and query values beyond this magnitude leave the float32 scan in charge
/// (bfloat16 would overflow near `f32::MAX`, and scores must stay finite).
const MAX_MAGNITUDE: f32 = 1e30;

/// The compact copy of an item matrix (layouts in the module docs).
pub struct CompactRows {
    rows: usize,
    cols: usize,
    table: Table,
}

enum Table {
    Bfloat16 {
        /// Bits of block `b`, column pair `q`, lane `l` (row `b · BLOCK + l`), column `2q + j`
        /// at `((b · pairs + q) · BLOCK + l) · 2 + j`; rows and the column past the end are
        /// zeros.
        data: Vec<u16>,
        /// Largest Euclidean norm of a float32 row.
        max_norm: f64,
    },
    Int8(Int8Rows),
}

/// Which kernel computes the approximate scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Portable,
    Avx2,
    Avx512,
    /// AVX-512 with BF16 dot products (the query rounded to bfloat16 as well).
    Avx512Bf16,
    /// AVX-512 with VNNI integer dot products, on the int8 copy.
    Avx512Vnni,
}

impl Kernel {
    /// Whether this process may run `self`: [`linalg::level`] allows its level (so
    /// `DPR_KERNELS` caps it) and the CPU has its extension.
    fn runs(self) -> bool {
        let level = linalg::level();
        match self {
            Kernel::Portable => true,
            Kernel::Avx2 => level >= Level::Avx2,
            Kernel::Avx512 => level >= Level::Avx512,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 => {
                level >= Level::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => linalg::x86::has_avx512_vnni(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The kernel for this process: the first this CPU runs of VNNI (int8 codes), BF16, AVX-512,
/// AVX2 and portable.
fn kernel() -> Kernel {
    [
        Kernel::Avx512Vnni,
        Kernel::Avx512Bf16,
        Kernel::Avx512,
        Kernel::Avx2,
    ]
    .into_iter()
    .find(|k| k.runs())
    .unwrap_or(Kernel::Portable)
}

impl CompactRows {
    /// The compact copy of `items` for this CPU's [`kernel`], or `None` when a value is not
    /// finite or beyond [`MAX_MAGNITUDE`] (the exact scan then reads the float32 table alone).
    pub fn new(items: Matrix<'_>) -> Option<Self> {
        Self::for_kernel(items, kernel())
    }

    /// The copy `kernel` reads: int8 codes for VNNI, bfloat16 otherwise.
    fn for_kernel(items: Matrix<'_>, kernel: Kernel) -> Option<Self> {
        let (rows, cols) = (items.rows(), items.cols());
        if rows == 0 || cols == 0 {
            return None;
        }
        let values = items.as_slice();
        if values
            .iter()
            .any(|v| !v.is_finite() || v.abs() > MAX_MAGNITUDE)
        {
            return None;
        }
        let table = match kernel {
            Kernel::Avx512Vnni => Table::Int8(Int8Rows::new(items)?),
            _ => bf16_table(values, rows, cols),
        };
        Some(Self { rows, cols, table })
    }

    /// `B`, the largest possible gap between a row's bfloat16 and float32 scores for `query`
    /// (module docs); `None` when a query value is not finite or too large, where only the
    /// float32 scan is exact.
    fn bf16_error_bound(&self, max_norm: f64, query: &[f32]) -> Option<f64> {
        let (mut l1, mut l2) = (0.0f64, 0.0f64);
        for &v in query {
            if !v.is_finite() || v.abs() > MAX_MAGNITUDE {
                return None;
            }
            let v = f64::from(v);
            l1 += v.abs();
            l2 += v * v;
        }
        let largest = l2.sqrt() * max_norm;
        if largest > f64::from(MAX_MAGNITUDE) {
            return None;
        }
        let unit = 2f64.powi(-24);
        let relative = 2f64.powi(-8) + 2f64.powi(-18) + 4.0 * self.cols as f64 * unit;
        // 1% slack covers the rounding of this very computation.
        Some(1.01 * (relative * largest + unit * l1))
    }

    /// The query in the form `kernel` reads on this copy, and the error bound `B` of its
    /// approximate scores; `None` where only the float32 scan is exact.
    fn prepare(&self, kernel: Kernel, query: &[f32]) -> Option<(Prepared, f64)> {
        let max_norm = match &self.table {
            Table::Int8(codes) => {
                let prepared = codes.prepare(query, MAX_MAGNITUDE)?;
                let bound = prepared.bound;
                return Some((Prepared::Int8(prepared), bound));
            }
            Table::Bfloat16 { max_norm, .. } => *max_norm,
        };
        let bound = self.bf16_error_bound(max_norm, query)?;
        let pairs = self.cols.div_ceil(2);
        let value = |c: usize| query.get(c).copied().unwrap_or(0.0);
        let prepared = match kernel {
            Kernel::Avx512Bf16 => Prepared::Bf16Pairs(
                (0..pairs)
                    .map(|q| {
                        let lo = bf16::from_f32(value(2 * q)).to_bits();
                        let hi = bf16::from_f32(value(2 * q + 1)).to_bits();
                        u32::from(lo) | u32::from(hi) << 16
                    })
                    .collect(),
            ),
            _ => Prepared::Padded((0..2 * pairs).map(value).collect()),
        };
        Some((prepared, bound))
    }

    /// Approximate scores of every row into `out` (whole blocks) and each block's largest
    /// score into `maxima`, with `kernel` (one this CPU runs) on `query` as
    /// [`CompactRows::prepare`] made it for the same kernel.
    fn scores(&self, kernel: Kernel, query: &Prepared, out: &mut [f32], maxima: &mut [f32]) {
        let data = match (&self.table, query) {
            (Table::Int8(codes), Prepared::Int8(query)) => {
                codes.scores(query, kernel == Kernel::Avx512Vnni, out, maxima);
                return;
            }
            (Table::Bfloat16 { data, .. }, _) => data,
            (Table::Int8(_), _) => unreachable!("an int8 copy prepares int8 queries"),
        };
        match (kernel, query) {
            // SAFETY (all three): the kernel was detected on this CPU; `data` holds whole
            // blocks of the query's column pairs, `out` `BLOCK` scores and `maxima` one float
            // per block.
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512Bf16, Prepared::Bf16Pairs(x)) => unsafe {
                simd::scores_bf16(data, x, out, maxima)
            },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512 | Kernel::Avx512Vnni, Prepared::Padded(x)) => unsafe {
                simd::scores_avx512(data, x, out, maxima)
            },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, Prepared::Padded(x)) => unsafe {
                simd::scores_avx2(data, x, out, maxima)
            },
            (_, Prepared::Padded(x)) => scores_portable(data, x, out, maxima),
            _ => unreachable!("bfloat16 pairs are made for Avx512Bf16"),
        }
    }
}

/// The bfloat16 table of `values` (`rows × cols`, finite and within [`MAX_MAGNITUDE`]).
fn bf16_table(values: &[f32], rows: usize, cols: usize) -> Table {
    let pairs = cols.div_ceil(2);
    let mut data = vec![0u16; rows.div_ceil(BLOCK) * pairs * BLOCK * 2];
    let mut max_norm = 0.0f64;
    for (r, row) in values.chunks_exact(cols).enumerate() {
        let (b, lane) = (r / BLOCK, r % BLOCK);
        for (c, &v) in row.iter().enumerate() {
            data[((b * pairs + c / 2) * BLOCK + lane) * 2 + c % 2] = bf16::from_f32(v).to_bits();
        }
        let norm = row
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt();
        max_norm = max_norm.max(norm);
    }
    Table::Bfloat16 { data, max_norm }
}

/// A query as a kernel reads it.
enum Prepared {
    /// Column pairs as bfloat16 bits (low half: the even column).
    Bf16Pairs(Vec<u32>),
    /// Float32, padded with a zero to an even length.
    Padded(Vec<f32>),
    /// Two int8 levels for the int8 copy.
    Int8(Int8Query),
}

fn scores_portable(data: &[u16], x: &[f32], out: &mut [f32], maxima: &mut [f32]) {
    let blocks = data.chunks_exact(x.len() * BLOCK);
    for ((block, scores), max) in blocks.zip(out.chunks_exact_mut(BLOCK)).zip(maxima) {
        scores.fill(0.0);
        for (pair, xs) in block.chunks_exact(BLOCK * 2).zip(x.chunks_exact(2)) {
            for (s, values) in scores.iter_mut().zip(pair.chunks_exact(2)) {
                *s += f32::from_bits(u32::from(values[0]) << 16) * xs[0];
                *s += f32::from_bits(u32::from(values[1]) << 16) * xs[1];
            }
        }
        *max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::BLOCK;

    /// # Safety
    /// AVX-512F and AVX-512 BF16; `data` holds `out.len() / BLOCK` blocks of `x.len()` column
    /// pairs; `x` holds the query's pairs as bfloat16 bits (low half: the even column).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn scores_bf16(data: &[u16], x: &[u32], out: &mut [f32], maxima: &mut [f32]) {
        let mut p = data.as_ptr() as *const __m512i;
        let line = |p: *const __m512i| -> __m512bh { std::mem::transmute(_mm512_loadu_si512(p)) };
        let pair = |v: u32| -> __m512bh { std::mem::transmute(_mm512_set1_epi32(v as i32)) };
        let quads = x.chunks_exact(4);
        let rest = quads.remainder();
        for (scores, max) in out.chunks_exact_mut(BLOCK).zip(maxima) {
            // Four named accumulators (an array indexed at run time would live on the stack)
            // keep four dot products in flight.
            let (mut a0, mut a1, mut a2, mut a3) = (
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
            );
            for q in quads.clone() {
                a0 = _mm512_dpbf16_ps(a0, line(p), pair(q[0]));
                a1 = _mm512_dpbf16_ps(a1, line(p.add(1)), pair(q[1]));
                a2 = _mm512_dpbf16_ps(a2, line(p.add(2)), pair(q[2]));
                a3 = _mm512_dpbf16_ps(a3, line(p.add(3)), pair(q[3]));
                p = p.add(4);
            }
            for &q in rest {
                a0 = _mm512_dpbf16_ps(a0, line(p), pair(q));
                p = p.add(1);
            }
            let sum = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
            _mm512_storeu_ps(scores.as_mut_ptr(), sum);
            *max = _mm512_reduce_max_ps(sum);
        }
    }

    /// # Safety
    /// AVX-512F; `data` holds `out.len() / BLOCK` blocks of `x.len() / 2` column pairs.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scores_avx512(data: &[u16], x: &[f32], out: &mut [f32], maxima: &mut [f32]) {
        let mask = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
        let mut p = data.as_ptr() as *const __m512i;
        for (scores, max) in out.chunks_exact_mut(BLOCK).zip(maxima) {
            // Even and odd columns accumulate apart (two fused multiply-adds in flight).
            let (mut even_sum, mut odd_sum) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            for pair in x.chunks_exact(2) {
                let t = _mm512_loadu_si512(p);
                let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(t));
                let odd = _mm512_castsi512_ps(_mm512_and_si512(t, mask));
                even_sum = _mm512_fmadd_ps(even, _mm512_set1_ps(pair[0]), even_sum);
                odd_sum = _mm512_fmadd_ps(odd, _mm512_set1_ps(pair[1]), odd_sum);
                p = p.add(1);
            }
            let sum = _mm512_add_ps(even_sum, odd_sum);
            _mm512_storeu_ps(scores.as_mut_ptr(), sum);
            *max = _mm512_reduce_max_ps(sum);
        }
    }

    /// # Safety
    /// AVX2 and FMA; `data` holds `out.len() / BLOCK` blocks of `x.len() / 2` column pairs.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores_avx2(data: &[u16], x: &[f32], out: &mut [f32], maxima: &mut [f32]) {
        let mask = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
        let mut p = data.as_ptr() as *const __m256i;
        for (scores, max) in out.chunks_exact_mut(BLOCK).zip(maxima) {
            // Rows 0..8 and 8..16, each with an even-column and an odd-column accumulator.
            let (mut lo_even, mut lo_odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let (mut hi_even, mut hi_odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for pair in x.chunks_exact(2) {
                let (x0, x1) = (_mm256_set1_ps(pair[0]), _mm256_set1_ps(pair[1]));
                let (lo, hi) = (_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1)));
                let widen = |t| {
                    (
                        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(t)),
                        _mm256_castsi256_ps(_mm256_and_si256(t, mask)),
                    )
                };
                let ((le, lo_), (he, ho)) = (widen(lo), widen(hi));
                lo_even = _mm256_fmadd_ps(le, x0, lo_even);
                lo_odd = _mm256_fmadd_ps(lo_, x1, lo_odd);
                hi_even = _mm256_fmadd_ps(he, x0, hi_even);
                hi_odd = _mm256_fmadd_ps(ho, x1, hi_odd);
                p = p.add(2);
            }
            let (lo, hi) = (
                _mm256_add_ps(lo_even, lo_odd),
                _mm256_add_ps(hi_even, hi_odd),
            );
            _mm256_storeu_ps(scores.as_mut_ptr(), lo);
            _mm256_storeu_ps(scores.as_mut_ptr().add(8), hi);
            let m = _mm256_max_ps(lo, hi);
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            *max = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<1>(m, m)));
        }
    }
}

/// The largest float32 at most `value` (a threshold rounded the safe way).
fn below(value: f64) -> f32 {
    let rounded = value as f32;
    if f64::from(rounded) > value {
        rounded.next_down()
    } else {
        rounded
    }
}

/// [`exact::top_k_where`] on one thread, reading `copy` (the compact copy of `items`) first:
/// the same hits and scores. Falls back to the float32 scan where the copy cannot be exact
/// (a query that is not finite or could overflow) or would not pay (`k` near the row count).
pub fn top_k_where(
    items: Matrix<'_>,
    copy: &CompactRows,
    query: &[f32],
    k: usize,
    exclude: &[usize],
    keep: Keep<'_>,
) -> Result<Vec<Hit>, RetrieveError> {
    top_k_at(kernel(), items, copy, query, k, exclude, keep)
}

fn top_k_at(
    kernel: Kernel,
    items: Matrix<'_>,
    copy: &CompactRows,
    query: &[f32],
    k: usize,
    exclude: &[usize],
    keep: Keep<'_>,
) -> Result<Vec<Hit>, RetrieveError> {
    let rows = items.rows();
    let fallback = || exact::top_k_where(items, query, k, exclude, keep, false);
    if copy.rows != rows || copy.cols != items.cols() || query.len() != items.cols() {
        return fallback();
    }
    if k.saturating_mul(MAX_K_SHARE) > rows {
        return fallback();
    }
    let Some((prepared, bound)) = copy.prepare(kernel, query) else {
        return fallback();
    };
    let excluded = sorted_exclusions(exclude, rows, None)?;
    if k == 0 {
        return Ok(Vec::new());
    }
    let margin = 2.0 * bound;
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let Scratch {
            scores,
            maxima,
            values,
            candidates,
        } = &mut *scratch;
        let blocks = rows.div_ceil(BLOCK);
        scores.resize(blocks * BLOCK, 0.0);
        maxima.resize(blocks, 0.0);
        copy.scores(kernel, &prepared, scores, maxima);
        let eligible = |row: usize| {
            row < rows && excluded.binary_search(&row).is_err() && keep.is_none_or(|keep| keep(row))
        };
        // Collects the eligible rows scoring at least `floor`, visiting only the blocks
        // whose maximum reaches it.
        let collect = |floor: f32, into: &mut Vec<(usize, f32)>| {
            into.clear();
            for (b, &max) in maxima.iter().enumerate() {
                if max < floor {
                    continue;
                }
                let block = &scores[b * BLOCK..(b + 1) * BLOCK];
                for (i, &a) in block.iter().enumerate() {
                    let row = b * BLOCK + i;
                    if a >= floor && eligible(row) {
                        into.push((row, a));
                    }
                }
            }
        };
        // A first floor from the k-th best block maximum: usually right, and checked below.
        values.clear();
        values.extend_from_slice(maxima);
        let guess = if values.len() > k {
            *values
                .select_nth_unstable_by(k - 1, |x, y| y.total_cmp(x))
                .1
        } else {
            f32::NEG_INFINITY
        };
        let mut floor = below(f64::from(guess) - margin);
        collect(floor, candidates);
        // `τ`, the k-th best approximate score of an eligible row: every eligible row scoring
        // at least `floor` is a candidate, so with `k` candidates it is theirs.
        let kth = |candidates: &[(usize, f32)], values: &mut Vec<f32>| {
            values.clear();
            values.extend(candidates.iter().map(|&(_, a)| a));
            *values
                .select_nth_unstable_by(k - 1, |x, y| y.total_cmp(x))
                .1
        };
        let threshold = if candidates.len() >= k {
            let tau = kth(candidates, values);
            let threshold = below(f64::from(tau) - margin);
            if threshold < floor {
                floor = threshold;
                collect(floor, candidates);
            }
            threshold
        } else {
            // Fewer than k eligible rows reach the guess: take every eligible row.
            collect(f32::NEG_INFINITY, candidates);
            if candidates.len() >= k {
                below(f64::from(kth(candidates, values)) - margin)
            } else {
                f32::NEG_INFINITY
            }
        };
        let mut hits: Vec<Hit> = candidates
            .iter()
            .filter(|&&(_, a)| a >= threshold)
            .map(|&(row, _)| Hit {
                row,
                score: exact::dot(items.row(row), query),
            })
            .collect();
        if hits.len() > k {
            hits.select_nth_unstable_by(k - 1, rank_order);
            hits.truncate(k);
        }
        hits.sort_unstable_by(rank_order);
        Ok(hits)
    })
}

/// The per-thread buffers of [`top_k_where`], reused so a query allocates little.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    maxima: Vec<f32>,
    values: Vec<f32>,
    candidates: Vec<(usize, f32)>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Deterministic pseudo-random floats in `[-1, 1)` (the int8 copy's tests use them too).
    pub(in crate::index) fn wave(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn check_matches_float32(rows: usize, cols: usize, k: usize, exclude: &[usize], seed: u64) {
        let data = wave(rows * cols, seed);
        check_matches_float32_with(&data, rows, cols, &wave(cols, seed + 1), k, exclude);
    }

    fn check_matches_float32_with(
        data: &[f32],
        rows: usize,
        cols: usize,
        query: &[f32],
        k: usize,
        exclude: &[usize],
    ) {
        let items = Matrix::new(data, rows, cols).unwrap();
        let keep = |row: usize| row % 3 != 1;
        for (copy_for, kernels) in copies_and_kernels() {
            let Some(copy) = CompactRows::for_kernel(items, copy_for) else {
                // Only int8 codes of very wide rows are refused; these tests use narrow ones.
                panic!("no {copy_for:?} copy of {rows}×{cols}");
            };
            for keep in [None, Some(&keep as &(dyn Fn(usize) -> bool + Sync))] {
                let want = exact::top_k_where(items, query, k, exclude, keep, false).unwrap();
                for &kernel in &kernels {
                    let got = top_k_at(kernel, items, &copy, query, k, exclude, keep).unwrap();
                    let at = format!("{rows}×{cols} k {k} copy {copy_for:?} kernel {kernel:?}");
                    assert_eq!(got.len(), want.len(), "{at}");
                    for (g, w) in got.iter().zip(&want) {
                        assert_eq!(g.row, w.row, "{at}");
                        assert_eq!(g.score.to_bits(), w.score.to_bits(), "{at}");
                    }
                }
            }
        }
    }

    /// Each kind of copy (named by the kernel it is made for) with every kernel this CPU runs
    /// on it: the bfloat16 copy at four levels, the int8 copy portable and with VNNI.
    fn copies_and_kernels() -> Vec<(Kernel, Vec<Kernel>)> {
        let runs = |kernels: &[Kernel]| -> Vec<Kernel> {
            kernels.iter().copied().filter(|k| k.runs()).collect()
        };
        vec![
            (
                Kernel::Portable,
                runs(&[
                    Kernel::Portable,
                    Kernel::Avx2,
                    Kernel::Avx512,
                    Kernel::Avx512Bf16,
                ]),
            ),
            (
                Kernel::Avx512Vnni,
                runs(&[Kernel::Portable, Kernel::Avx512Vnni]),
            ),
        ]
    }

    #[test]
    fn every_copy_returns_the_float32_hits_bit_for_bit() {
        for (rows, cols) in [(1, 1), (15, 7), (16, 16), (17, 82), (1000, 82), (3125, 64)] {
            for k in [1, 2, 10] {
                check_matches_float32(rows, cols, k, &[], rows as u64 + cols as u64);
                let exclude: Vec<usize> = (0..rows).step_by(5).collect();
                check_matches_float32(rows, cols, k, &exclude, 7);
            }
        }
    }

    #[test]
    fn excluding_the_best_rows_still_gives_the_float32_hits() {
        // The first floor comes from block maxima; excluded or filtered-out best rows make it
        // too high, and the scan must lower it rather than come back short or wrong.
        let (rows, cols) = (2000, 82);
        let data = wave(rows * cols, 11);
        let items = Matrix::new(&data, rows, cols).unwrap();
        let query = wave(cols, 12);
        let best = exact::top_k_where(items, &query, 60, &[], None, false).unwrap();
        let top: Vec<usize> = best.iter().map(|h| h.row).collect();
        for cut in [5, 10, 30, 60] {
            check_matches_float32_with(&data, rows, cols, &query, 10, &top[..cut]);
        }
        let everything: Vec<usize> = (0..rows - 3).collect();
        check_matches_float32_with(&data, rows, cols, &query, 10, &everything);
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(200))]

        /// Any table, query, k and exclusions: the float32 scan's hits, bit for bit, at every
        /// kernel this CPU runs. Values come in a few magnitudes and many repeats, so ties and
        /// near-ties are common.
        #[test]
        fn any_scan_matches_float32(
            rows in 1usize..400,
            cols in 1usize..40,
            k in 0usize..30,
            seed in 0u64..1_000,
            scale in proptest::sample::select(vec![1e-30f32, 1e-3, 1.0, 1e4]),
            levels in 1u32..9,
            excluded in proptest::collection::vec(0usize..400, 0..40),
        ) {
            let data: Vec<f32> = wave(rows * cols, seed)
                .iter()
                .map(|v| (v * levels as f32).round() / levels as f32 * scale)
                .collect();
            let exclude: Vec<usize> = excluded.into_iter().filter(|&r| r < rows).collect();
            check_matches_float32_with(&data, rows, cols, &wave(cols, seed + 7), k, &exclude);
        }
    }

    #[test]
    fn ties_and_duplicates_keep_the_float32_order() {
        // Identical rows tie exactly: the lower row wins, as in the float32 scan.
        let base = wave(40, 3);
        let data: Vec<f32> = (0..300).flat_map(|_| base.iter().copied()).collect();
        let items = Matrix::new(&data, 300, 40).unwrap();
        let query = wave(40, 4);
        for (copy_for, kernels) in copies_and_kernels() {
            let copy = CompactRows::for_kernel(items, copy_for).unwrap();
            for kernel in kernels {
                let got = top_k_at(kernel, items, &copy, &query, 10, &[0, 3], None).unwrap();
                let rows: Vec<usize> = got.iter().map(|h| h.row).collect();
                assert_eq!(rows, vec![1, 2, 4, 5, 6, 7, 8, 9, 10, 11], "{kernel:?}");
            }
        }
    }

    #[test]
    fn values_too_large_leave_no_copy_and_odd_queries_fall_back() {
        let mut data = wave(64 * 8, 5);
        data[3] = 1e31;
        assert!(CompactRows::new(Matrix::new(&data, 64, 8).unwrap()).is_none());
        data[3] = 0.5;
        let items = Matrix::new(&data, 64, 8).unwrap();
        let half = CompactRows::new(items).unwrap();
        let mut query = wave(8, 6);
        query[2] = f32::NAN;
        let want = exact::top_k_where(items, &query, 5, &[], None, false).unwrap();
        let got = top_k_where(items, &half, &query, 5, &[], None).unwrap();
        assert_eq!(got.len(), want.len());
        query[2] = 1e31;
        let want = exact::top_k_where(items, &query, 5, &[], None, false).unwrap();
        assert_eq!(
            top_k_where(items, &half, &query, 5, &[], None).unwrap(),
            want
        );
        // Bad exclusions are the float32 scan's errors.
        assert!(top_k_where(items, &half, &wave(8, 1), 5, &[64], None).is_err());
    }
}

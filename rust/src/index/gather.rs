//! The gather-scan of a filter's allowed rows on the graph's int8 codes, exact all the same.
//!
//! A filtered query on a large catalogue that keeps too few rows for a graph walk scores just
//! the allowed rows. In float32 each 64-wide row is four cache lines gathered from scattered
//! places; its int8 codes ([`crate::index::codes`]) are one. So the scan scores every allowed
//! row from its codes first, keeps only the rows whose code score is within twice the codes'
//! proven error bound of the `k`-th best code score, and scores those exactly with
//! [`exact::top_k_among`]. Hits and scores are that function's over all allowed rows.
//!
//! **Why no row of the exact top-k is dropped.** With per-dimension steps `s_j`, a code is
//! off its value by at most `s_j / 2`, so a row's code score `a_i` is within
//! `B = ½ Σ_j |q_j| s_j` of its exact score `e_i` (plus float rounding, see [`error_bound`]).
//! The `k` rows with the best code scores all have `e ≥ a_(k) − B`, so the `k`-th best exact
//! score is `e_(k) ≥ a_(k) − B`. A row of the exact top-k (ties included) has
//! `e_i ≥ e_(k)`, hence `a_i ≥ e_i − B ≥ a_(k) − 2B`: it is kept. The scan only knows
//! `a_(k)` at its end; the running `k`-th best is never above it, so a row dropped early
//! against the running value would also have been dropped at the end.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::index::codes::Codes;
use crate::index::exact::{self, Hit, Matrix};
use crate::index::graph::prefetch;
use crate::index::rank::rank_key;
use crate::index::rowset::{visit_rows, RowSet};

/// Allowed rows prefetched this far ahead of the one being scored.
const AHEAD: usize = 32;

/// The exact top-`k` among the rows of `rows` (as [`exact::top_k_among`] over `items`, whose
/// row `i` is item row `first + i`), found through `codes` (the codes of `items`' rows).
/// `query` must be finite and `items.cols()` long.
pub fn top_k_among(
    items: Matrix<'_>,
    codes: &Codes,
    first: usize,
    query: &[f32],
    k: usize,
    rows: &RowSet,
) -> Vec<Hit> {
    if k == 0 {
        return Vec::new();
    }
    let scaled = codes.scaled(query);
    let Some(bound) = error_bound(&scaled) else {
        return exact::top_k_among(items, first, query, k, rows).unwrap_or_default();
    };
    let end = first + items.rows();
    let mut kept = Kept::new(k, 2.0 * bound);
    let score = code_scorer();
    let fetch = |row: usize| prefetch(codes.of((row - first) as u32));
    visit_rows(rows, (first, end), AHEAD, fetch, |row| {
        let node = (row - first) as u32;
        kept.offer(row as u32, score(&scaled, codes.of(node)));
    });
    let candidates = RowSet::Sorted(kept.into_rows());
    exact::top_k_among(items, first, query, k, &candidates).unwrap_or_default()
}

/// A bound on `|code score − exact score|` for every row, for the [`Codes::scaled`] query
/// `scaled`: `½ Σ_j |q_j s_j|` for the codes' rounding, with a margin for float rounding in
/// both scores (each sums `dim` products whose magnitudes add up to at most
/// `127 Σ_j |q_j s_j|`). None when that could overflow.
pub fn error_bound(scaled: &[f32]) -> Option<f32> {
    let dim = scaled.len();
    let sum: f64 = scaled.iter().map(|v| f64::from(v.abs())).sum();
    // Rounding: 2 · dim · 2⁻²⁴ relative on each score's 127 Σ|q s|, doubled for safety, plus
    // one part in a thousand for the codes' own rounding of x / s.
    let rounding = 4.0 * (dim as f64 + 2.0) * f64::from(f32::EPSILON) * 127.0;
    let bound = sum * (0.5 * 1.001 + rounding);
    (sum * 128.0 < f64::from(f32::MAX)).then_some(bound as f32 * (1.0 + f32::EPSILON))
}

/// The code-score kernel for this CPU.
fn code_scorer() -> fn(&[f32], &[i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::nn::linalg::x86::has_avx2_fma() {
        return |scaled, codes| {
            // SAFETY: the CPU supports AVX2 and FMA (checked when the scorer was chosen).
            unsafe { Codes::score_avx2(scaled, codes) }
        };
    }
    Codes::score
}

/// The rows whose code score may still reach the top `k`, in increasing row order.
struct Kept {
    k: usize,
    margin: f32,
    /// The best `k` code scores so far, as (rank key, bits), smallest on top.
    best: BinaryHeap<Reverse<(i32, u32)>>,
    /// The `k`-th best code score so far (−∞ until `k` rows were offered).
    kth: f32,
    /// Rows within `margin` of the running `k`-th best when offered, with their code scores.
    rows: Vec<(u32, f32)>,
}

impl Kept {
    fn new(k: usize, margin: f32) -> Self {
        Self {
            k,
            margin,
            best: BinaryHeap::with_capacity(k + 1),
            kth: f32::NEG_INFINITY,
            rows: Vec::new(),
        }
    }

    #[inline]
    fn offer(&mut self, row: u32, score: f32) {
        if score < self.kth - self.margin {
            return;
        }
        if score > self.kth {
            self.best.push(Reverse((rank_key(score), score.to_bits())));
            if self.best.len() > self.k {
                self.best.pop();
            }
            if self.best.len() == self.k {
                self.kth = self
                    .best
                    .peek()
                    .map_or(self.kth, |w| f32::from_bits(w.0 .1));
            }
        }
        self.rows.push((row, score));
    }

    fn into_rows(self) -> Vec<u32> {
        let cut = self.kth - self.margin;
        self.rows
            .into_iter()
            .filter(|&(_, score)| score >= cut)
            .map(|(row, _)| row)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::exact;
    use crate::index::exact::tests::Rng;

    impl Rng {
        fn unit(&mut self) -> f32 {
            (self.next() % 1_000_001) as f32 / 500_000.0 - 1.0
        }
    }

    /// Same hits and scores as the float32 gather, on data made to tie and to sit within
    /// the codes' error of each other, at several filter densities, ks and magnitudes.
    #[test]
    fn the_code_gather_is_the_exact_gather() {
        let mut rng = Rng(7);
        for (n, dim) in [(2_000, 64), (700, 37), (300, 8)] {
            for magnitude in [1e-20f32, 1.0, 1e4] {
                let mut data: Vec<f32> = (0..n * dim).map(|_| rng.unit() * magnitude).collect();
                // Duplicated rows (exact ties) and near-duplicates (inside the codes' error).
                for r in 0..n / 10 {
                    let (src, dst) = (r * 3 % n, (r * 7 + 1) % n);
                    let row: Vec<f32> = data[src * dim..][..dim].to_vec();
                    let nudge = if r % 2 == 0 { 1.0 } else { 1.0 + 1e-4 };
                    for (j, v) in row.iter().enumerate() {
                        data[dst * dim + j] = v * nudge;
                    }
                }
                let first = 5;
                let items = Matrix::new(&data, n, dim).unwrap();
                let codes = Codes::new(&data, dim);
                for per_mille in [0u64, 3, 50, 400, 1000] {
                    let mask: Vec<bool> = (0..first + n + 3)
                        .map(|_| rng.next() % 1000 < per_mille)
                        .collect();
                    let set = RowSet::from_mask(&mask);
                    let bits = RowSet::Bits {
                        words: set.to_bits(mask.len()),
                        count: set.len(),
                    };
                    for k in [1, 10, 100] {
                        let q: Vec<f32> = (0..dim).map(|_| rng.unit()).collect();
                        let want = exact::top_k_among(items, first, &q, k, &set).unwrap();
                        for rows in [&set, &bits] {
                            let got = top_k_among(items, &codes, first, &q, k, rows);
                            assert_eq!(got, want, "n {n} dim {dim} {magnitude} {per_mille}‰ k {k}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_bound_covers_every_row() {
        let mut rng = Rng(11);
        let (n, dim) = (500, 64);
        let data: Vec<f32> = (0..n * dim).map(|_| rng.unit() * 3.0).collect();
        let codes = Codes::new(&data, dim);
        for _ in 0..20 {
            let q: Vec<f32> = (0..dim).map(|_| rng.unit()).collect();
            let scaled = codes.scaled(&q);
            let bound = error_bound(&scaled).unwrap();
            for (i, row) in data.chunks_exact(dim).enumerate() {
                let e = exact::dot(row, &q);
                let a = code_scorer()(&scaled, codes.of(i as u32));
                assert!((e - a).abs() <= bound, "{e} {a} {bound}");
            }
        }
        assert_eq!(error_bound(&[f32::MAX; 4]), None);
    }
}

// Over 400 lines because ~330 of them are tests against a brute-force reference.
//! Exact top-k retrieval by inner product.
//!
//! Given an item matrix (`N × d`, row-major `f32`) and a query vector (`d`), return the `k`
//! rows with the largest inner product, best first. The order is total and deterministic:
//!
//! * higher score first;
//! * equal scores (including `0.0` vs `-0.0`): lower row index first;
//! * `NaN` scores rank below every number, `-inf` included (and among themselves by row).
//!
//! Rows listed in `exclude` are never returned; `k` larger than the number of eligible rows
//! returns all eligible rows. Bad input is reported as a [`RetrieveError`]; nothing in this
//! module panics on any input (slice indices are derived from shapes validated up front).
//!
//! Each query keeps a bounded min-heap of its best `k` (memory `O(k)`, not `O(N)`); a row that
//! cannot enter it costs one integer compare after its dot product. A batch is cut into groups
//! of `GROUP` (16) queries that share one pass over the items (each row is read from memory once
//! per group), and groups run in parallel with rayon; a large scan with too few groups to keep
//! the threads busy is also split into row ranges whose results are merged. None of this
//! changes the result: the order above is total, and a score does not depend on the split.

use std::borrow::Cow;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fmt;

use rayon::prelude::*;

/// An optional row predicate: rows for which it returns `false` are never returned.
pub type Keep<'k> = Option<&'k (dyn Fn(usize) -> bool + Sync)>;

/// Below this many multiply-adds (`N × d × queries`), a scan stays on one thread:
/// splitting costs more than it saves.
const PAR_MIN_WORK: usize = 1 << 18;

/// A row range handed to one rayon task holds at least this many multiply-adds.
const PAR_MIN_CHUNK_WORK: usize = 1 << 16;

/// A batch is scanned in groups of this many queries sharing one pass over the items.
const GROUP: usize = 16;

/// Why a retrieval call was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetrieveError {
    /// A buffer's length is not `rows × cols` (or `rows × cols` overflows).
    Shape {
        rows: usize,
        cols: usize,
        len: usize,
    },
    /// A query's length differs from the items' dimension.
    QueryDim { expected: usize, got: usize },
    /// A batch's queries have another dimension than the items.
    BatchDim { expected: usize, got: usize },
    /// An excluded row is not a row of the item matrix.
    ExcludeOutOfRange {
        /// The query whose exclusion list holds the row (batch calls only).
        query: Option<usize>,
        row: usize,
        rows: usize,
    },
    /// A batch was given exclusion lists, but not one per query.
    ExcludeCount { expected: usize, got: usize },
}

impl fmt::Display for RetrieveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Shape { rows, cols, len } => write!(
                f,
                "buffer of {len} values cannot be a {rows} x {cols} row-major matrix"
            ),
            Self::QueryDim { expected, got } => write!(
                f,
                "query has {got} values but items have dimension {expected}"
            ),
            Self::BatchDim { expected, got } => write!(
                f,
                "queries have dimension {got} but items have dimension {expected}"
            ),
            Self::ExcludeOutOfRange { query, row, rows } => {
                if let Some(q) = query {
                    write!(f, "exclude[{q}]: ")?;
                }
                write!(f, "excluded row {row} is out of range for {rows} items")
            }
            Self::ExcludeCount { expected, got } => write!(
                f,
                "expected one exclusion list per query ({expected}), got {got}"
            ),
        }
    }
}

impl std::error::Error for RetrieveError {}

/// A validated row-major `rows × cols` view of `f32` values.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

impl<'a> Matrix<'a> {
    /// Checks that `data.len() == rows * cols`. Both counts are explicit so that `cols == 0`
    /// (every score is `0.0`) still has a well-defined number of rows.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Result<Self, RetrieveError> {
        match rows.checked_mul(cols) {
            Some(len) if len == data.len() => Ok(Self { data, rows, cols }),
            _ => Err(RetrieveError::Shape {
                rows,
                cols,
                len: data.len(),
            }),
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The `rows × cols` values, row-major (for indexes that keep their own copy, e.g. HNSW).
    pub fn as_slice(&self) -> &'a [f32] {
        self.data
    }

    /// Row `i`; callers keep `i < rows`, which with the checked shape keeps the slice in bounds.
    #[inline]
    pub(crate) fn row(&self, i: usize) -> &'a [f32] {
        let start = i * self.cols;
        &self.data[start..start + self.cols]
    }
}

/// A hit with its precomputed rank key, ordered by rank (`Greater` ranks first), so
/// `BinaryHeap<Reverse<Ranked>>` keeps the worst kept hit on top.
#[derive(Clone, Copy, Debug)]
struct Ranked {
    key: i32,
    hit: Hit,
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        rank_cmp((self.key, self.hit.row), (other.key, other.hit.row)).reverse()
    }
}

use super::graph::prefetch;
use super::rank::{rank_cmp, rank_key};
pub use super::rank::{rank_order, Hit};
use super::rowset::{visit_rows, RowSet};
pub use crate::nn::linalg::dot;
use crate::nn::linalg::gemv;

/// Rows scored per matrix-vector product in a scan.
const SCORE_BLOCK: usize = 64;

/// Excluded rows, sorted and deduplicated, so a scan in row order skips them with a cursor.
pub(crate) fn sorted_exclusions<'e>(
    exclude: &'e [usize],
    rows: usize,
    query: Option<usize>,
) -> Result<Cow<'e, [usize]>, RetrieveError> {
    if let Some(&row) = exclude.iter().find(|&&r| r >= rows) {
        return Err(RetrieveError::ExcludeOutOfRange { query, row, rows });
    }
    // Strictly increasing input (the common case: a sorted, unique history) is used as is.
    if exclude.windows(2).all(|w| w[0] < w[1]) {
        return Ok(Cow::Borrowed(exclude));
    }
    let mut owned = exclude.to_vec();
    owned.sort_unstable();
    owned.dedup();
    Ok(Cow::Owned(owned))
}

/// One query's running state during a scan: its exclusion cursor and its best `k` so far,
/// kept in a min-heap with the worst kept hit on top.
struct Best<'a> {
    query: &'a [f32],
    skip: std::iter::Peekable<std::iter::Copied<std::slice::Iter<'a, usize>>>,
    heap: BinaryHeap<Reverse<Ranked>>,
    /// Rank key of the worst kept hit once the heap holds `k`.
    floor: i32,
}

impl Best<'_> {
    /// Offers a hit; hits must come in increasing row order (see below).
    #[inline]
    fn offer(&mut self, hit: Hit, k: usize) {
        let key = rank_key(hit.score);
        if self.heap.len() < k {
            self.heap.push(Reverse(Ranked { key, hit }));
        } else if key > self.floor {
            // A key equal to the floor loses the tie: its row is higher than every kept row.
            if let Some(mut worst) = self.heap.peek_mut() {
                *worst = Reverse(Ranked { key, hit });
            }
        } else {
            return;
        }
        if self.heap.len() == k {
            self.floor = self.heap.peek().map_or(i32::MIN, |worst| worst.0.key);
        }
    }

    fn into_sorted(self) -> Vec<Hit> {
        // Ascending `Reverse<Ranked>` is descending rank: best first.
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse(ranked)| ranked.hit)
            .collect()
    }
}

/// For each query, the best `k` hits among rows `lo..hi` not in its exclusion list (sorted,
/// unique), best first. The queries share one pass over the rows: each row is read from
/// memory once and scored against every query while it sits in L1, which is what makes a
/// batch cheaper than its queries one by one on a catalogue larger than the caches.
fn scan(
    items: Matrix<'_>,
    queries: &[&[f32]],
    excluded: &[&[usize]],
    lo: usize,
    hi: usize,
    k: usize,
    keep: Keep<'_>,
) -> Vec<Vec<Hit>> {
    if k == 0 || lo >= hi {
        return vec![Vec::new(); queries.len()];
    }
    let mut best: Vec<Best<'_>> = queries
        .iter()
        .zip(excluded)
        .map(|(&query, &ex)| {
            let first = ex.partition_point(|&r| r < lo);
            Best {
                query,
                skip: ex.get(first..).unwrap_or(&[]).iter().copied().peekable(),
                heap: BinaryHeap::with_capacity(k.min(hi - lo)),
                floor: i32::MIN,
            }
        })
        .collect();
    // Rows go by blocks: a block's scores for one query come from one matrix-vector product
    // while the block sits in L1, then feed that query's heap in row order.
    let mut kept = [true; SCORE_BLOCK];
    let mut scores = [0.0f32; SCORE_BLOCK];
    for start in (lo..hi).step_by(SCORE_BLOCK) {
        let end = hi.min(start + SCORE_BLOCK);
        let kept = &mut kept[..end - start];
        let mut kept_rows = kept.len();
        if let Some(keep) = keep {
            for (flag, row) in kept.iter_mut().zip(start..end) {
                *flag = keep(row);
            }
            kept_rows = kept.iter().filter(|&&k| k).count();
        }
        // A selective filter leaves few rows per block: score just those (`dot` gives the
        // same bits as `gemv`); rows filtered out keep stale scores that are never read.
        let sparse = kept_rows * 4 < kept.len();
        let cols = items.cols;
        let block = &items.data[start * cols..end * cols];
        for b in best.iter_mut() {
            let scores = &mut scores[..end - start];
            if sparse {
                for (i, _) in kept.iter().enumerate().filter(|(_, &k)| k) {
                    scores[i] = dot(&block[i * cols..(i + 1) * cols], b.query);
                }
            } else {
                gemv(block, cols, b.query, scores);
            }
            for ((row, &score), &kept) in (start..end).zip(scores.iter()).zip(kept.iter()) {
                // Every query's exclusion cursor must pass each row, kept or not.
                if b.skip.peek() == Some(&row) {
                    b.skip.next();
                    continue;
                }
                if kept {
                    b.offer(Hit { row, score }, k);
                }
            }
        }
    }
    best.into_iter().map(Best::into_sorted).collect()
}

/// Merges two best-first lists into the best `k`, best first.
fn merge(a: Vec<Hit>, b: Vec<Hit>, k: usize) -> Vec<Hit> {
    if b.is_empty() {
        return a;
    }
    if a.is_empty() {
        return b;
    }
    let mut out = Vec::with_capacity(k.min(a.len() + b.len()));
    let (mut ia, mut ib) = (a.into_iter().peekable(), b.into_iter().peekable());
    while out.len() < k {
        let next = match (ia.peek(), ib.peek()) {
            (Some(x), Some(y)) if rank_order(x, y) == Ordering::Greater => ib.next(),
            (Some(_), _) => ia.next(),
            (None, _) => ib.next(),
        };
        match next {
            Some(hit) => out.push(hit),
            None => break,
        }
    }
    out
}

/// [`scan`] over all rows after validation; with `split_rows`, a large scan is cut into row
/// ranges run as rayon tasks, whose per-query results are merged.
fn search(
    items: Matrix<'_>,
    queries: &[&[f32]],
    excluded: &[&[usize]],
    k: usize,
    split_rows: bool,
    keep: Keep<'_>,
) -> Vec<Vec<Hit>> {
    let rows = items.rows();
    let work = rows
        .saturating_mul(items.cols().max(1))
        .saturating_mul(queries.len());
    if !split_rows || work < PAR_MIN_WORK {
        return scan(items, queries, excluded, 0, rows, k, keep);
    }
    let tasks = (work / PAR_MIN_CHUNK_WORK)
        .clamp(1, 4 * rayon::current_num_threads())
        .min(rows);
    let chunk = rows.div_ceil(tasks);
    (0..tasks)
        .into_par_iter()
        .map(|t| {
            let lo = t * chunk;
            scan(items, queries, excluded, lo, rows.min(lo + chunk), k, keep)
        })
        .reduce(
            || vec![Vec::new(); queries.len()],
            |a, b| a.into_iter().zip(b).map(|(x, y)| merge(x, y, k)).collect(),
        )
}

/// The `k` rows of `items` with the largest inner product with `query`, best first.
///
/// Rows in `exclude` (any order, duplicates allowed) are skipped. Returns fewer than `k` hits
/// only when fewer than `k` rows are eligible.
pub fn top_k(
    items: Matrix<'_>,
    query: &[f32],
    k: usize,
    exclude: &[usize],
) -> Result<Vec<Hit>, RetrieveError> {
    top_k_where(items, query, k, exclude, None, true)
}

/// [`top_k`] restricted to the rows for which `keep` holds (when given); `parallel: false`
/// keeps the scan on the calling thread (for callers that parallelise across queries).
pub fn top_k_where(
    items: Matrix<'_>,
    query: &[f32],
    k: usize,
    exclude: &[usize],
    keep: Keep<'_>,
    parallel: bool,
) -> Result<Vec<Hit>, RetrieveError> {
    if query.len() != items.cols() {
        return Err(RetrieveError::QueryDim {
            expected: items.cols(),
            got: query.len(),
        });
    }
    let excluded = sorted_exclusions(exclude, items.rows(), None)?;
    let mut hits = search(items, &[query], &[&excluded], k, parallel, keep);
    Ok(hits.pop().unwrap_or_default())
}

/// Gathered rows prefetched this far ahead of the one being scored.
const GATHER_AHEAD: usize = 16;

/// The exact top-k among the rows of `rows`, scoring just those (a gather-scan): `items` row
/// `i` is item row `first + i`; rows of `rows` outside `first..first + items.rows()` are
/// skipped. Hits name item rows, best first, in [`top_k`]'s order and with its scores, so the
/// result is the exact filtered top-k.
pub fn top_k_among(
    items: Matrix<'_>,
    first: usize,
    query: &[f32],
    k: usize,
    rows: &RowSet,
) -> Result<Vec<Hit>, RetrieveError> {
    if query.len() != items.cols() {
        return Err(RetrieveError::QueryDim {
            expected: items.cols(),
            got: query.len(),
        });
    }
    let end = first + items.rows();
    let mut best = Best {
        query,
        skip: [].iter().copied().peekable(),
        heap: BinaryHeap::with_capacity(k.min(rows.len())),
        floor: i32::MIN,
    };
    if k == 0 {
        return Ok(Vec::new());
    }
    let fetch = |row: usize| prefetch(items.row(row - first));
    visit_rows(rows, (first, end), GATHER_AHEAD, fetch, |row| {
        let score = dot(items.row(row - first), best.query);
        best.offer(Hit { row, score }, k);
    });
    Ok(best.into_sorted())
}

/// [`top_k`] for every row of `queries`, run in parallel; result `i` belongs to query `i`.
///
/// `excludes` is either empty (no exclusions) or holds one list per query. Everything is
/// validated before any work starts, so an error never comes with partial results.
pub fn top_k_batch<E>(
    items: Matrix<'_>,
    queries: Matrix<'_>,
    k: usize,
    excludes: &[E],
) -> Result<Vec<Vec<Hit>>, RetrieveError>
where
    E: AsRef<[usize]> + Sync,
{
    if queries.cols() != items.cols() {
        return Err(RetrieveError::BatchDim {
            expected: items.cols(),
            got: queries.cols(),
        });
    }
    let n = queries.rows();
    if !excludes.is_empty() && excludes.len() != n {
        return Err(RetrieveError::ExcludeCount {
            expected: n,
            got: excludes.len(),
        });
    }
    let owned = excludes
        .iter()
        .enumerate()
        .map(|(q, e)| sorted_exclusions(e.as_ref(), items.rows(), Some(q)))
        .collect::<Result<Vec<_>, _>>()?;
    let excluded: Vec<&[usize]> = (0..n)
        .map(|q| owned.get(q).map_or(&[][..], |e| &e[..]))
        .collect();
    let queries: Vec<&[f32]> = (0..n).map(|q| queries.row(q)).collect();
    // Fewer groups than threads: let each group split its rows too, so all threads have work.
    let split_rows = n.div_ceil(GROUP) < rayon::current_num_threads();
    let per_group: Vec<Vec<Vec<Hit>>> = queries
        .par_chunks(GROUP)
        .zip(excluded.par_chunks(GROUP))
        .map(|(qs, ex)| search(items, qs, ex, k, split_rows, None))
        .collect();
    Ok(per_group.into_iter().flatten().collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Reference: score everything, sort by the documented order, truncate.
    fn brute(items: Matrix<'_>, query: &[f32], k: usize, exclude: &[usize]) -> Vec<Hit> {
        let mut all: Vec<Hit> = (0..items.rows())
            .filter(|r| !exclude.contains(r))
            .map(|row| Hit {
                row,
                score: dot(items.row(row), query),
            })
            .collect();
        all.sort_by(rank_order);
        all.truncate(k);
        all
    }

    fn rows_of(hits: &[Hit]) -> Vec<usize> {
        hits.iter().map(|h| h.row).collect()
    }

    /// Small deterministic generator (xorshift), so tests need no extra crate.
    pub(crate) struct Rng(pub(crate) u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// Small integers as floats: sums are exact, so ties are real ties.
        fn small(&mut self) -> f32 {
            (self.next() % 7) as f32 - 3.0
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.small()).collect()
        }
    }

    #[test]
    fn predicate_and_exclusions_combine() {
        // Rows 2 and 5 are excluded; the predicate rejects row 2 (excluded too) and row 3.
        let data: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let items = Matrix::new(&data, 8, 1).unwrap();
        let keep = |row: usize| row != 2 && row != 3;
        let hits = top_k_where(items, &[1.0], 8, &[5, 2], Some(&keep), false).unwrap();
        assert_eq!(rows_of(&hits), vec![7, 6, 4, 1, 0]);
    }

    #[test]
    fn selective_and_broad_filters_match_brute_force() {
        // Filters keeping ~3%, ~20% and ~70% of rows take the sparse and the dense block
        // paths; exclusions fall on kept and dropped rows alike.
        let mut rng = Rng(21);
        let (n, d) = (2_000, 24);
        let data = rng.vec(n * d);
        let items = Matrix::new(&data, n, d).unwrap();
        let query = rng.vec(d);
        let exclude: Vec<usize> = (0..300).map(|_| (rng.next() as usize) % n).collect();
        for modulus in [33, 5, 3] {
            let keep = |row: usize| {
                if modulus == 3 {
                    !row.is_multiple_of(3)
                } else {
                    row % modulus == 1
                }
            };
            for k in [1, 10, 500] {
                let hits = top_k_where(items, &query, k, &exclude, Some(&keep), false).unwrap();
                // Rows the filter drops are, for the reference, simply excluded too.
                let dropped = (0..n).filter(|&r| !keep(r));
                let expected = brute(
                    items,
                    &query,
                    k,
                    &[exclude.clone(), dropped.collect()].concat(),
                );
                assert_eq!(hits, expected, "keep 1/{modulus}, k={k}");
            }
        }
    }

    #[test]
    fn dot_matches_naive_for_all_tail_lengths() {
        let mut rng = Rng(7);
        for d in 0..40 {
            let (a, b) = (rng.vec(d), rng.vec(d));
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert_eq!(dot(&a, &b), naive, "d = {d}");
        }
    }

    #[test]
    fn sorted_best_first() {
        let data = [1.0, 0.0, 3.0, 0.0, 2.0, 0.0, -1.0, 0.0];
        let items = Matrix::new(&data, 4, 2).unwrap();
        let hits = top_k(items, &[1.0, 5.0], 3, &[]).unwrap();
        assert_eq!(
            hits,
            vec![
                Hit { row: 1, score: 3.0 },
                Hit { row: 2, score: 2.0 },
                Hit { row: 0, score: 1.0 },
            ]
        );
    }

    #[test]
    fn ties_go_to_the_lower_row() {
        let data = [1.0, 2.0, 1.0, 2.0, 1.0];
        let items = Matrix::new(&data, 5, 1).unwrap();
        assert_eq!(
            rows_of(&top_k(items, &[1.0], 5, &[]).unwrap()),
            [1, 3, 0, 2, 4]
        );
        assert_eq!(rows_of(&top_k(items, &[1.0], 3, &[]).unwrap()), [1, 3, 0]);
        // Negative query flips the scores but not the tie-break.
        assert_eq!(
            rows_of(&top_k(items, &[-1.0], 4, &[]).unwrap()),
            [0, 2, 4, 1]
        );
    }

    #[test]
    fn a_gather_scan_is_the_filtered_scan() {
        // Rounded values make ties common; rows 0..first are outside the matrix.
        let (n, d, first) = (700, 5, 3);
        let data: Vec<f32> = (0..n * d)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 2.0)
            .collect();
        let items = Matrix::new(&data, n, d).unwrap();
        for every in [1, 2, 7, 40, 1000] {
            let keep = |row: usize| row.is_multiple_of(every);
            // Item rows first..first + n, plus rows outside that are ignored.
            let set = RowSet::from_fn(first + n + 50, keep);
            let local = |i: usize| keep(i + first);
            for k in [0, 1, 10, 700] {
                for query in [[1.0, 0.5, -1.0, 2.0, 0.0], [0.0; 5]] {
                    let want = top_k_where(items, &query, k, &[], Some(&local), false).unwrap();
                    let want: Vec<Hit> = want
                        .into_iter()
                        .map(|h| Hit {
                            row: h.row + first,
                            score: h.score,
                        })
                        .collect();
                    let got = top_k_among(items, first, &query, k, &set).unwrap();
                    assert_eq!(got, want, "every {every}, k {k}");
                    if let RowSet::Bits { words, count } = &set {
                        let list = RowSet::Sorted(set.iter().map(|r| r as u32).collect());
                        let bits = RowSet::Bits {
                            words: words.clone(),
                            count: *count,
                        };
                        assert_eq!(top_k_among(items, first, &query, k, &list).unwrap(), want);
                        assert_eq!(top_k_among(items, first, &query, k, &bits).unwrap(), want);
                    }
                }
            }
        }
        let set = RowSet::from_fn(10, |_| true);
        assert!(top_k_among(items, 0, &[1.0], 3, &set).is_err());
    }

    #[test]
    fn signed_zeros_tie() {
        let data = [0.0, -0.0, 0.0];
        let items = Matrix::new(&data, 3, 1).unwrap();
        // Scores are 0.0, -0.0, 0.0 for a positive query and -0.0, 0.0, -0.0 for a negative one.
        assert_eq!(rows_of(&top_k(items, &[1.0], 3, &[]).unwrap()), [0, 1, 2]);
        assert_eq!(rows_of(&top_k(items, &[-1.0], 3, &[]).unwrap()), [0, 1, 2]);
    }

    #[test]
    fn exclusions_are_skipped_in_any_order_with_duplicates() {
        let data = [5.0, 4.0, 3.0, 2.0, 1.0];
        let items = Matrix::new(&data, 5, 1).unwrap();
        let hits = top_k(items, &[1.0], 2, &[3, 0, 0, 1]).unwrap();
        assert_eq!(rows_of(&hits), [2, 4]);
        let hits = top_k(items, &[1.0], 10, &[0, 1]).unwrap();
        assert_eq!(rows_of(&hits), [2, 3, 4]);
        // Everything excluded: nothing eligible.
        assert!(top_k(items, &[1.0], 3, &[4, 3, 2, 1, 0])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn k_beyond_rows_returns_all_eligible() {
        let data = [1.0, 3.0, 2.0];
        let items = Matrix::new(&data, 3, 1).unwrap();
        let hits = top_k(items, &[1.0], usize::MAX, &[]).unwrap();
        assert_eq!(rows_of(&hits), [1, 2, 0]);
    }

    #[test]
    fn k_zero_and_empty_inputs() {
        let data = [1.0, 2.0];
        let items = Matrix::new(&data, 2, 1).unwrap();
        assert!(top_k(items, &[1.0], 0, &[]).unwrap().is_empty());
        let none = Matrix::new(&[], 0, 3).unwrap();
        assert!(top_k(none, &[1.0, 2.0, 3.0], 5, &[]).unwrap().is_empty());
        // d = 0: every row scores 0.0, ties by row.
        let flat = Matrix::new(&[], 4, 0).unwrap();
        let hits = top_k(flat, &[], 3, &[1]).unwrap();
        assert_eq!(rows_of(&hits), [0, 2, 3]);
        assert!(hits.iter().all(|h| h.score == 0.0));
    }

    #[test]
    fn nan_ranks_last_and_infinities_order() {
        let data = [
            f32::NAN,
            f32::NEG_INFINITY,
            1.0,
            f32::NAN,
            f32::INFINITY,
            -2.0,
        ];
        let items = Matrix::new(&data, 6, 1).unwrap();
        let hits = top_k(items, &[1.0], 6, &[]).unwrap();
        assert_eq!(rows_of(&hits), [4, 2, 5, 1, 0, 3]);
        assert!(hits[4].score.is_nan() && hits[5].score.is_nan());
        // A NaN query makes every score NaN: still no panic, order by row.
        let hits = top_k(items, &[f32::NAN], 3, &[]).unwrap();
        assert_eq!(rows_of(&hits), [0, 1, 2]);
        // inf * 0 is NaN too.
        let hits = top_k(items, &[0.0], 6, &[]).unwrap();
        assert_eq!(rows_of(&hits), [2, 5, 0, 1, 3, 4]);
    }

    #[test]
    fn errors_instead_of_panics() {
        assert_eq!(
            Matrix::new(&[1.0; 5], 2, 3).unwrap_err(),
            RetrieveError::Shape {
                rows: 2,
                cols: 3,
                len: 5
            }
        );
        assert!(Matrix::new(&[], usize::MAX, 2).is_err());
        let items = Matrix::new(&[1.0; 6], 3, 2).unwrap();
        assert_eq!(
            top_k(items, &[1.0], 1, &[]).unwrap_err(),
            RetrieveError::QueryDim {
                expected: 2,
                got: 1
            }
        );
        let err = top_k(items, &[1.0, 1.0], 1, &[0, 3]).unwrap_err();
        assert_eq!(
            err,
            RetrieveError::ExcludeOutOfRange {
                query: None,
                row: 3,
                rows: 3
            }
        );
        assert_eq!(
            err.to_string(),
            "excluded row 3 is out of range for 3 items"
        );
        let queries = Matrix::new(&[1.0; 3], 1, 3).unwrap();
        assert!(matches!(
            top_k_batch::<Vec<usize>>(items, queries, 1, &[]),
            Err(RetrieveError::BatchDim { .. })
        ));
        let queries = Matrix::new(&[1.0; 4], 2, 2).unwrap();
        assert_eq!(
            top_k_batch(items, queries, 1, &[vec![0]]).unwrap_err(),
            RetrieveError::ExcludeCount {
                expected: 2,
                got: 1
            }
        );
        let err = top_k_batch(items, queries, 1, &[vec![0], vec![9]]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "exclude[1]: excluded row 9 is out of range for 3 items"
        );
    }

    #[test]
    fn matches_brute_force_on_random_ties() {
        let mut rng = Rng(42);
        for &(n, d) in &[(1, 1), (7, 3), (50, 8), (333, 13), (1000, 16)] {
            let data = rng.vec(n * d);
            let items = Matrix::new(&data, n, d).unwrap();
            for k in [0, 1, 5, n / 2, n, n + 3] {
                let query = rng.vec(d);
                let exclude: Vec<usize> = (0..n / 4).map(|_| (rng.next() as usize) % n).collect();
                let got = top_k(items, &query, k, &exclude).unwrap();
                assert_eq!(got, brute(items, &query, k, &exclude), "n={n} d={d} k={k}");
            }
        }
    }

    #[test]
    fn parallel_split_matches_single_scan() {
        // Large enough to take the parallel path; small integers give many ties across chunks.
        let mut rng = Rng(3);
        let (n, d) = (20_000, 32);
        let data = rng.vec(n * d);
        let items = Matrix::new(&data, n, d).unwrap();
        let query = rng.vec(d);
        let exclude: Vec<usize> = (0..500).map(|_| (rng.next() as usize) % n).collect();
        let excluded = sorted_exclusions(&exclude, n, None).unwrap();
        for k in [1, 10, 100, n] {
            let single = scan(items, &[&query], &[&excluded], 0, n, k, None);
            assert_eq!(
                top_k(items, &query, k, &exclude).unwrap(),
                single[0],
                "k={k}"
            );
        }
    }

    #[test]
    fn batch_matches_single_queries() {
        let mut rng = Rng(9);
        let (n, d, b) = (300, 10, 17);
        let data = rng.vec(n * d);
        let items = Matrix::new(&data, n, d).unwrap();
        let qdata = rng.vec(b * d);
        let queries = Matrix::new(&qdata, b, d).unwrap();
        let excludes: Vec<Vec<usize>> = (0..b).map(|q| (0..q * 3).collect()).collect();
        let got = top_k_batch(items, queries, 20, &excludes).unwrap();
        assert_eq!(got.len(), b);
        for (q, hits) in got.iter().enumerate() {
            let expected = top_k(items, queries.row(q), 20, &excludes[q]).unwrap();
            assert_eq!(hits, &expected, "query {q}");
        }
        // No exclusion lists at all.
        let got = top_k_batch::<Vec<usize>>(items, queries, 5, &[]).unwrap();
        assert_eq!(got[3], top_k(items, queries.row(3), 5, &[]).unwrap());
        // Zero queries.
        let empty = Matrix::new(&[], 0, d).unwrap();
        assert!(top_k_batch::<Vec<usize>>(items, empty, 5, &[])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn large_batches_match_single_queries() {
        // Several groups, row splitting for a small batch, many ties, and exclusions.
        let mut rng = Rng(11);
        let (n, d) = (2_000, 24);
        let data = rng.vec(n * d);
        let items = Matrix::new(&data, n, d).unwrap();
        for b in [1, 3, GROUP, GROUP + 1, 3 * GROUP + 5] {
            let qdata = rng.vec(b * d);
            let queries = Matrix::new(&qdata, b, d).unwrap();
            let excludes: Vec<Vec<usize>> = (0..b)
                .map(|_| (0..50).map(|_| (rng.next() as usize) % n).collect())
                .collect();
            for k in [1, 64] {
                let got = top_k_batch(items, queries, k, &excludes).unwrap();
                for (q, hits) in got.iter().enumerate() {
                    let expected = brute(items, queries.row(q), k, &excludes[q]);
                    assert_eq!(hits, &expected, "b={b} k={k} query {q}");
                }
            }
        }
    }

    #[test]
    fn merge_keeps_order_and_k() {
        let h = |row, score| Hit { row, score };
        let a = vec![h(0, 3.0), h(4, 1.0)];
        let b = vec![h(2, 3.0), h(1, 2.0), h(3, f32::NAN)];
        assert_eq!(rows_of(&merge(a.clone(), b.clone(), 10)), [0, 2, 1, 4, 3]);
        assert_eq!(rows_of(&merge(b, a, 2)), [0, 2]);
    }
}

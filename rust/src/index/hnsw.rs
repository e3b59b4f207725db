// Over 400 lines because ~400 are tests; build, persistence and search share private state.
//! Approximate top-k by inner product: an HNSW graph built by dpr's own builder
//! ([`crate::index::build`], inner-product metric) and searched by dpr's own walk
//! ([`crate::index::graph`]), with row filters, an exact fallback, and exact scores.
//!
//! Why the inner-product metric: see `benches/results/hnsw-crates.md`. In short, item vectors
//! are not normalised; `hnsw_rs`'s `DistDot` asserts unit vectors and its search asserts
//! non-negative distances, and the usual MIPS→L2 transform (an extra coordinate
//! `sqrt(M² - |x|²)`) made recall collapse on catalogues whose norms vary, in both crates.
//! Why dpr builds and walks the graph itself: through the `usearch` crate, searches measured
//! 3-4x and builds 2-3x slower than hnswlib (`benches/results/retrieval.md` history).
//!
//! What this module adds on top of the graph:
//!
//! * **Exact scores and order.** The walk scores int8 codes of the rows
//!   ([`crate::index::codes`]) and rescores its best `2k + 16` results; the scores handed out
//!   are [`crate::index::exact::dot`] on this index's own copy of the rows, and the best `k`
//!   are ranked exactly as [`crate::index::exact::top_k`] ranks them (higher score first, ties
//!   to the lower row, NaN last). A score therefore equals the exact scan's score bit for bit.
//! * **Filters that keep their promise.** The allowed rows come as a [`RowSet`] with its exact
//!   size; a row outside it is never returned, and `min(k, allowed rows)` hits come back
//!   whenever that many rows are allowed: [`policy::plan`] sends a filter keeping few rows to
//!   the exact scan of just those rows (read from the int8 codes first, [`gather`]), and a
//!   graph walk that still comes back short falls back to the same scan. (Known bugs in this area: usearch #751 returned fewer than k,
//!   hnsw_rs #27 returned filtered-out items.)
//! * **Safe concurrency.** The graph is immutable once built; searches keep their state per
//!   thread.
//! * **A checked file.** [`HnswIndex::save`] writes [`crate::index::file`]'s format, which
//!   [`HnswIndex::load`] refuses when damaged or built for another catalogue.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, RwLock};

use crate::index::build::{self, BuildParams};
use crate::index::codes::Codes;
use crate::index::exact::{self, Matrix};
use crate::index::file;
use crate::index::gather;
use crate::index::graph::{FlatGraph, Scored, Walk};
use crate::index::policy::{self, Plan};
use crate::index::pool::MAX_NODES;
use crate::index::rank::{rank_order, Hit};
use crate::index::rowset::RowSet;
use crate::index::subgraph::Subgraph;

/// The default `ef` of a new index, and of one read from a file of the first format (which did
/// not keep one).
const DEFAULT_EXPANSION_SEARCH: usize = 128;

/// The seed of the graph's levels (a fixed seed: one thread builds the same graph every time).
pub(crate) const SEED: u64 = 0x5EED_D9B0;

/// Largest accepted `connectivity` (hnswlib's documentation recommends 2..100; the graph's
/// base level keeps `2 * connectivity` neighbours a node).
const MAX_CONNECTIVITY: usize = 1024;

/// Graph construction and search settings (hnswlib's `M`, `ef_construction` and `ef`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HnswParams {
    /// `M`: neighbours kept per node and layer (twice that on the bottom layer).
    pub connectivity: usize,
    /// `ef_construction`: candidate list length while inserting.
    pub expansion_add: usize,
    /// Default `ef` for [`HnswIndex::search`] (used when a call passes `ef = 0`; see also
    /// [`HnswIndex::calibrate`]).
    pub expansion_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            connectivity: 16,
            expansion_add: 128,
            expansion_search: DEFAULT_EXPANSION_SEARCH,
        }
    }
}

/// Why an index could not be built, searched, saved or loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HnswError {
    /// A query's length differs from the items' dimension.
    QueryDim { expected: usize, got: usize },
    /// The rows to index do not lie inside the item matrix.
    RowRange {
        start: usize,
        end: usize,
        rows: usize,
    },
    /// Items of dimension zero cannot be indexed.
    ZeroDim,
    /// A parameter is out of range.
    Param { name: &'static str, message: String },
    /// An item holds a NaN or an infinity (the graph cannot place it).
    NonFinite { row: usize },
    /// Saving or loading failed; `path` names the file.
    File { path: PathBuf, message: String },
}

impl fmt::Display for HnswError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::QueryDim { expected, got } => write!(
                f,
                "query has {got} values but items have dimension {expected}"
            ),
            Self::RowRange { start, end, rows } => write!(
                f,
                "rows {start}..{end} are not a range inside the {rows} rows of items"
            ),
            Self::ZeroDim => write!(f, "items have dimension 0; nothing to index"),
            Self::Param { name, message } => write!(f, "{name}: {message}"),
            Self::NonFinite { row } => write!(f, "item row {row} holds a NaN or an infinity"),
            Self::File { path, message } => write!(f, "{}: {message}", path.display()),
        }
    }
}

impl std::error::Error for HnswError {}

/// An HNSW graph over rows `start..start + len` of an item matrix, searched by inner product.
pub struct HnswIndex {
    /// The graph in the layout its searches walk (see [`crate::index::graph`]).
    flat: FlatGraph,
    /// The indexed rows as int8 codes, which the walks score (see [`crate::index::codes`]).
    codes: Codes,
    /// The build settings, kept in the saved file.
    connectivity: usize,
    expansion_add: usize,
    /// Item vectors for exact rescoring and the exact fallback: item row `base + i` is
    /// `vectors[i * dim..(i + 1) * dim]`. Shared with the caller's item table (no copy) or a
    /// copy of the indexed rows.
    vectors: Arc<Vec<f32>>,
    base: usize,
    start: usize,
    len: usize,
    dim: usize,
    /// The default breadth; [`HnswIndex::calibrate`] may change it while searches run.
    expansion_search: AtomicUsize,
    /// Graphs over subsets of the rows (attribute values), smallest first
    /// ([`crate::index::subgraph`]); added while searches may run.
    subgraphs: RwLock<Vec<Arc<Subgraph>>>,
}

/// Searches from many threads at once are part of the contract.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<HnswIndex>()
};

/// Where a file bound for `path` is written before it is renamed into place.
fn partial_path(path: &Path) -> PathBuf {
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(".{}.partial", std::process::id()));
    PathBuf::from(partial)
}

fn check_params(params: &HnswParams) -> Result<(), HnswError> {
    let bad = |name, message: &str| {
        Err(HnswError::Param {
            name,
            message: message.to_owned(),
        })
    };
    if !(2..=MAX_CONNECTIVITY).contains(&params.connectivity) {
        return bad(
            "connectivity",
            &format!(
                "must be in 2..={MAX_CONNECTIVITY}, got {}",
                params.connectivity
            ),
        );
    }
    if params.expansion_add == 0 {
        return bad("expansion_add", "must be >= 1, got 0");
    }
    if params.expansion_search == 0 {
        return bad("expansion_search", "must be >= 1, got 0");
    }
    Ok(())
}

/// How many of a walk's best results by the int8 codes are rescored exactly when `k` are
/// wanted: a margin for the codes' error (each score is off by at most half a step per
/// dimension), which only a near-tie at the `k`-th place can exceed.
pub(crate) fn rescored(k: usize) -> usize {
    2 * k + 16
}

/// The first of [`policy::BREADTHS`] at which `walk(query, ef)` finds at least `target` of
/// `exact(query)` (the best `k`) over `queries` on average, with the recall measured there
/// (the last breadth if none does, or the first reaching `len` rows). Queries run in parallel.
fn smallest_breadth(
    queries: Matrix<'_>,
    (k, target, len): (usize, f64, usize),
    exact: impl Fn(&[f32]) -> Vec<Hit> + Sync,
    walk: impl Fn(&[f32], usize) -> Vec<Hit> + Sync,
) -> (usize, f64) {
    use rayon::prelude::*;

    let truths: Vec<Vec<usize>> = (0..queries.rows())
        .into_par_iter()
        .map(|q| exact(queries.row(q)).iter().map(|h| h.row).collect())
        .collect();
    let wanted: usize = truths.iter().map(Vec::len).sum();
    let mut measured = (policy::BREADTHS[policy::BREADTHS.len() - 1], 1.0);
    for ef in policy::BREADTHS {
        let found: usize = (0..queries.rows())
            .into_par_iter()
            .map(|q| {
                let hits = walk(queries.row(q), ef.max(k).min(len));
                hits.iter().filter(|h| truths[q].contains(&h.row)).count()
            })
            .sum();
        measured = (ef, found as f64 / wanted.max(1) as f64);
        if measured.1 >= target || ef >= len {
            break;
        }
    }
    measured
}

/// The best `k` of a walk whose filter refuses `dropped` of its graph's nodes: when they are
/// few (a user's history), `walk(k + dropped, breadth, None)` unfiltered with the refused hits
/// dropped afterwards by `keep_row` (the unfiltered walk keeps one sorted pool, the filtered
/// one two heaps; see [`policy::DROPPED_AFTER_WALK_MAX`]), else `walk(k, breadth,
/// Some(keep_node))`. The breadth is `ef`, raised to the hits wanted, at most `len`.
pub(crate) fn walk_dropping(
    walk: impl Fn(usize, usize, Option<&dyn Fn(u32) -> bool>) -> Vec<Hit>,
    (k, ef, len): (usize, usize, usize),
    keep_node: &dyn Fn(u32) -> bool,
    keep_row: impl Fn(usize) -> bool,
    dropped: usize,
) -> Vec<Hit> {
    if dropped > policy::DROPPED_AFTER_WALK_MAX {
        return walk(k, ef.max(k).min(len), Some(keep_node));
    }
    let wanted = k + dropped;
    let mut hits = walk(wanted, ef.max(wanted).min(len), None);
    hits.retain(|h| keep_row(h.row));
    hits.truncate(k);
    hits
}

/// The best `k` of a walk's `found` nodes as hits on item rows (`row_of(node)`, increasing
/// with the node), ranked: the walk scores with the same dot product as the exact scan, the
/// sort applies its tie and NaN rules.
pub(crate) fn best_hits(found: Vec<Scored>, k: usize, row_of: impl Fn(u32) -> usize) -> Vec<Hit> {
    let mut hits: Vec<Hit> = found
        .into_iter()
        .map(|s| Hit {
            row: row_of(s.node),
            score: s.score,
        })
        .collect();
    hits.sort_unstable_by(rank_order);
    hits.truncate(k);
    hits
}

/// An item table as a value graph reads it: item row `r` is
/// `vectors[(r - base) * dim..][..dim]`.
#[derive(Clone, Copy)]
pub(crate) struct Table<'a> {
    pub vectors: &'a [f32],
    pub base: usize,
    pub dim: usize,
}

/// Checks that `range` lies inside `rows` rows and that those rows of `data` are finite.
fn check_rows(
    data: &[f32],
    cols: usize,
    rows: usize,
    range: &Range<usize>,
) -> Result<(), HnswError> {
    if range.start > range.end || range.end > rows {
        return Err(HnswError::RowRange {
            start: range.start,
            end: range.end,
            rows,
        });
    }
    let values = &data[range.start * cols..range.end * cols];
    if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
        return Err(HnswError::NonFinite {
            row: range.start + bad / cols,
        });
    }
    Ok(())
}

/// An item matrix the index may keep a reference to: `data` holds `data.len() / cols` rows.
#[derive(Clone)]
pub struct SharedItems {
    pub data: Arc<Vec<f32>>,
    pub cols: usize,
}

impl SharedItems {
    /// Copies rows `range` of `items` (the rest of the matrix is not kept).
    fn copy_of(items: Matrix<'_>, range: &Range<usize>) -> Result<(Self, usize), HnswError> {
        check_rows(items.as_slice(), items.cols(), items.rows(), range)?;
        let d = items.cols();
        let data = items.as_slice()[range.start * d..range.end * d].to_vec();
        Ok((
            Self {
                data: Arc::new(data),
                cols: d,
            },
            range.start,
        ))
    }

    fn rows(&self) -> usize {
        self.data.len().checked_div(self.cols).unwrap_or(0)
    }
}

impl HnswIndex {
    /// Indexes rows `rows` of `items` (for example `1..N` when row 0 is padding); results name
    /// rows of `items`. The rows are copied. Inserts run in parallel on rayon's pool.
    pub fn build(
        items: Matrix<'_>,
        rows: Range<usize>,
        params: &HnswParams,
    ) -> Result<Self, HnswError> {
        if items.cols() == 0 {
            return Err(HnswError::ZeroDim);
        }
        let (vectors, base) = SharedItems::copy_of(items, &rows)?;
        Self::build_with(vectors, base, rows, params)
    }

    /// Like [`HnswIndex::build`], keeping a reference to `items` instead of a copy.
    pub fn build_shared(
        items: SharedItems,
        rows: Range<usize>,
        params: &HnswParams,
    ) -> Result<Self, HnswError> {
        if items.cols == 0 {
            return Err(HnswError::ZeroDim);
        }
        check_rows(&items.data, items.cols, items.rows(), &rows)?;
        Self::build_with(items, 0, rows, params)
    }

    fn build_with(
        items: SharedItems,
        base: usize,
        rows: Range<usize>,
        params: &HnswParams,
    ) -> Result<Self, HnswError> {
        check_params(params)?;
        if rows.len() > MAX_NODES {
            return Err(HnswError::Param {
                name: "rows",
                message: format!("an index holds at most {MAX_NODES} items"),
            });
        }
        let dim = items.cols;
        let first = (rows.start - base) * dim;
        let vectors = &items.data[first..first + rows.len() * dim];
        let flat = build::build(
            vectors,
            dim,
            rows.len(),
            BuildParams {
                m: params.connectivity,
                ef_construction: params.expansion_add,
                seed: SEED,
            },
        );
        Ok(Self {
            codes: Codes::new(vectors, dim),
            flat,
            connectivity: params.connectivity,
            expansion_add: params.expansion_add,
            vectors: items.data,
            base,
            start: rows.start,
            len: rows.len(),
            dim,
            expansion_search: AtomicUsize::new(params.expansion_search),
            subgraphs: RwLock::default(),
        })
    }

    /// The build settings (and default breadth) of this index.
    fn params(&self) -> HnswParams {
        HnswParams {
            connectivity: self.connectivity,
            expansion_add: self.expansion_add,
            expansion_search: self.expansion_search(),
        }
    }

    /// Adds a graph over `rows` (indexed rows, any order, repeats ignored; typically the items
    /// holding one attribute value), built with this index's settings, which filtered
    /// searches whose allowed rows all lie in `rows` may walk instead of the whole graph (see
    /// [`policy::plan`]). Returns the number of such graphs. Inserts run on rayon's pool.
    pub fn add_subgraph(&self, rows: &[usize]) -> Result<usize, HnswError> {
        let range = self.rows();
        if let Some(&bad) = rows.iter().find(|r| !range.contains(r)) {
            return Err(HnswError::Param {
                name: "rows",
                message: format!(
                    "row {bad} is not one of the indexed rows {}..{}",
                    range.start, range.end
                ),
            });
        }
        let mut rows: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        rows.sort_unstable();
        rows.dedup();
        if rows.is_empty() {
            return Err(HnswError::Param {
                name: "rows",
                message: "a value graph needs at least one row".into(),
            });
        }
        let graph = Subgraph::build(self.table(), rows, &self.params());
        Ok(self.insert_subgraph(graph))
    }

    fn insert_subgraph(&self, graph: Subgraph) -> usize {
        let mut graphs = self.subgraphs.write().unwrap_or_else(|e| e.into_inner());
        let at = graphs.partition_point(|g| g.len() <= graph.len());
        graphs.insert(at, Arc::new(graph));
        graphs.len()
    }

    /// The rows of each graph over a subset of the rows, smallest first.
    pub fn subgraph_rows(&self) -> Vec<Vec<u32>> {
        self.subgraphs().iter().map(|g| g.rows().to_vec()).collect()
    }

    fn subgraphs(&self) -> Vec<Arc<Subgraph>> {
        self.subgraphs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The smallest subgraph holding every row of `set`.
    fn covering(&self, set: &RowSet) -> Option<Arc<Subgraph>> {
        let graphs = self.subgraphs.read().unwrap_or_else(|e| e.into_inner());
        graphs.iter().find(|g| g.covers(set)).cloned()
    }

    /// Makes the default breadth the smallest of [`policy::BREADTHS`] at which searches for
    /// `queries` (rows of a matrix: representative queries, such as user vectors) find at
    /// least `target` of their exact top `k` on average (the last breadth if none does), and
    /// returns it with the recall measured there. Representative queries matter: an indexed
    /// row's own vector is an easy query, because the graph's edges from that row are close
    /// to its answer. Each value graph ([`HnswIndex::add_subgraph`]) gets its own breadth,
    /// measured the same way on its rows. Queries run in parallel on rayon's pool.
    pub fn calibrate(
        &self,
        queries: Matrix<'_>,
        k: usize,
        target: f64,
    ) -> Result<(usize, f64), HnswError> {
        let bad = |name, message: String| Err(HnswError::Param { name, message });
        if queries.cols() != self.dim {
            return Err(HnswError::QueryDim {
                expected: self.dim,
                got: queries.cols(),
            });
        }
        if queries.rows() == 0 {
            return bad("queries", "need at least one query".into());
        }
        if let Some(bad_row) =
            (0..queries.rows()).find(|&r| !queries.row(r).iter().all(|v| v.is_finite()))
        {
            return bad(
                "queries",
                format!("query {bad_row} holds a NaN or an infinity"),
            );
        }
        if k == 0 {
            return bad("k", "must be >= 1, got 0".into());
        }
        if !(target > 0.0 && target <= 1.0) {
            return bad("target", format!("must lie in (0, 1], got {target}"));
        }
        let measured = smallest_breadth(
            queries,
            (k, target, self.len),
            |q| self.exact(q, k, &[]),
            |q, ef| self.walk(q, k, ef, None, false),
        );
        self.expansion_search
            .store(measured.0, AtomicOrdering::Relaxed);
        // Each value graph is a catalogue of its own: its breadth is measured on its rows.
        for graph in self.subgraphs() {
            let rows = RowSet::Sorted(graph.rows().to_vec());
            let (ef, _) = smallest_breadth(
                queries,
                (k, target, graph.len()),
                |q| exact::top_k_among(self.matrix(), self.start, q, k, &rows).unwrap_or_default(),
                |q, ef| graph.walk(self.table(), q, k, ef, None),
            );
            graph.set_expansion_search(ef);
        }
        Ok(measured)
    }

    /// The item vectors this index scores, as a value graph's walk reads them.
    pub(crate) fn table(&self) -> Table<'_> {
        Table {
            vectors: &self.vectors,
            base: self.base,
            dim: self.dim,
        }
    }

    /// Number of indexed rows.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The items' dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The indexed rows of the item matrix.
    pub fn rows(&self) -> Range<usize> {
        self.start..self.start + self.len
    }

    /// The default `ef` (used when a search passes `ef = 0`).
    pub fn expansion_search(&self) -> usize {
        self.expansion_search.load(AtomicOrdering::Relaxed)
    }

    /// The indexed rows as a matrix whose row `i` is item row `start + i`.
    fn matrix(&self) -> Matrix<'_> {
        // The shape holds by construction (`check_rows` saw these rows).
        Matrix::new(self.indexed_vectors(), self.len, self.dim)
            .unwrap_or_else(|_| unreachable!("vectors hold len x dim values"))
    }

    /// The indexed rows' vectors, row `start + i` at `i * dim`.
    fn indexed_vectors(&self) -> &[f32] {
        let first = (self.start - self.base) * self.dim;
        &self.vectors[first..first + self.len * self.dim]
    }

    fn vector(&self, row: usize) -> &[f32] {
        let i = row - self.base;
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }

    /// The (about) `k` best indexed rows by inner product with `query`, best first, among the
    /// rows in `allowed` (if given); `ef` is the search breadth (0: the index default; it is
    /// raised to `k`). Scores are exact inner products, ordered as [`exact::top_k`] orders
    /// them. Returns exactly `min(k, allowed indexed rows)` hits, never a row outside
    /// `allowed`. A filtered search runs as [`policy::plan`] says.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        allowed: Option<&RowSet>,
    ) -> Result<Vec<Hit>, HnswError> {
        self.search_as(query, k, ef, allowed, None)
    }

    /// [`HnswIndex::search`] with the planner's choice overridden by `plan` (for measuring
    /// the plans against each other; every plan keeps the guarantees).
    pub fn search_as(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        allowed: Option<&RowSet>,
        plan: Option<Plan>,
    ) -> Result<Vec<Hit>, HnswError> {
        self.check_query(query)?;
        if k == 0 || self.len == 0 {
            return Ok(Vec::new());
        }
        // A value graph walks with its own default breadth unless one is asked for.
        let asked_ef = ef;
        // A breadth beyond the row count explores nothing more (and would only allocate).
        let ef = if ef == 0 { self.expansion_search() } else { ef }
            .max(k)
            .min(self.len);
        // The graph cannot rank a non-finite query, and cannot beat a scan when every row is
        // wanted.
        if k >= self.len || !query.iter().all(|v| v.is_finite()) {
            return Ok(match allowed {
                None => self.exact(query, k, &[]),
                Some(set) => self.gather(query, k, set),
            });
        }
        let Some(set) = allowed else {
            return Ok(self.walk(query, k, ef, None, false));
        };
        let covering = match plan {
            None | Some(Plan::Subgraph) => self.covering(set),
            Some(_) => None,
        };
        let within = covering.as_ref().map(|g| g.len());
        let plan = plan.unwrap_or_else(|| policy::plan(set.len(), self.len, k, ef, within));
        let (ef, two_hop) = match plan {
            Plan::Scan => return Ok(self.gather(query, k, set)),
            Plan::Subgraph => {
                let found = covering.and_then(|g| g.search(self.table(), query, k, asked_ef, set));
                // Short (or no graph covers the set): the scan is right in every case.
                return Ok(found.unwrap_or_else(|| self.gather(query, k, set)));
            }
            Plan::Walk { ef, two_hop } => (ef, two_hop),
        };
        let bits = match set {
            RowSet::Bits { words, .. } => std::borrow::Cow::Borrowed(words),
            RowSet::Sorted(_) => std::borrow::Cow::Owned(set.to_bits(self.start + self.len)),
        };
        let start = self.start;
        let keep = |node: u32| {
            let row = start + node as usize;
            bits.get(row / 64).is_some_and(|w| w >> (row % 64) & 1 == 1)
        };
        let hits = self.walk(query, k, ef.max(k).min(self.len), Some(&keep), two_hop);
        if hits.len() < k {
            // Short: either fewer than k rows are allowed, or the walk missed some. The scan
            // tells the two apart and returns the right answer in both cases.
            return Ok(self.gather(query, k, set));
        }
        Ok(hits)
    }

    fn check_query(&self, query: &[f32]) -> Result<(), HnswError> {
        if query.len() != self.dim {
            return Err(HnswError::QueryDim {
                expected: self.dim,
                got: query.len(),
            });
        }
        Ok(())
    }

    /// [`HnswIndex::search`] over every indexed row but those in `excluded` (any order;
    /// rows outside the index are ignored): for few exclusions, such as a user's history.
    pub fn search_excluding(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        excluded: &[usize],
    ) -> Result<Vec<Hit>, HnswError> {
        let mut excluded: Vec<usize> = excluded
            .iter()
            .filter(|&&r| self.rows().contains(&r))
            .map(|&r| r - self.start)
            .collect();
        excluded.sort_unstable();
        excluded.dedup();
        if excluded.is_empty() {
            return self.search(query, k, ef, None);
        }
        let keep = |node: u32| excluded.binary_search(&(node as usize)).is_err();
        let ef = if ef == 0 { self.expansion_search() } else { ef };
        let walked = k < self.len - excluded.len()
            && query.len() == self.dim
            && query.iter().all(|v| v.is_finite());
        if walked {
            let start = self.start;
            let hits = walk_dropping(
                |k, ef, keep| self.walk(query, k, ef, keep, false),
                (k, ef, self.len),
                &keep,
                |row| keep((row - start) as u32),
                excluded.len(),
            );
            if hits.len() == k {
                return Ok(hits);
            }
        }
        self.check_query(query)?;
        Ok(self.exact(query, k, &excluded))
    }

    /// Exact top-k over the indexed rows but `excluded` (indexed-row offsets, sorted).
    fn exact(&self, query: &[f32], k: usize, excluded: &[usize]) -> Vec<Hit> {
        // The query length was checked against `dim`, the only error `top_k_where` reports.
        let hits =
            exact::top_k_where(self.matrix(), query, k, excluded, None, true).unwrap_or_default();
        hits.into_iter()
            .map(|h| Hit {
                row: h.row + self.start,
                score: h.score,
            })
            .collect()
    }

    /// Exact top-k over the indexed rows in `set`, scoring just those.
    fn gather(&self, query: &[f32], k: usize, set: &RowSet) -> Vec<Hit> {
        if query.iter().all(|v| v.is_finite()) {
            return gather::top_k_among(self.matrix(), &self.codes, self.start, query, k, set);
        }
        // The query length was checked against `dim`, the only error `top_k_among` reports.
        exact::top_k_among(self.matrix(), self.start, query, k, set).unwrap_or_default()
    }

    /// Walks the graph with breadth `ef` and keeps the best `k` rows `keep` allows.
    fn walk(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        keep: Option<&dyn Fn(u32) -> bool>,
        two_hop: bool,
    ) -> Vec<Hit> {
        let start = self.start;
        let vectors = self.indexed_vectors();
        let found = self.flat.search(&Walk {
            vectors,
            rows: None,
            dim: self.dim,
            query,
            ef,
            allowed: keep,
            two_hop,
            codes: Some(&self.codes),
            rescore: rescored(k),
        });
        best_hits(found, k, |node| start + node as usize)
    }

    /// The graph (for tests of its shape).
    #[cfg(test)]
    pub(crate) fn graph(&self) -> &FlatGraph {
        &self.flat
    }

    /// Writes the index to `path` in [`crate::index::file`]'s format (the graph, its
    /// settings and sampled item vectors; the items themselves stay with the caller). The file
    /// is written beside `path` and renamed into place, so a failed save leaves the old file
    /// intact and a reader never sees half a file.
    pub fn save(&self, path: &Path) -> Result<(), HnswError> {
        let file_err = |message: String| HnswError::File {
            path: path.to_owned(),
            message,
        };
        let graphs = self.subgraphs();
        let parts: Vec<(&[u32], &FlatGraph, usize)> = graphs
            .iter()
            .map(|g| (g.rows(), g.graph(), g.expansion_search()))
            .collect();
        let bytes = file::encode(
            &self.flat,
            self.start,
            self.dim,
            self.connectivity,
            self.expansion_add,
            self.expansion_search(),
            |row| self.vector(row),
            &parts,
        );
        let partial = partial_path(path);
        let written = std::fs::write(&partial, bytes)
            .map_err(|e| format!("cannot write: {e}"))
            .and_then(|()| {
                std::fs::rename(&partial, path).map_err(|e| format!("cannot rename: {e}"))
            });
        if written.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        written.map_err(file_err)
    }

    /// Opens an index written by [`HnswIndex::save`] for the same `items` (copied). The file
    /// must be intact (its checksum), of the items' dimension, over a range of rows of `items`,
    /// and its sampled vectors must equal those rows of `items` (a catalogue that changed
    /// since the index was saved is refused). The default `ef` is the one the file keeps.
    pub fn load(path: &Path, items: Matrix<'_>) -> Result<Self, HnswError> {
        if items.cols() == 0 {
            return Err(HnswError::ZeroDim);
        }
        let copy = SharedItems {
            data: Arc::new(items.as_slice().to_vec()),
            cols: items.cols(),
        };
        Self::load_with(path, copy, true)
    }

    /// Like [`HnswIndex::load`], keeping a reference to `items` instead of a copy.
    /// Without `value_graphs`, the value graphs the file holds are skipped (not built).
    pub fn load_shared(
        path: &Path,
        items: SharedItems,
        value_graphs: bool,
    ) -> Result<Self, HnswError> {
        if items.cols == 0 {
            return Err(HnswError::ZeroDim);
        }
        Self::load_with(path, items, value_graphs)
    }

    fn load_with(path: &Path, items: SharedItems, value_graphs: bool) -> Result<Self, HnswError> {
        let file_err = |message: String| HnswError::File {
            path: path.to_owned(),
            message,
        };
        if !path.is_file() {
            return Err(file_err("no such file".into()));
        }
        let bytes = std::fs::read(path).map_err(|e| file_err(format!("cannot read: {e}")))?;
        let saved = file::decode(&bytes).map_err(file_err)?;
        drop(bytes);
        let dim = items.cols;
        if saved.dim != dim {
            return Err(file_err(format!(
                "index has dimension {} but items have dimension {dim}",
                saved.dim
            )));
        }
        let rows = items.rows();
        let (start, len) = (saved.start, saved.graph.len());
        if start + len > rows {
            return Err(file_err(format!(
                "index holds {len} rows from row {start}, which items ({rows} rows) do not match"
            )));
        }
        check_rows(&items.data, dim, rows, &(start..start + len))?;
        let params = HnswParams {
            connectivity: saved.connectivity,
            expansion_add: saved.expansion_add,
            expansion_search: saved.expansion_search.unwrap_or(DEFAULT_EXPANSION_SEARCH),
        };
        check_params(&params).map_err(|e| file_err(e.to_string()))?;
        let first = start * dim;
        let index = Self {
            codes: Codes::new(&items.data[first..first + len * dim], dim),
            flat: saved.graph,
            connectivity: saved.connectivity,
            expansion_add: saved.expansion_add,
            vectors: items.data,
            base: 0,
            start,
            len,
            dim,
            expansion_search: AtomicUsize::new(params.expansion_search),
            subgraphs: RwLock::default(),
        };
        for (row, stored) in &saved.samples {
            if stored.as_slice() != index.vector(*row) {
                return Err(file_err(format!(
                    "stored vector of row {row} differs from the items: the index was built \
                     for another catalogue"
                )));
            }
        }
        let subgraphs = if value_graphs {
            saved.subgraphs
        } else {
            Vec::new()
        };
        for saved in subgraphs {
            if saved
                .rows
                .iter()
                .any(|&r| !index.rows().contains(&(r as usize)))
            {
                return Err(file_err(
                    "a value graph holds rows outside the index".into(),
                ));
            }
            let breadth = HnswParams {
                expansion_search: saved.expansion_search,
                ..params.clone()
            };
            check_params(&breadth).map_err(|e| file_err(e.to_string()))?;
            let graph = Subgraph::from_saved(
                index.table(),
                saved.rows,
                saved.graph,
                saved.expansion_search,
            )
            .map_err(file_err)?;
            index.insert_subgraph(graph);
        }
        Ok(index)
    }
}

impl fmt::Debug for HnswIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HnswIndex")
            .field("rows", &self.rows())
            .field("dim", &self.dim)
            .field("expansion_search", &self.expansion_search())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    /// xorshift64* with Box-Muller, so tests need no extra crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn uniform(&mut self) -> f32 {
            ((self.next() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
        }
        fn gauss(&mut self) -> f32 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        }
        fn gauss_vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.gauss()).collect()
        }
    }

    /// `n × d` gaussian rows with log-normal norms (inner product differs from cosine).
    fn catalogue(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng(seed);
        let mut out = Vec::with_capacity(n * d);
        for _ in 0..n {
            let scale = (0.5 * rng.gauss()).exp() / (d as f32).sqrt();
            out.extend((0..d).map(|_| rng.gauss() * scale));
        }
        out
    }

    fn rows_of(hits: &[Hit]) -> Vec<usize> {
        hits.iter().map(|h| h.row).collect()
    }

    fn recall(found: &[Vec<Hit>], truth: &[Vec<Hit>]) -> f64 {
        let (mut hit, mut total) = (0, 0);
        for (f, t) in found.iter().zip(truth) {
            let t = rows_of(t);
            hit += f.iter().filter(|h| t.contains(&h.row)).count();
            total += t.len();
        }
        hit as f64 / total.max(1) as f64
    }

    fn mask_filter(mask: &[bool]) -> impl Fn(usize) -> bool + Sync + '_ {
        move |row| mask[row]
    }

    #[test]
    fn recall_at_10_at_ef_128_on_20k_items() {
        let (n, d) = (20_000, 32);
        let data = catalogue(n, d, 1);
        let items = Matrix::new(&data, n, d).unwrap();
        let params = HnswParams {
            expansion_search: 128,
            ..HnswParams::default()
        };
        let index = HnswIndex::build(items, 0..n, &params).unwrap();
        assert_eq!((index.len(), index.dim()), (n, d));
        let mut rng = Rng(2);
        let queries: Vec<Vec<f32>> = (0..100).map(|_| rng.gauss_vec(d)).collect();
        let found: Vec<Vec<Hit>> = queries
            .iter()
            .map(|q| index.search(q, 10, 0, None).unwrap())
            .collect();
        let truth: Vec<Vec<Hit>> = queries
            .iter()
            .map(|q| exact::top_k(items, q, 10, &[]).unwrap())
            .collect();
        let r = recall(&found, &truth);
        println!("recall@10 at ef 128: {r:.4}");
        assert!(r >= 0.98, "recall@10 = {r}");
        for (f, q) in found.iter().zip(&queries) {
            assert_eq!(f.len(), 10);
            for h in f {
                assert_eq!(h.score, exact::dot(&data[h.row * d..(h.row + 1) * d], q));
            }
            assert!(f
                .windows(2)
                .all(|w| rank_order(&w[0], &w[1]) == Ordering::Less));
        }
    }

    #[test]
    fn a_walk_as_broad_as_the_catalogue_finds_the_exact_top_k() {
        // Every node the walk can reach is scored; an inner-product graph may leave a rare
        // node unreachable (a small-norm item nobody keeps as a neighbour), so allow 1% misses.
        let (n, d) = (3_000, 16);
        let data = catalogue(n, d, 5);
        let items = Matrix::new(&data, n, d).unwrap();
        let index = HnswIndex::build(items, 0..n, &HnswParams::default()).unwrap();
        let mut rng = Rng(6);
        let odd = |row: usize| row % 2 == 1;
        let odd_rows = RowSet::from_fn(n, odd);
        let walk = Plan::Walk {
            ef: n,
            two_hop: false,
        };
        let (mut found, mut truth) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            let q = rng.gauss_vec(d);
            found.push(index.search(&q, 10, n, None).unwrap());
            truth.push(exact::top_k(items, &q, 10, &[]).unwrap());
            found.push(
                index
                    .search_as(&q, 10, n, Some(&odd_rows), Some(walk))
                    .unwrap(),
            );
            truth.push(exact::top_k_where(items, &q, 10, &[], Some(&odd as _), true).unwrap());
        }
        let r = recall(&found, &truth);
        assert!(r >= 0.99, "recall@10 = {r}");
        for hits in found.iter().skip(1).step_by(2) {
            assert!(hits.iter().all(|h| odd(h.row)));
        }
    }

    #[test]
    fn rank_order_is_the_exact_scan_order() {
        // One-dimensional rows scored against [1.0]: each score is the row's value, exactly.
        let values = [
            1.0,
            f32::NAN,
            -0.0,
            2.0,
            0.0,
            f32::NEG_INFINITY,
            2.0,
            f32::INFINITY,
            -1.0,
            f32::NAN,
            0.0,
        ];
        let items = Matrix::new(&values, values.len(), 1).unwrap();
        let expected = exact::top_k(items, &[1.0], values.len(), &[]).unwrap();
        let mut hits: Vec<Hit> = values
            .iter()
            .enumerate()
            .rev()
            .map(|(row, &score)| Hit { row, score })
            .collect();
        hits.sort_unstable_by(rank_order);
        assert_eq!(rows_of(&hits), rows_of(&expected));
    }

    #[test]
    fn filters_never_leak_and_never_come_back_short_under_any_plan() {
        let (n, d) = (5_000, 16);
        let data = catalogue(n, d, 3);
        let items = Matrix::new(&data, n, d).unwrap();
        let index = HnswIndex::build(items, 0..n, &HnswParams::default()).unwrap();
        let mut rng = Rng(4);
        let plans = [
            None,
            Some(Plan::Scan),
            Some(Plan::Walk {
                ef: 16,
                two_hop: false,
            }),
            Some(Plan::Walk {
                ef: 16,
                two_hop: true,
            }),
        ];
        for per_mille in [0u64, 1, 10, 100, 300, 500, 1000] {
            let mask: Vec<bool> = (0..n).map(|_| rng.next() % 1000 < per_mille).collect();
            let allowed = mask.iter().filter(|&&m| m).count();
            let set = RowSet::from_mask(&mask);
            let keep = mask_filter(&mask);
            for k in [1, 10, 64] {
                for _ in 0..10 {
                    let q = rng.gauss_vec(d);
                    let exact = exact::top_k_where(items, &q, k, &[], Some(&keep), false).unwrap();
                    for plan in plans {
                        let hits = index.search_as(&q, k, 0, Some(&set), plan).unwrap();
                        let case = format!("{per_mille}‰, k = {k}, {plan:?}");
                        assert_eq!(hits.len(), k.min(allowed), "{case}");
                        assert!(hits.iter().all(|h| mask[h.row]), "{case} leaked");
                        for h in &hits {
                            assert_eq!(h.score, exact::dot(&data[h.row * d..][..d], &q));
                        }
                        if plan == Some(Plan::Scan) || plan.is_none() && allowed <= 20_000 {
                            // The scan is the exact filtered top-k, ties and all.
                            assert_eq!(hits, exact, "{case}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_history_excluded_keeps_the_recall_of_a_plain_search() {
        // 50 excluded rows, half of them among the query's best: the walk for k + 50 hits,
        // the excluded dropped, against the exact top-10 of the rest.
        let (n, d) = (20_000, 16);
        let data = catalogue(n, d, 40);
        let items = Matrix::new(&data, n, d).unwrap();
        let index = HnswIndex::build(items, 0..n, &HnswParams::default()).unwrap();
        let mut rng = Rng(41);
        let (mut found, mut truth) = (Vec::new(), Vec::new());
        for _ in 0..100 {
            let q = rng.gauss_vec(d);
            let best = index.exact(&q, 25, &[]);
            let mut history: Vec<usize> = best.iter().map(|h| h.row).collect();
            history.extend((0..25).map(|_| (rng.next() % n as u64) as usize));
            let hits = index.search_excluding(&q, 10, 0, &history).unwrap();
            assert!(hits.len() == 10 && hits.iter().all(|h| !history.contains(&h.row)));
            history.sort_unstable();
            history.dedup();
            truth.push(index.exact(&q, 10, &history));
            found.push(hits);
        }
        let r = recall(&found, &truth);
        assert!(r >= 0.95, "recall with a history excluded: {r}");
    }

    #[test]
    fn exclusions_are_skipped_and_never_shorten_the_answer() {
        let (n, d) = (3_000, 8);
        let data = catalogue(n, d, 12);
        let items = Matrix::new(&data, n, d).unwrap();
        let index = HnswIndex::build(items, 1..n, &HnswParams::default()).unwrap();
        let mut rng = Rng(13);
        let q = rng.gauss_vec(d);
        let best = index.search(&q, 20, n, None).unwrap();
        // The ten best (and out-of-range rows 0 and n + 5) excluded: the next ten come back.
        let mut excluded: Vec<usize> = best[..10].iter().map(|h| h.row).collect();
        excluded.extend([0, n + 5, excluded[0]]);
        let hits = index.search_excluding(&q, 10, n, &excluded).unwrap();
        assert_eq!(hits, best[10..]);
        let all_but_three: Vec<usize> = (3..n).collect();
        let hits = index.search_excluding(&q, 10, 0, &all_but_three).unwrap();
        let mut rows = rows_of(&hits);
        rows.sort_unstable();
        assert_eq!(rows, [1, 2]);
    }

    #[test]
    fn indexes_a_row_range_and_reports_rows_of_items() {
        let (n, d) = (1_000, 8);
        let mut data = catalogue(n, d, 5);
        data[..d].fill(100.0); // row 0: padding that would win every query
        let items = Matrix::new(&data, n, d).unwrap();
        let index = HnswIndex::build(items, 1..n, &HnswParams::default()).unwrap();
        assert_eq!((index.len(), index.rows()), (n - 1, 1..n));
        let q = vec![1.0; d];
        let all = index.search(&q, n, 0, None).unwrap();
        assert_eq!(all.len(), n - 1);
        assert!(all.iter().all(|h| h.row >= 1));
        let exact = exact::top_k(items, &q, n, &[0]).unwrap();
        assert_eq!(all, exact);
        let hits = index.search(&q, 10, 0, None).unwrap();
        assert!(hits.iter().all(|h| h.row >= 1));
        // Row 0 is allowed but not indexed: never returned.
        let even = RowSet::from_fn(n, |row| row.is_multiple_of(2));
        let hits = index.search(&q, 10, 0, Some(&even)).unwrap();
        assert!(hits.iter().all(|h| h.row >= 2 && h.row.is_multiple_of(2)));
    }

    #[test]
    fn bad_input_is_an_error() {
        let data = catalogue(100, 4, 6);
        let items = Matrix::new(&data, 100, 4).unwrap();
        let params = HnswParams::default();
        let index = HnswIndex::build(items, 0..100, &params).unwrap();
        assert_eq!(
            index.search(&[1.0; 5], 3, 0, None),
            Err(HnswError::QueryDim {
                expected: 4,
                got: 5
            })
        );
        assert_eq!(index.search(&[1.0; 4], 0, 0, None), Ok(Vec::new()));
        // A huge ef is clamped to the row count.
        assert_eq!(
            index.search(&[1.0; 4], 3, usize::MAX, None).unwrap().len(),
            3
        );
        assert!(matches!(
            HnswIndex::build(items, 50..101, &params),
            Err(HnswError::RowRange { .. })
        ));
        let empty = Matrix::new(&[], 3, 0).unwrap();
        assert!(matches!(
            HnswIndex::build(empty, 0..3, &params),
            Err(HnswError::ZeroDim)
        ));
        for bad in [
            HnswParams {
                connectivity: 1,
                ..HnswParams::default()
            },
            HnswParams {
                connectivity: MAX_CONNECTIVITY + 1,
                ..HnswParams::default()
            },
            HnswParams {
                expansion_add: 0,
                ..HnswParams::default()
            },
            HnswParams {
                expansion_search: 0,
                ..HnswParams::default()
            },
        ] {
            assert!(matches!(
                HnswIndex::build(items, 0..100, &bad),
                Err(HnswError::Param { .. })
            ));
        }
        let mut nan = data.clone();
        nan[4 * 37 + 2] = f32::NAN;
        let with_nan = Matrix::new(&nan, 100, 4).unwrap();
        assert_eq!(
            HnswIndex::build(with_nan, 0..100, &params).unwrap_err(),
            HnswError::NonFinite { row: 37 }
        );
        // A non-finite query is answered by the exact scan.
        let q = [f32::NAN, 1.0, 0.0, 0.0];
        assert_eq!(index.search(&q, 5, 0, None).unwrap().len(), 5);
        // An empty range is a valid, empty index.
        let none = HnswIndex::build(items, 7..7, &params).unwrap();
        assert!(none.is_empty());
        assert_eq!(none.search(&[1.0; 4], 3, 0, None), Ok(Vec::new()));
    }

    #[test]
    fn many_threads_get_the_serial_results() {
        let (n, d) = (2_000, 16);
        let data = catalogue(n, d, 7);
        let items = Matrix::new(&data, n, d).unwrap();
        let index = HnswIndex::build(items, 0..n, &HnswParams::default()).unwrap();
        let mut rng = Rng(8);
        let queries: Vec<Vec<f32>> = (0..40).map(|_| rng.gauss_vec(d)).collect();
        let odd = RowSet::from_fn(n, |row| !row.is_multiple_of(3));
        let serial: Vec<Vec<Hit>> = queries
            .iter()
            .enumerate()
            .map(|(i, q)| {
                index
                    .search(q, 10, 0, (i % 2 == 1).then_some(&odd))
                    .unwrap()
            })
            .collect();
        // Many threads at once, more than the cores.
        std::thread::scope(|s| {
            for t in 0..80 {
                let (index, queries, serial, odd) = (&index, &queries, &serial, &odd);
                s.spawn(move || {
                    for j in 0..queries.len() {
                        let i = (j + t) % queries.len();
                        let keep = (i % 2 == 1).then_some(odd);
                        assert_eq!(index.search(&queries[i], 10, 0, keep).unwrap(), serial[i]);
                    }
                });
            }
        });
    }

    #[test]
    fn calibration_picks_the_smallest_breadth_that_reaches_the_target_recall() {
        let (n, d) = (20_000, 32);
        let data = catalogue(n, d, 21);
        let items = Matrix::new(&data, n, d).unwrap();
        let index = HnswIndex::build(items, 0..n, &HnswParams::default()).unwrap();
        assert_eq!(index.expansion_search(), DEFAULT_EXPANSION_SEARCH);
        let mut rng = Rng(23);
        let sample: Vec<f32> = (0..200).flat_map(|_| rng.gauss_vec(d)).collect();
        let queries = Matrix::new(&sample, 200, d).unwrap();
        let (ef, measured) = index.calibrate(queries, 10, 0.95).unwrap();
        assert_eq!(index.expansion_search(), ef);
        assert!(measured >= 0.95, "{ef}: {measured}");
        let at = policy::BREADTHS.iter().position(|&b| b == ef).unwrap();
        assert!(
            at > 0,
            "the smallest breadth already reaches the target: test too easy"
        );
        // Fresh queries of the same kind: the default reaches about the target there too,
        // and the breadth below it falls short of it.
        let fresh: Vec<Vec<f32>> = (0..300).map(|_| rng.gauss_vec(d)).collect();
        let measure = |ef: usize| {
            let found: Vec<Vec<Hit>> = fresh
                .iter()
                .map(|q| index.search(q, 10, ef, None).unwrap())
                .collect();
            let truth: Vec<Vec<Hit>> = fresh
                .iter()
                .map(|q| exact::top_k(items, q, 10, &[]).unwrap())
                .collect();
            recall(&found, &truth)
        };
        let (default, below) = (measure(0), measure(policy::BREADTHS[at - 1]));
        println!(
            "calibrated ef {ef}: recall {default:.4} (calibration {measured:.4}), below {below:.4}"
        );
        assert!(default >= 0.93, "{default}");
        assert!(below < default, "{below} >= {default}");
        // The calibrated breadth survives a save and a load.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.hnsw");
        index.save(&path).unwrap();
        assert_eq!(
            HnswIndex::load(&path, items).unwrap().expansion_search(),
            ef
        );
        // An unreachable target ends at the broadest breadth.
        let (last, _) = index.calibrate(queries, 10, 1.0).unwrap();
        assert!(last >= ef);
        // Bad calls are errors, and leave the breadth as it was.
        let before = index.expansion_search();
        let narrow = Matrix::new(&sample[..200 * 4], 200, 4).unwrap();
        assert!(matches!(
            index.calibrate(narrow, 10, 0.9),
            Err(HnswError::QueryDim { .. })
        ));
        assert!(index.calibrate(queries, 0, 0.9).is_err());
        assert!(index.calibrate(queries, 10, 0.0).is_err());
        assert!(index.calibrate(queries, 10, f64::NAN).is_err());
        let none = Matrix::new(&[], 0, d).unwrap();
        assert!(index.calibrate(none, 10, 0.9).is_err());
        let mut nan = sample.clone();
        nan[5] = f32::NAN;
        let with_nan = Matrix::new(&nan, 200, d).unwrap();
        assert!(index.calibrate(with_nan, 10, 0.9).is_err());
        assert_eq!(index.expansion_search(), before);
    }

    #[test]
    fn a_file_of_the_first_format_loads_with_its_fixed_breadth() {
        let (n, d) = (1_000, 8);
        let data = catalogue(n, d, 22);
        let items = Matrix::new(&data, n, d).unwrap();
        let index = HnswIndex::build(items, 0..n, &HnswParams::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.hnsw");
        index.save(&path).unwrap();
        // The same file as the first format wrote it: its tag, no expansion_search field.
        let saved = std::fs::read(&path).unwrap();
        // Without the digest and the (empty) value graph section's count.
        let body = &saved[..saved.len() - 32 - 8];
        let mut old = b"DPRHNSW1".to_vec();
        old.extend_from_slice(&body[8..32]);
        old.extend_from_slice(&body[40..]);
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(&old);
        old.extend_from_slice(&digest);
        std::fs::write(&path, &old).unwrap();
        let back = HnswIndex::load(&path, items).unwrap();
        assert_eq!(back.expansion_search(), DEFAULT_EXPANSION_SEARCH);
        assert_eq!(back.graph().to_bytes(0), index.graph().to_bytes(0));
    }

    /// A 3,000-row catalogue indexed from row 1 with value graphs over rows `r % 5 == 0`
    /// (600 rows) and `r % 2 == 0` (1,500 rows).
    fn with_value_graphs() -> (Vec<f32>, usize, HnswIndex) {
        let (n, d) = (3_000, 16);
        let data = catalogue(n, d, 31);
        let items = Matrix::new(&data, n, d).unwrap();
        let index = HnswIndex::build(items, 1..n, &HnswParams::default()).unwrap();
        let fifth: Vec<usize> = (1..n).filter(|r| r % 5 == 0).collect();
        let even: Vec<usize> = (1..n).rev().filter(|r| r % 2 == 0).collect();
        assert_eq!(index.add_subgraph(&even).unwrap(), 1);
        assert_eq!(index.add_subgraph(&fifth).unwrap(), 2);
        (data, d, index)
    }

    #[test]
    fn a_value_graph_answers_filters_inside_it_with_allowed_rows_only() {
        let (data, d, index) = with_value_graphs();
        let n = data.len() / d;
        let items = Matrix::new(&data, n, d).unwrap();
        let sizes: Vec<usize> = index.subgraph_rows().iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![599, 1_499]);
        let mut rng = Rng(32);
        // Even rows but a few (a user's history), then even rows but every third: both lie
        // inside the even graph and not inside the fifths'.
        let history = [2usize, 40, 600, 2_998];
        let sets = [
            RowSet::from_fn(n, |r| r >= 1 && r % 2 == 0 && !history.contains(&r)),
            RowSet::from_fn(n, |r| r >= 1 && r % 2 == 0 && r % 3 != 0),
        ];
        for set in &sets {
            assert!(!index.subgraphs()[0].covers(set) && index.subgraphs()[1].covers(set));
            let (mut found, mut truth) = (Vec::new(), Vec::new());
            for _ in 0..40 {
                let q = rng.gauss_vec(d);
                let hits = index
                    .search_as(&q, 10, 64, Some(set), Some(Plan::Subgraph))
                    .unwrap();
                assert_eq!(hits.len(), 10);
                assert!(hits.iter().all(|h| set.contains(h.row)));
                // Scores are the exact scan's, bit for bit.
                for h in &hits {
                    assert_eq!(h.score, exact::dot(&q, items.row(h.row)));
                }
                truth.push(exact::top_k_among(items, 0, &q, 10, set).unwrap());
                found.push(hits);
            }
            let r = recall(&found, &truth);
            assert!(r >= 0.95, "value graph recall {r}");
        }
        // Calibration measures each value graph's own breadth on its rows.
        let queries: Vec<f32> = (0..50).flat_map(|_| rng.gauss_vec(d)).collect();
        let queries = Matrix::new(&queries, 50, d).unwrap();
        index.calibrate(queries, 10, 0.99).unwrap();
        for graph in index.subgraphs() {
            assert!(policy::BREADTHS.contains(&graph.expansion_search()));
        }
        let small = index.subgraphs()[0].expansion_search();
        assert!(small <= index.expansion_search(), "{small}");
        // A set reaching outside every value graph is answered by the main planner, and a
        // forced value-graph plan falls back to the exact scan.
        let odd = RowSet::from_fn(n, |r| r % 2 == 1);
        let q = rng.gauss_vec(d);
        let forced = index
            .search_as(&q, 10, 64, Some(&odd), Some(Plan::Subgraph))
            .unwrap();
        assert_eq!(forced, exact::top_k_among(items, 0, &q, 10, &odd).unwrap());
        // Fewer allowed rows than k: all of them.
        let three = RowSet::Sorted(vec![10, 20, 30]);
        let hits = index.search(&q, 10, 0, Some(&three)).unwrap();
        assert_eq!(rows_of(&hits).len(), 3);
    }

    #[test]
    fn value_graphs_refuse_rows_outside_the_index_and_survive_save_and_load() {
        let (data, d, index) = with_value_graphs();
        let n = data.len() / d;
        let items = Matrix::new(&data, n, d).unwrap();
        for bad in [vec![0usize], vec![n], vec![]] {
            let err = index.add_subgraph(&bad).unwrap_err();
            assert!(
                matches!(err, HnswError::Param { name: "rows", .. }),
                "{err}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.hnsw");
        index.save(&path).unwrap();
        let back = HnswIndex::load(&path, items).unwrap();
        assert_eq!(back.subgraph_rows(), index.subgraph_rows());
        let set = RowSet::from_fn(n, |r| r >= 1 && r % 2 == 0 && r != 8);
        let mut rng = Rng(33);
        for _ in 0..10 {
            let q = rng.gauss_vec(d);
            assert_eq!(
                back.search(&q, 10, 0, Some(&set)).unwrap(),
                index.search(&q, 10, 0, Some(&set)).unwrap()
            );
        }
    }

    #[test]
    fn save_and_load_round_trip() {
        let (n, d) = (2_000, 12);
        let data = catalogue(n, d, 10);
        let items = Matrix::new(&data, n, d).unwrap();
        let params = HnswParams {
            connectivity: 8,
            ..HnswParams::default()
        };
        let index = HnswIndex::build(items, 1..n, &params).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.hnsw");
        index.save(&path).unwrap();
        let back = HnswIndex::load(&path, items).unwrap();
        assert_eq!(back.graph().to_bytes(1), index.graph().to_bytes(1));
        assert_eq!((back.rows(), back.dim()), (1..n, d));
        assert_eq!(back.expansion_search(), index.expansion_search());
        let mut rng = Rng(11);
        for _ in 0..20 {
            let q = rng.gauss_vec(d);
            assert_eq!(
                back.search(&q, 10, 0, None).unwrap(),
                index.search(&q, 10, 0, None).unwrap()
            );
        }
        let mut other = data.clone();
        other.iter_mut().for_each(|v| *v *= 2.0);
        let changed = Matrix::new(&other, n, d).unwrap();
        let err = HnswIndex::load(&path, changed).unwrap_err();
        assert!(err.to_string().contains("items.hnsw"), "{err}");
        assert!(err.to_string().contains("another catalogue"), "{err}");
        let missing = dir.path().join("missing.hnsw");
        let err = HnswIndex::load(&missing, items).unwrap_err();
        assert!(err.to_string().contains("missing.hnsw"), "{err}");
        let narrow = Matrix::new(&data[..n * 6], n, 6).unwrap();
        assert!(HnswIndex::load(&path, narrow).is_err());
        let fewer = Matrix::new(&data[..(n / 2) * d], n / 2, d).unwrap();
        assert!(HnswIndex::load(&path, fewer).is_err());
    }

    #[test]
    fn a_damaged_or_foreign_file_is_refused_with_a_clear_error() {
        let (n, d) = (1_500, 8);
        let data = catalogue(n, d, 12);
        let items = Matrix::new(&data, n, d).unwrap();
        let index = HnswIndex::build(items, 1..n, &HnswParams::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.hnsw");
        index.save(&path).unwrap();
        let saved = std::fs::read(&path).unwrap();
        let refused = |contents: &[u8], why: &str| {
            std::fs::write(&path, contents).unwrap();
            let err = HnswIndex::load(&path, items).unwrap_err().to_string();
            assert!(err.contains("index.hnsw") && err.contains(why), "{err}");
        };
        // A flipped bit in a neighbour id, a truncated file, one byte more: the checksum.
        let mut flipped = saved.clone();
        flipped[saved.len() / 2] ^= 1;
        refused(&flipped, "checksum");
        refused(&saved[..saved.len() - 1], "checksum");
        let mut longer = saved.clone();
        longer.push(0);
        refused(&longer, "checksum");
        // Not an index file at all (an old usearch file, say): named as such.
        refused(b"usearch-index-bytes", "not a dpr HNSW index file");
        refused(b"", "not a dpr HNSW index file");
        // A sound file for other rows of the items.
        let other = HnswIndex::build(items, 0..n, &HnswParams::default()).unwrap();
        other.save(&path).unwrap();
        let fewer = Matrix::new(&data[..(n - 1) * d], n - 1, d).unwrap();
        let err = HnswIndex::load(&path, fewer).unwrap_err().to_string();
        assert!(err.contains("do not match"), "{err}");
        // The intact file loads and answers as the built index does.
        std::fs::write(&path, &saved).unwrap();
        let back = HnswIndex::load(&path, items).unwrap();
        let mut rng = Rng(13);
        for _ in 0..10 {
            let q = rng.gauss_vec(d);
            assert_eq!(
                back.search(&q, 10, 0, None).unwrap(),
                index.search(&q, 10, 0, None).unwrap()
            );
        }
    }
}

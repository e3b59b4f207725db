//! Value graphs: an HNSW graph over just the rows holding one attribute value (Qdrant's
//! payload-index subgraphs, as separate graphs). A filter whose allowed rows all lie inside
//! such a set walks this smaller graph, where the filter keeps most nodes, instead of the
//! whole graph, where it keeps few: on 1M items a filter keeping 10% is a 100k-node walk at
//! about the speed of an unfiltered 100k-node walk rather than a filtered 1M-node one
//! (`benches/results/retrieval-1m.md`). [`crate::index::policy::plan`] decides when.
//!
//! A value graph keeps its links and the int8 codes of its rows (node `i` is item row
//! `rows[i]`, rows ascending); its walk is the main graph's walk, and it rescores from the
//! parent index's own item table, so its scores equal the exact scan's bit for bit and
//! ascending rows keep the tie order. It holds no copy of the float vectors.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::index::build::{self, BuildParams};
use crate::index::codes::Codes;
use crate::index::graph::{FlatGraph, Walk};
use crate::index::hnsw::{self, HnswParams, Table};
use crate::index::rank::Hit;
use crate::index::rowset::RowSet;

/// A graph over a set of the parent index's rows.
pub struct Subgraph {
    /// The item rows, ascending and unique: node `i` is row `rows[i]`.
    rows: Vec<u32>,
    /// `rows` as a bitset over rows `0..=max row`.
    member: Vec<u64>,
    flat: FlatGraph,
    codes: Codes,
    /// The default breadth (the parent's until calibrated).
    expansion_search: AtomicUsize,
}

/// `rows` as a bitset long enough to hold the largest of them.
fn bitset(rows: &[u32]) -> Vec<u64> {
    let end = rows.last().map_or(0, |&r| r as usize + 1);
    let mut words = vec![0u64; end.div_ceil(64)];
    for &r in rows {
        words[r as usize / 64] |= 1 << (r % 64);
    }
    words
}

/// Item rows `rows` of `table`, copied into one block (only while building).
fn gathered(table: Table<'_>, rows: &[u32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * table.dim);
    for &r in rows {
        out.extend_from_slice(&table.vectors[(r as usize - table.base) * table.dim..][..table.dim]);
    }
    out
}

impl Subgraph {
    /// Builds the graph over item rows `rows` (ascending, unique, finite rows of `table`) with
    /// `params`, in parallel on rayon's pool.
    pub(crate) fn build(table: Table<'_>, rows: Vec<u32>, params: &HnswParams) -> Self {
        let data = gathered(table, &rows);
        let flat = build::build(
            &data,
            table.dim,
            rows.len(),
            BuildParams {
                m: params.connectivity,
                ef_construction: params.expansion_add,
                seed: hnsw::SEED,
            },
        );
        Self {
            codes: Codes::new(&data, table.dim),
            member: bitset(&rows),
            rows,
            flat,
            expansion_search: AtomicUsize::new(params.expansion_search),
        }
    }

    /// A saved graph over `rows` of `table` (see [`crate::index::file`]).
    pub(crate) fn from_saved(
        table: Table<'_>,
        rows: Vec<u32>,
        flat: FlatGraph,
        expansion_search: usize,
    ) -> Result<Self, String> {
        if flat.len() != rows.len() {
            return Err(format!(
                "a value graph holds {} nodes for {} rows",
                flat.len(),
                rows.len()
            ));
        }
        Ok(Self {
            codes: Codes::new(&gathered(table, &rows), table.dim),
            member: bitset(&rows),
            rows,
            flat,
            expansion_search: AtomicUsize::new(expansion_search),
        })
    }

    /// Number of rows (nodes).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The item rows, ascending.
    pub fn rows(&self) -> &[u32] {
        &self.rows
    }

    /// The graph (node `i` is row `rows()[i]`).
    pub(crate) fn graph(&self) -> &FlatGraph {
        &self.flat
    }

    /// The default breadth.
    pub fn expansion_search(&self) -> usize {
        self.expansion_search.load(Ordering::Relaxed)
    }

    pub(crate) fn set_expansion_search(&self, ef: usize) {
        self.expansion_search.store(ef, Ordering::Relaxed);
    }

    fn has(&self, row: usize) -> bool {
        self.member
            .get(row / 64)
            .is_some_and(|w| w >> (row % 64) & 1 == 1)
    }

    /// Whether every row of `set` is one of this graph's rows.
    pub fn covers(&self, set: &RowSet) -> bool {
        if set.len() > self.rows.len() {
            return false;
        }
        match set {
            RowSet::Sorted(rows) => rows.iter().all(|&r| self.has(r as usize)),
            RowSet::Bits { words, .. } => words
                .iter()
                .enumerate()
                .all(|(i, &w)| w == 0 || w & !self.member.get(i).copied().unwrap_or(0) == 0),
        }
    }

    /// The best `k` nodes `keep` allows by a walk of breadth `ef`, as item rows with exact
    /// scores (rescored from `table`), best first.
    pub(crate) fn walk(
        &self,
        table: Table<'_>,
        query: &[f32],
        k: usize,
        ef: usize,
        keep: Option<&dyn Fn(u32) -> bool>,
    ) -> Vec<Hit> {
        let found = self.flat.search(&Walk {
            vectors: table.vectors,
            rows: Some((&self.rows, table.base)),
            dim: table.dim,
            query,
            ef,
            allowed: keep,
            two_hop: false,
            codes: Some(&self.codes),
            rescore: hnsw::rescored(k),
        });
        hnsw::best_hits(found, k, |node| self.rows[node as usize] as usize)
    }

    /// The best `k` rows of `set` (which this graph [`covers`](Self::covers)) by a walk of
    /// breadth `ef` (0: this graph's default), as item rows with exact scores, best first;
    /// `None` when the walk found fewer than `k` (the caller scans instead).
    pub(crate) fn search(
        &self,
        table: Table<'_>,
        query: &[f32],
        k: usize,
        ef: usize,
        set: &RowSet,
    ) -> Option<Vec<Hit>> {
        let ef = if ef == 0 { self.expansion_search() } else { ef };
        // Rows of this graph the filter leaves out (for a value filter, the user's history).
        let missing = self.rows.len() - set.len();
        let keep = |node: u32| set.contains(self.rows[node as usize] as usize);
        let hits = hnsw::walk_dropping(
            |k, ef, keep| self.walk(table, query, k, ef, keep),
            (k, ef, self.len()),
            &keep,
            |row| set.contains(row),
            missing,
        );
        (hits.len() >= k).then_some(hits)
    }
}

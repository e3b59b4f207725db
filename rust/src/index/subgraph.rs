//! Value graphs: an HNSW graph over just the rows holding one attribute value (Qdrant's
//! payload-index subgraphs, as separate graphs). A filter whose allowed rows all lie inside
//! such a set walks this smaller graph, where the filter keeps most nodes, instead of the
//! whole graph, where it keeps few: on 1M items a filter keeping 10% is a 100k-node walk at
//! about the speed of an unfiltered 100k-node walk rather than a filtered 1M-node one
//! (`benches/results/retrieval-1m.md`). [`crate::index::policy::plan`] decides when.
//!
//! A value graph is an [`HnswIndex`] over a gathered copy of its rows (node `i` is item row
//! `rows[i]`, rows ascending), so its walk, codes and exact rescoring are the parent's, and its
//! scores equal the exact scan's bit for bit; ascending rows keep the tie order.

use crate::index::exact::Matrix;
use crate::index::graph::FlatGraph;
use crate::index::hnsw::{HnswError, HnswIndex, HnswParams};
use crate::index::rank::Hit;
use crate::index::rowset::RowSet;

/// A graph over a set of the parent index's rows.
pub struct Subgraph {
    /// The item rows, ascending and unique: node `i` of `index` is row `rows[i]`.
    rows: Vec<u32>,
    /// `rows` as a bitset over rows `0..=max row`.
    member: Vec<u64>,
    index: HnswIndex,
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

/// Item rows `rows` of `items` (`dim` floats a row, from item row `base` on), copied into
/// one block.
fn gathered(items: &[f32], base: usize, dim: usize, rows: &[u32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * dim);
    for &r in rows {
        out.extend_from_slice(&items[(r as usize - base) * dim..][..dim]);
    }
    out
}

impl Subgraph {
    /// Builds the graph over item rows `rows` (ascending, unique) of `items` (`dim` floats a
    /// row, from item row `base` on) with `params`.
    pub(crate) fn build(
        (items, base, dim): (&[f32], usize, usize),
        rows: Vec<u32>,
        params: &HnswParams,
    ) -> Result<Self, HnswError> {
        let data = gathered(items, base, dim, &rows);
        let matrix = Matrix::new(&data, rows.len(), dim).map_err(|e| HnswError::Param {
            name: "rows",
            message: e.to_string(),
        })?;
        let index = HnswIndex::build(matrix, 0..rows.len(), params)?;
        Ok(Self {
            member: bitset(&rows),
            rows,
            index,
        })
    }

    /// A saved graph over `rows` of `items` (see [`crate::index::file`]).
    pub(crate) fn from_saved(
        (items, base, dim): (&[f32], usize, usize),
        rows: Vec<u32>,
        graph: FlatGraph,
        params: &HnswParams,
    ) -> Result<Self, String> {
        if graph.len() != rows.len() {
            return Err(format!(
                "a value graph holds {} nodes for {} rows",
                graph.len(),
                rows.len()
            ));
        }
        let data = gathered(items, base, dim, &rows);
        Ok(Self {
            member: bitset(&rows),
            index: HnswIndex::from_graph(graph, data, dim, params),
            rows,
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

    /// The graph over the gathered rows (node `i` is row `rows()[i]`).
    pub(crate) fn index(&self) -> &HnswIndex {
        &self.index
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

    /// The best `k` rows of `set` (which this graph [`covers`](Self::covers)) by a walk of
    /// breadth `ef` (0: this graph's default), as item rows with exact scores, best first;
    /// `None` when the walk found fewer than `k` (the caller scans instead).
    pub(crate) fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        set: &RowSet,
    ) -> Option<Vec<Hit>> {
        let ef = if ef == 0 {
            self.index.expansion_search()
        } else {
            ef
        };
        // Rows of this graph the filter leaves out (for a value filter, the user's history).
        let missing = self.rows.len() - set.len();
        let keep = |node: u32| set.contains(self.rows[node as usize] as usize);
        let mut hits = self.index.walk_dropping(query, k, ef, &keep, missing);
        if hits.len() < k {
            return None;
        }
        for hit in &mut hits {
            hit.row = self.rows[hit.row] as usize;
        }
        Some(hits)
    }
}

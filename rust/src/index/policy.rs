//! The retrieval policy, with its magic numbers: which search answers a query (exact scan or
//! HNSW graph), when a filter is too selective for the graph, where a bundle keeps its saved
//! graph, and the hard-filter rule itself.

use crate::bundle::Attribute;

/// The saved graph inside a bundle (optional; built at load time when absent). The Python side
/// reads this name from `dpr._core.INDEX_FILE`.
pub const INDEX_FILE: &str = "index.usearch";

/// Which search answers queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retrieval {
    /// The exact scan below [`HNSW_MIN_ITEMS`] items, the HNSW index from there on.
    Auto,
    Exact,
    Hnsw,
}

/// From this many items on, `Retrieval::Auto` searches the HNSW graph.
pub const HNSW_MIN_ITEMS: usize = 50_000;

impl Retrieval {
    /// Whether queries over `num_items` items search an HNSW graph (unless a filter is
    /// selective, see [`graph_serves_filter`]).
    pub fn uses_graph(self, num_items: usize) -> bool {
        match self {
            Retrieval::Exact => false,
            Retrieval::Hnsw => true,
            Retrieval::Auto => num_items >= HNSW_MIN_ITEMS,
        }
    }
}

/// A filter expected to pass fewer than this share of the items is answered by the exact scan:
/// a graph walk would visit mostly rejected nodes.
const SELECTIVE_FILTER_SHARE: f64 = 0.05;

/// Whether a model with a graph searches it for a filter passing at most `share` of the items.
pub fn graph_serves_filter(share: f64) -> bool {
    share >= SELECTIVE_FILTER_SHARE
}

/// Rows sampled (inside the graph search) to estimate how many rows a filter keeps.
pub const FILTER_SAMPLE: usize = 256;

/// See [`scan_beats_walk`]. The measured constant (`benches/results/hnsw-crates.md`: at
/// N = 50k, d = 64, M = 16, ef = 64 the two cost the same near f = 0.3).
const FLAT_COST: f64 = 2.0;

/// Whether a filter that keeps a fraction `f` of `len` rows is answered by the exact scan over the
/// kept rows rather than a graph of `connectivity` M walked with breadth `ef`: the scan costs a
/// predicate call per row plus `f·N` dot products, a filtered graph walk visits about `ef / f`
/// rows and scores their `2M` neighbours, so the scan wins while `f² < FLAT_COST · 2M · ef / N`;
/// the scan is exact, so ties go to it.
pub fn scan_beats_walk(fraction: f64, connectivity: usize, ef: usize, len: usize) -> bool {
    let walk = FLAT_COST * (2 * connectivity) as f64 * ef as f64 / len as f64;
    fraction * fraction < walk
}

/// Hard attribute constraints: an item passes if, for every `include` attribute, it has at
/// least one of the listed values, and it has none of the `exclude` values.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// (attribute index, value indices)
    pub include: Vec<(usize, Vec<usize>)>,
    pub exclude: Vec<(usize, Vec<usize>)>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// The filter rule: whether item `row` passes, given the bundle's `attributes`.
    pub fn passes(&self, attributes: &[Attribute], row: usize) -> bool {
        let has_any =
            |(a, values): &(usize, Vec<usize>)| values.iter().any(|&v| attributes[*a].has(row, v));
        self.include.iter().all(has_any) && !self.exclude.iter().any(has_any)
    }

    /// An upper bound on the share of `num_items` items passing, from `value_counts[a][v]`
    /// (items having value `v` of attribute `a`).
    pub fn share_bound(&self, value_counts: &[Vec<usize>], num_items: usize) -> f64 {
        let n = num_items.max(1) as f64;
        self.include
            .iter()
            .map(|(a, values)| {
                values.iter().map(|&v| value_counts[*a][v]).sum::<usize>() as f64 / n
            })
            .fold(1.0, f64::min)
    }
}

//! The retrieval policy, with its magic numbers: which search answers a query (exact scan or
//! HNSW graph), the planner for filtered searches (a scan of the allowed rows or a filtered
//! walk, and how broad), how a row set is stored, where a bundle keeps its saved graph, and
//! the hard-filter rule itself.

use crate::bundle::Attribute;

/// The saved graph inside a bundle (optional; built at load time when absent). The Python side
/// reads this name from `dpr._core.INDEX_FILE`.
pub const INDEX_FILE: &str = "index.hnsw";

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
    /// Whether queries over `num_items` items search an HNSW graph (a filter may still be
    /// answered by a scan, see [`plan`]).
    pub fn uses_graph(self, num_items: usize) -> bool {
        match self {
            Retrieval::Exact => false,
            Retrieval::Hnsw => true,
            Retrieval::Auto => num_items >= HNSW_MIN_ITEMS,
        }
    }
}

/// The recall [`crate::index::hnsw::HnswIndex::calibrate`] aims at unless told otherwise.
/// The fixed default breadth (`ef` 128) returned 0.81 of the exact top-10 on a graph of 1M
/// items and 0.90 at 100k (`benches/results/retrieval-1m.md`, `retrieval.md`), so a large
/// catalogue needs its breadth measured on queries like its own.
pub const TARGET_RECALL: f64 = 0.95;

/// The breadths calibration tries, in order: the first whose measured recall reaches the
/// target becomes the index's default, else the last.
pub const BREADTHS: [usize; 13] = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024];

/// The exact scan reads a compact copy of the item table ([`crate::index::compact`]) when the
/// copy takes at most this many bytes at 2 bytes a value (~400k items of width 82; queries on
/// larger catalogues use the graph by default). On ML-1M's 3,125 × 82 table the bfloat16 copy
/// took a re-prompt's scan from ~17 to ~5 µs (`benches/results/profile.md`).
pub const COMPACT_COPY_MAX_BYTES: usize = 64 << 20;

/// A row set holding more than `1 / DENSE_RATIO` of its universe is kept as a bitset, else as
/// a sorted `u32` list: this is where the list (32 bits a row) outgrows the bitset (1 bit a
/// universe row).
const DENSE_RATIO: usize = 32;

/// Whether `count` rows out of `universe` are kept as a bitset (see [`DENSE_RATIO`]).
pub fn is_dense(count: usize, universe: usize) -> bool {
    count.saturating_mul(DENSE_RATIO) > universe
}

/// How one filtered search over an HNSW graph runs (see [`plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Exact scoring of just the allowed rows (exact, so ties and short sets are right).
    Scan,
    /// A walk of the graph with breadth `ef` that keeps only allowed rows; with `two_hop`,
    /// disallowed neighbours are not scored but their own neighbours are (ACORN-1 style).
    Walk { ef: usize, two_hop: bool },
    /// A walk of the smallest value graph holding every allowed row
    /// ([`crate::index::subgraph`]), at that graph's own breadth unless the caller gave one.
    Subgraph,
}

/// A value graph answers a filter keeping more than this many rows (fewer are scanned
/// exactly, see [`SCAN_MAX_ROWS`]): on 1M items (d = 64, one thread, through the Python API,
/// `benches/results/retrieval-1m.md`) the walk of a 10k-row value graph ran 5,405 q/s at
/// recall@10 0.979 where the gather-scan of the same rows ran 4,181; at 5,000 rows the scan
/// costs about 50 µs and is exact. On 100k-row and 500k-row value graphs, 1.74x and 1.01x
/// an unfiltered walk of the 1M-item graph at recall 0.95 (the main graph's plans: 0.23x
/// and 0.43x).
pub const SUBGRAPH_MIN_ROWS: usize = 5_000;

/// The engine builds a value graph for each attribute value held by at least
/// [`SUBGRAPH_MIN_ROWS`] items and at most this share of them, when its catalogue is searched
/// by a graph: a value graph costs its rows' links and int8 codes (~130 bytes a row at width
/// 82, `benches/results/load-1m.md`), so values held by most items, where the main graph's
/// filtered walk keeps most of its nodes anyway, get none.
pub const SUBGRAPH_MAX_SHARE: f64 = 0.5;

/// Whether the engine builds a value graph for an attribute value held by `count` of its
/// `num_items` items (see [`SUBGRAPH_MIN_ROWS`], [`SUBGRAPH_MAX_SHARE`]).
pub fn wants_value_graph(count: usize, num_items: usize) -> bool {
    count > SUBGRAPH_MIN_ROWS && count as f64 <= SUBGRAPH_MAX_SHARE * num_items as f64
}

/// A walk whose filter leaves out at most this many of the graph's rows (a user's history in
/// an unfiltered query, or in a value graph) runs unfiltered for `k` plus that many hits and
/// drops them afterwards: the unfiltered walk keeps one sorted pool, the filtered one two
/// heaps. On `benches/load.py`'s 1M-item bundle (a saved graph without value graphs), a warm
/// unfiltered query with a 50-item history went from 192-194 to 172-178 µs (median CPU time
/// of 400 queries, two alternating runs per build, `benches/results/load-1m.md`'s notes).
pub const DROPPED_AFTER_WALK_MAX: usize = 64;

/// The gather-scan answers a filter keeping at most this many rows: on small catalogues it
/// costs about what a walk costs and is exact (10k items: every filter scans).
const SCAN_MAX_ROWS: usize = 20_000;

/// ... or keeping less than this share of the indexed rows. Measured one thread, d = 64,
/// M = 16, the walk at the ef reaching recall@10 0.95, the scan on the int8 codes
/// ([`crate::index::gather`]) (`python benches/retrieval.py --sizes 10000,100000` and `--sizes
/// 1000000 --shares 0.01,0.1,0.2,0.5`, tables in `benches/results/retrieval.md` and
/// `retrieval-1m.md`, Emerald Rapids, eighth session): at 1M items and 10% the scan (recall
/// 1.0, 723 q/s) beats the walk, which needs ef 512 for 0.954 (329 q/s); at 20% the walk wins
/// 2.9× (0.950 at ef 192, 1,317 q/s; scan 452). At 100k items and 10% the scan wins 2.1×
/// (7,378 against 3,446 q/s at ef 64), at 50% the walk wins 3.3× (6,433 at ef 128, scan
/// 1,954). Below 10% the walk is slower still and loses recall (1M, 1%: 0.941 at ef 512, 54
/// q/s). A value graph holding the rows beats both ([`SUBGRAPH_MIN_ROWS`]).
const WALK_MIN_SHARE: f64 = 0.15;

/// The planner: how a search for the best `k` of `allowed` (an exact count) of a graph's
/// `len` rows runs, given the breadth `ef` an unfiltered search would use. The walk is
/// hnswlib's filtered walk at that `ef`. Against the two-hop walk (ACORN-1), at recall 0.95
/// (same tables): two-hop loses at 10% on 100k (2,878 q/s at ef 128 against 3,446 at ef 64),
/// at 20% on 1M (0.951 only at ef 384, 725 q/s, against 1,317) and at 50% on 1M (894 q/s
/// at 0.969 against 1,424 at 0.970), so one walk serves every share.
///
/// `within` is the size of the smallest value graph holding every allowed row, if any: the
/// filter then keeps `allowed / within` of that graph, and when that share is one a walk
/// keeps ([`WALK_MIN_SHARE`]) and the rows are too many to scan cheaply
/// ([`SUBGRAPH_MIN_ROWS`]), the value graph is walked instead.
pub fn plan(allowed: usize, len: usize, k: usize, ef: usize, within: Option<usize>) -> Plan {
    if allowed <= k {
        return Plan::Scan;
    }
    if let Some(rows) = within {
        let share = allowed as f64 / rows.max(1) as f64;
        if allowed > SUBGRAPH_MIN_ROWS && share >= WALK_MIN_SHARE {
            return Plan::Subgraph;
        }
    }
    let share = allowed as f64 / len.max(1) as f64;
    if allowed <= SCAN_MAX_ROWS || share < WALK_MIN_SHARE {
        return Plan::Scan;
    }
    Plan::Walk { ef, two_hop: false }
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

    /// Whether the filter excludes every item having value `value` of attribute `attribute`.
    pub fn excludes(&self, attribute: usize, value: usize) -> bool {
        self.exclude
            .iter()
            .any(|(a, values)| *a == attribute && values.contains(&value))
    }

    /// The filter rule: whether item `row` passes, given the bundle's `attributes`.
    pub fn passes(&self, attributes: &[Attribute], row: usize) -> bool {
        let has_any =
            |(a, values): &(usize, Vec<usize>)| values.iter().any(|&v| attributes[*a].has(row, v));
        self.include.iter().all(has_any) && !self.exclude.iter().any(has_any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_excludes_only_the_values_it_lists_under_their_attribute() {
        let filter = Filter {
            include: vec![(0, vec![1])],
            exclude: vec![(0, vec![2, 4]), (1, vec![0])],
        };
        assert!(filter.excludes(0, 2) && filter.excludes(0, 4) && filter.excludes(1, 0));
        assert!(!filter.excludes(0, 1), "an included value is not excluded");
        assert!(!filter.excludes(1, 2) && !filter.excludes(2, 0));
        assert!(!Filter::default().excludes(0, 0));
    }

    #[test]
    fn the_planner_scans_small_and_selective_filters_and_walks_broad_ones() {
        let walk = Plan::Walk {
            ef: 128,
            two_hop: false,
        };
        // Fewer rows than k, few rows, a small share: the exact scan.
        assert_eq!(plan(5, 1_000_000, 10, 128, None), Plan::Scan);
        assert_eq!(plan(SCAN_MAX_ROWS, 1_000_000, 10, 128, None), Plan::Scan);
        assert_eq!(plan(100_000, 1_000_000, 10, 128, None), Plan::Scan);
        // Broad filters on a large graph: the walk, at the caller's breadth.
        assert_eq!(plan(200_000, 1_000_000, 10, 128, None), walk);
        assert_eq!(plan(1_000_000, 1_000_000, 10, 128, None), walk);
        assert_eq!(plan(0, 0, 10, 128, None), Plan::Scan);
    }

    #[test]
    fn a_value_graph_holding_the_allowed_rows_is_walked_when_they_fill_it() {
        // 100k allowed rows inside a 120k-row value graph: walk it, not scan 1M.
        assert_eq!(
            plan(100_000, 1_000_000, 10, 128, Some(120_000)),
            Plan::Subgraph
        );
        // Few rows: the exact scan, value graph or not.
        assert_eq!(plan(4_000, 1_000_000, 10, 128, Some(4_500)), Plan::Scan);
        // The rows fill little of the graph: the main planner's rules.
        assert_eq!(plan(30_000, 1_000_000, 10, 128, Some(600_000)), Plan::Scan);
        assert_eq!(
            plan(300_000, 1_000_000, 10, 128, Some(1_000_000)),
            Plan::Subgraph
        );
    }

    #[test]
    fn a_list_holds_at_most_a_32nd_of_its_universe() {
        assert!(!is_dense(0, 0) && !is_dense(1, 32) && is_dense(2, 32));
        assert!(!is_dense(31_250, 1_000_000) && is_dense(31_251, 1_000_000));
    }
}

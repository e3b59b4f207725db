//! Compares `usearch` and `hnsw_rs` for maximum-inner-product search on unnormalised vectors:
//! recall@10 against the exact top 10, single-thread queries/s, and build time, on two synthetic
//! catalogues (gaussian with log-normal norms; gaussian + 0/1 attribute dimensions).
//!
//! ```text
//! cargo run --release -p dpr-core --features hnsw-compare --example hnsw_compare -- [N] [QUERIES]
//! cargo run --release -p dpr-core --features hnsw-compare --example hnsw_compare -- filters [N]
//! ONLY="usearch ip" cargo run ...   # only the indexes whose name contains this
//! ```
//!
//! The second form times a filtered graph search against the exact scan over the kept rows,
//! which sets `FLAT_COST` in `src/hnsw.rs`. Results: `benches/results/hnsw-crates.md`.

use std::time::Instant;

use hnsw_rs::prelude::*;
use rayon::prelude::*;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

const K: usize = 10;
const M: usize = 16;
const EF_ADD: usize = 128;
const EFS: [usize; 4] = [16, 32, 64, 128];

/// xorshift64* with Box-Muller: reproducible without a rand dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
    fn gauss(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

struct Data {
    name: &'static str,
    dim: usize,
    items: Vec<f32>,
    queries: Vec<f32>,
}

/// `n` items of `d` gaussian dims scaled by a log-normal factor (norms vary ~4x), then
/// `attrs` 0/1 attribute dims (each on with probability 0.15) times `attr_scale`.
fn catalogue(name: &'static str, n: usize, q: usize, d: usize, attrs: usize, seed: u64) -> Data {
    let mut rng = Rng(seed);
    let dim = d + attrs;
    let attr_scale = 0.5f32;
    let mut items = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let norm = (0.5 * rng.gauss()).exp() / (d as f32).sqrt();
        items.extend((0..d).map(|_| rng.gauss() * norm));
        items.extend((0..attrs).map(|_| {
            if rng.uniform() < 0.15 {
                attr_scale
            } else {
                0.0
            }
        }));
    }
    let mut queries = Vec::with_capacity(q * dim);
    for _ in 0..q {
        queries.extend((0..d).map(|_| rng.gauss()));
        queries.extend((0..attrs).map(|_| 2.0 * rng.gauss()));
    }
    Data {
        name,
        dim,
        items,
        queries,
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Squared L2 with the same accumulator shape, for hnsw_rs (its own DistL2 is a scalar fold).
#[derive(Clone, Copy, Default)]
struct L2Sq;

impl Distance<f32> for L2Sq {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0.0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(x, y)| (x - y) * (x - y))
            .sum();
        for (xa, xb) in ca.zip(cb) {
            for ((s, x), y) in acc.iter_mut().zip(xa).zip(xb) {
                *s += (x - y) * (x - y);
            }
        }
        acc.iter().sum::<f32>() + tail
    }
}

/// Exact top-k rows (allowed only) by inner product, best first.
fn exact(
    items: &[f32],
    dim: usize,
    q: &[f32],
    k: usize,
    allowed: &dyn Fn(usize) -> bool,
) -> Vec<usize> {
    let mut all: Vec<(f32, usize)> = items
        .chunks_exact(dim)
        .enumerate()
        .filter(|(i, _)| allowed(*i))
        .map(|(i, row)| (dot(row, q), i))
        .collect();
    let k = k.min(all.len());
    if k == 0 {
        return Vec::new();
    }
    all.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
    all.truncate(k);
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    all.into_iter().map(|(_, i)| i).collect()
}

/// MIPS -> L2: items get sqrt(M^2 - |x|^2), queries get 0, so L2 order = inner-product order.
fn augment_items(items: &[f32], dim: usize) -> Vec<f32> {
    let max2 = items
        .chunks_exact(dim)
        .map(|r| dot(r, r))
        .fold(0.0f32, f32::max);
    let mut out = Vec::with_capacity(items.len() / dim * (dim + 1));
    for r in items.chunks_exact(dim) {
        out.extend_from_slice(r);
        out.push((max2 - dot(r, r)).max(0.0).sqrt());
    }
    out
}

fn augment_query(q: &[f32]) -> Vec<f32> {
    let mut v = q.to_vec();
    v.push(0.0);
    v
}

/// One index under test: searching returns row ids.
trait Ann: Sync {
    fn search(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        allowed: Option<&(dyn Fn(usize) -> bool + Sync)>,
    ) -> Vec<usize>;
}

struct USearch {
    index: Index,
    augmented: bool,
}

impl USearch {
    fn build(items: &[f32], dim: usize, augmented: bool) -> Self {
        let (data, d, metric) = if augmented {
            (augment_items(items, dim), dim + 1, MetricKind::L2sq)
        } else {
            (items.to_vec(), dim, MetricKind::IP)
        };
        let options = IndexOptions {
            dimensions: d,
            metric,
            quantization: ScalarKind::F32,
            connectivity: M,
            expansion_add: EF_ADD,
            expansion_search: 16,
            multi: false,
        };
        let index = Index::new(&options).expect("usearch index");
        let n = data.len() / d;
        index
            .reserve_capacity_and_threads(n, rayon::current_num_threads() + 1)
            .expect("reserve");
        data.par_chunks_exact(d)
            .enumerate()
            .for_each(|(i, row)| index.add(i as u64, row).expect("add"));
        Self { index, augmented }
    }
}

impl Ann for USearch {
    fn search(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        allowed: Option<&(dyn Fn(usize) -> bool + Sync)>,
    ) -> Vec<usize> {
        // usearch's expansion is max(index expansion_search, count): ask for ef, keep k.
        let count = ef.max(k);
        let qv;
        let q = if self.augmented {
            qv = augment_query(q);
            &qv[..]
        } else {
            q
        };
        let m = match allowed {
            None => self.index.search(q, count),
            Some(f) => self.index.filtered_search(q, count, |key| f(key as usize)),
        }
        .expect("search");
        m.keys.iter().take(k).map(|&key| key as usize).collect()
    }
}

/// This crate's wrapper (usearch inner product + exact rescoring + filter fallback).
struct Dpr(_core::hnsw::HnswIndex);

impl Ann for Dpr {
    fn search(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        allowed: Option<&(dyn Fn(usize) -> bool + Sync)>,
    ) -> Vec<usize> {
        let hits = self.0.search(q, k, ef, allowed).expect("search");
        hits.iter().map(|h| h.row).collect()
    }
}

struct HnswRs {
    hnsw: Hnsw<'static, f32, L2Sq>,
}

impl HnswRs {
    fn build(items: &[f32], dim: usize) -> Self {
        let data = augment_items(items, dim);
        let n = items.len() / dim;
        let hnsw = Hnsw::new(M, n, 16, EF_ADD, L2Sq);
        let rows: Vec<(&[f32], usize)> = data
            .chunks_exact(dim + 1)
            .enumerate()
            .map(|(i, r)| (r, i))
            .collect();
        hnsw.parallel_insert_slice(&rows);
        Self { hnsw }
    }
}

impl Ann for HnswRs {
    fn search(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        allowed: Option<&(dyn Fn(usize) -> bool + Sync)>,
    ) -> Vec<usize> {
        let q = augment_query(q);
        let filter = allowed.map(|f| move |id: &usize| f(*id));
        let found = match &filter {
            None => self.hnsw.search_filter(&q, k, ef, None),
            Some(f) => self.hnsw.search_filter(&q, k, ef, Some(f as &dyn FilterT)),
        };
        found.iter().map(|n| n.d_id).collect()
    }
}

/// Builds one index under test (timed by the caller).
type Builder<'a> = Box<dyn Fn() -> Box<dyn Ann> + 'a>;

struct Row {
    ef: usize,
    recall: f64,
    qps: f64,
    short: usize,
    bad: usize,
}

fn measure(
    ann: &dyn Ann,
    data: &Data,
    truth: &[Vec<usize>],
    ef: usize,
    allowed: Option<&(dyn Fn(usize) -> bool + Sync)>,
) -> Row {
    let queries: Vec<&[f32]> = data.queries.chunks_exact(data.dim).collect();
    let start = Instant::now();
    // Single thread: the timing loop runs on this thread only.
    let got: Vec<Vec<usize>> = queries
        .iter()
        .map(|q| ann.search(q, K, ef, allowed))
        .collect();
    let secs = start.elapsed().as_secs_f64();
    let mut hit = 0usize;
    let mut total = 0usize;
    let mut short = 0usize;
    let mut bad = 0usize;
    for (g, t) in got.iter().zip(truth) {
        total += t.len();
        hit += g.iter().filter(|r| t.contains(r)).count();
        short += usize::from(g.len() < t.len());
        bad += g
            .iter()
            .filter(|&&r| allowed.is_some_and(|f| !f(r)))
            .count();
    }
    Row {
        ef,
        recall: hit as f64 / total.max(1) as f64,
        qps: queries.len() as f64 / secs,
        short,
        bad,
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("filters") {
        let n = std::env::args()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or(100_000);
        return filters(n, 200);
    }
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(100_000);
    let nq = args.get(1).copied().unwrap_or(1_000);
    println!(
        "n={n} queries={nq} k={K} M={M} ef_construction={EF_ADD} rayon threads={} usearch {} ({})",
        rayon::current_num_threads(),
        usearch::version(),
        usearch::hardware_acceleration_compiled()
    );
    let sets = [
        catalogue("gauss64", n, nq, 64, 0, 7),
        catalogue("gauss64+attr18", n, nq, 64, 18, 11),
    ];
    for data in &sets {
        let all = |_: usize| true;
        let truth: Vec<Vec<usize>> = data
            .queries
            .par_chunks_exact(data.dim)
            .map(|q| exact(&data.items, data.dim, q, K, &all))
            .collect();
        // A 10% filter (a hash of the row, so it is unrelated to the vectors) and a 1% one.
        let f10 = |r: usize| (r.wrapping_mul(2_654_435_761) >> 7).is_multiple_of(10);
        let f1 = |r: usize| (r.wrapping_mul(2_654_435_761) >> 7).is_multiple_of(100);
        let truth10: Vec<Vec<usize>> = data
            .queries
            .par_chunks_exact(data.dim)
            .map(|q| exact(&data.items, data.dim, q, K, &f10))
            .collect();
        let truth1: Vec<Vec<usize>> = data
            .queries
            .par_chunks_exact(data.dim)
            .map(|q| exact(&data.items, data.dim, q, K, &f1))
            .collect();
        let builders: Vec<(&str, Builder<'_>)> = vec![
            (
                "usearch ip",
                Box::new(|| Box::new(USearch::build(&data.items, data.dim, false))),
            ),
            (
                "usearch l2+aug",
                Box::new(|| Box::new(USearch::build(&data.items, data.dim, true))),
            ),
            (
                "hnsw_rs l2+aug",
                Box::new(|| Box::new(HnswRs::build(&data.items, data.dim))),
            ),
            (
                "dpr HnswIndex",
                Box::new(|| {
                    let n = data.items.len() / data.dim;
                    let items =
                        _core::retrieve::Matrix::new(&data.items, n, data.dim).expect("shape");
                    let params = _core::hnsw::HnswParams {
                        connectivity: M,
                        expansion_add: EF_ADD,
                        expansion_search: 64,
                    };
                    Box::new(Dpr(
                        _core::hnsw::HnswIndex::build(items, 0..n, &params).expect("build")
                    ))
                }),
            ),
        ];
        println!("\n## {} (n={n}, dim={})", data.name, data.dim);
        println!("| index | build s | ef | recall@10 | qps (1 thread) | filter 10%: recall / qps / short / bad | filter 1%: recall / qps / short / bad |");
        println!("|---|---|---|---|---|---|---|");
        let only = std::env::var("ONLY").unwrap_or_default();
        for (name, build) in builders
            .iter()
            .filter(|(name, _)| name.contains(only.as_str()))
        {
            let start = Instant::now();
            let ann = build();
            let build_s = start.elapsed().as_secs_f64();
            for ef in EFS {
                let r = measure(ann.as_ref(), data, &truth, ef, None);
                let r10 = measure(ann.as_ref(), data, &truth10, ef, Some(&f10));
                let r1 = measure(ann.as_ref(), data, &truth1, ef, Some(&f1));
                println!(
                    "| {name} | {build_s:.1} | {} | {:.4} | {:.0} | {:.4} / {:.0} / {} / {} | {:.4} / {:.0} / {} / {} |",
                    r.ef, r.recall, r.qps, r10.recall, r10.qps, r10.short, r10.bad, r1.recall, r1.qps, r1.short, r1.bad
                );
            }
        }
    }
}

/// `hnswcmp filters N`: graph filtered search vs exact scan over the kept rows, per fraction.
#[allow(dead_code)]
pub fn filters(n: usize, nq: usize) {
    let data = catalogue("gauss64", n, nq, 64, 0, 7);
    let ann = USearch::build(&data.items, data.dim, false);
    let queries: Vec<&[f32]> = data.queries.chunks_exact(data.dim).collect();
    println!("| filter | graph ef=64 ms/query | graph recall | exact scan ms/query |");
    println!("|---|---|---|---|");
    for per_mille in [5usize, 10, 20, 50, 100, 200, 500] {
        let keep = move |r: usize| (r.wrapping_mul(2_654_435_761) >> 7) % 1000 < per_mille;
        let truth: Vec<Vec<usize>> = queries
            .iter()
            .map(|q| exact(&data.items, data.dim, q, K, &keep))
            .collect();
        let start = Instant::now();
        let got: Vec<Vec<usize>> = queries
            .iter()
            .map(|q| ann.search(q, K, 64, Some(&keep)))
            .collect();
        let graph_ms = start.elapsed().as_secs_f64() * 1e3 / nq as f64;
        let start = Instant::now();
        for q in &queries {
            // The exact scan as hnsw.rs runs it: a predicate per row, a dot per kept row.
            let mut best: Vec<(f32, usize)> = Vec::new();
            for (i, row) in data.items.chunks_exact(data.dim).enumerate() {
                if keep(i) {
                    best.push((dot(row, q), i));
                }
            }
            let last = K.min(best.len()) - 1;
            best.select_nth_unstable_by(last, |a, b| b.0.total_cmp(&a.0));
            std::hint::black_box(&best);
        }
        let exact_ms = start.elapsed().as_secs_f64() * 1e3 / nq as f64;
        let hit: usize = got
            .iter()
            .zip(&truth)
            .map(|(g, t)| g.iter().filter(|r| t.contains(r)).count())
            .sum();
        println!(
            "| {:.1}% | {graph_ms:.3} | {:.4} | {exact_ms:.3} |",
            per_mille as f64 / 10.0,
            hit as f64 / (K * nq) as f64
        );
    }
}

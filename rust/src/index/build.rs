//! dpr's HNSW builder: inserts every node into a hierarchical navigable small-world graph by
//! inner product and hands the result over in the flat layout that [`crate::index::graph`]
//! walks.
//!
//! The algorithm is hnswlib's (Malkov & Yashunin): a node's level is drawn from a geometric
//! distribution (`mult = 1 / ln M`), it descends greedily from the entry point to its own
//! level, and on each level from there down it searches `ef_construction` candidates, keeps
//! up to `M` of them with the neighbour-selection heuristic (a candidate is dropped when an
//! already kept neighbour is closer to it than the new node is), and links back from each of
//! them, re-running the heuristic on a neighbour whose list is full (`2M` on the base level,
//! `M` above).
//!
//! Scores are inner products (larger is closer; item vectors are not normalised, see
//! [`crate::index::hnsw`]). Nodes are inserted in parallel on rayon's pool, claimed in row
//! order from an atomic counter. Links live in one preallocated table of atomics per level
//! kind; readers load them without a lock (a list read while it changes is still a list of
//! valid nodes, which is all a construction search needs), and every change to a list holds
//! that node's spin lock. Levels come from a hash of the seed and the node, so one thread and
//! one seed always build the same graph.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::*};
use std::sync::Mutex;

use crate::index::graph::{prefetch, score_ahead, FlatGraph, Scored, UpperLevel};
use crate::index::pages;
use crate::index::pool::{self, Pool};
use crate::nn::linalg;

/// Highest level a node may get (the chance of reaching it with `M = 2` is 2^-24 per node).
const MAX_LEVEL: usize = 24;

/// What to build: `m` neighbours per node and upper level (`2m` on the base level),
/// `ef_construction` candidates per insertion, `seed` for the levels.
#[derive(Clone, Copy, Debug)]
pub struct BuildParams {
    pub m: usize,
    pub ef_construction: usize,
    pub seed: u64,
}

/// The vectors being indexed: node `i` is `data[i * dim..(i + 1) * dim]`.
#[derive(Clone, Copy)]
struct Vectors<'a> {
    data: &'a [f32],
    dim: usize,
}

impl<'a> Vectors<'a> {
    #[inline(always)]
    fn of(&self, node: u32) -> &'a [f32] {
        &self.data[node as usize * self.dim..][..self.dim]
    }
}

/// A test-and-test-and-set lock guarding changes to one node's lists.
struct SpinLock(AtomicBool);

impl SpinLock {
    fn lock(&self) -> SpinGuard<'_> {
        let mut spins = 0u32;
        loop {
            if !self.0.load(Relaxed)
                && self
                    .0
                    .compare_exchange_weak(false, true, Acquire, Relaxed)
                    .is_ok()
            {
                return SpinGuard(self);
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                // More builder threads than cores: let the holder run.
                std::thread::yield_now();
            }
        }
    }
}

struct SpinGuard<'a>(&'a SpinLock);

impl Drop for SpinGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.store(false, Release);
    }
}

/// The graph under construction.
struct Graph<'a> {
    vectors: Vectors<'a>,
    m: usize,
    ef_construction: usize,
    /// Base level: per node `1 + 2m` words, its neighbour count and then its neighbours.
    base: Vec<AtomicU32>,
    /// Upper levels: per node with level `L > 0`, `L` lists of `1 + m` words, from
    /// `upper[upper_at[node]]` on (level `l` at `(l - 1) * (1 + m)` past it).
    upper: Vec<AtomicU32>,
    upper_at: Vec<usize>,
    levels: Vec<u8>,
    locks: Vec<SpinLock>,
    /// The entry node and the top level.
    entry: Mutex<(u32, usize)>,
}

/// Per-thread scratch space, reused across insertions.
struct Scratch {
    visited: Vec<u32>,
    epoch: u32,
    /// The walk's candidates and results in one.
    walk: Pool,
    fresh: Vec<u32>,
    found: Vec<Scored>,
    selected: Vec<Scored>,
    /// A full list's candidates, and what the heuristic keeps of them.
    pool: Vec<Scored>,
    kept: Vec<Scored>,
}

impl Scratch {
    fn new(len: usize) -> Self {
        Self {
            visited: vec![0; len],
            epoch: 0,
            walk: Pool::default(),
            fresh: Vec::new(),
            found: Vec::new(),
            selected: Vec::new(),
            pool: Vec::new(),
            kept: Vec::new(),
        }
    }

    fn next_epoch(&mut self) -> u32 {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.visited.fill(0);
            self.epoch = 1;
        }
        self.epoch
    }
}

/// splitmix64: a well-mixed 64-bit hash of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Node `node`'s level: `floor(-ln(u) / ln(m))` for a uniform `u` in (0, 1] drawn from the seed.
fn level_of(seed: u64, node: usize, m: usize) -> usize {
    let u = ((mix(seed ^ mix(node as u64)) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let level = -u.ln() / (m as f64).ln();
    (level as usize).min(MAX_LEVEL)
}

/// Builds the graph over the `len` vectors of `data` (`dim` floats each).
///
/// # Panics
/// If `data` holds fewer than `len * dim` floats, `m < 2` or `ef_construction == 0`.
pub fn build(data: &[f32], dim: usize, len: usize, params: BuildParams) -> FlatGraph {
    assert!(data.len() >= len * dim && params.m >= 2 && params.ef_construction > 0);
    assert!(len <= pool::MAX_NODES, "at most pool::MAX_NODES nodes");
    let graph = Graph::new(Vectors { data, dim }, len, params);
    if len > 0 {
        graph.insert_all();
        graph.connect_all();
    }
    graph.into_flat()
}

impl<'a> Graph<'a> {
    fn new(vectors: Vectors<'a>, len: usize, params: BuildParams) -> Self {
        let m = params.m;
        let levels: Vec<u8> = (0..len)
            .map(|node| level_of(params.seed, node, m) as u8)
            .collect();
        let mut upper_at = vec![usize::MAX; len];
        let mut words = 0;
        for (node, &level) in levels.iter().enumerate() {
            if level > 0 {
                upper_at[node] = words;
                words += level as usize * (1 + m);
            }
        }
        let atomics = |n: usize| pages::collected((0..n).map(|_| AtomicU32::new(0)));
        Self {
            vectors,
            m,
            ef_construction: params.ef_construction,
            base: atomics(len * (1 + 2 * m)),
            upper: atomics(words),
            upper_at,
            entry: Mutex::new((0, levels.first().copied().unwrap_or(0) as usize)),
            levels,
            locks: (0..len).map(|_| SpinLock(AtomicBool::new(false))).collect(),
        }
    }

    /// Most neighbours a node keeps on `level`.
    fn capacity(&self, level: usize) -> usize {
        if level == 0 {
            2 * self.m
        } else {
            self.m
        }
    }

    /// `node`'s list on `level`: its count, then room for [`Self::capacity`] neighbours.
    #[inline(always)]
    fn list(&self, node: u32, level: usize) -> &[AtomicU32] {
        if level == 0 {
            let stride = 1 + 2 * self.m;
            &self.base[node as usize * stride..][..stride]
        } else {
            let stride = 1 + self.m;
            &self.upper[self.upper_at[node as usize] + (level - 1) * stride..][..stride]
        }
    }

    /// Reads `node`'s neighbours on `level` into `out` (without a lock; see the module doc).
    #[inline(always)]
    fn neighbours_into(&self, node: u32, level: usize, out: &mut Vec<u32>) {
        let list = self.list(node, level);
        let count = (list[0].load(Relaxed) as usize).min(list.len() - 1);
        out.clear();
        out.extend(list[1..=count].iter().map(|w| w.load(Relaxed)));
    }

    fn insert_all(&self) {
        let len = self.levels.len();
        // Node 0 is the first entry point; the others are claimed in row order.
        let next = AtomicUsize::new(1);
        let threads = rayon::current_num_threads().min(len);
        rayon::scope(|s| {
            for _ in 0..threads {
                s.spawn(|_| {
                    let mut scratch = Scratch::new(len);
                    loop {
                        let node = next.fetch_add(1, Relaxed);
                        if node >= len {
                            break;
                        }
                        self.insert_dispatch(node as u32, &mut scratch);
                    }
                });
            }
        });
    }

    fn insert_dispatch(&self, node: u32, scratch: &mut Scratch) {
        #[cfg(target_arch = "x86_64")]
        if linalg::x86::has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            unsafe { self.insert_avx2(node, scratch) };
            return;
        }
        self.insert(node, scratch, linalg::dot);
    }

    /// [`Self::insert`] compiled for AVX2+FMA, so that the dot product inlines into its loops.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn insert_avx2(&self, node: u32, scratch: &mut Scratch) {
        // SAFETY: this function only runs where AVX2 and FMA are present.
        let dot = |a: &[f32], b: &[f32]| unsafe { linalg::x86::dot(a, b) };
        self.insert(node, scratch, dot);
    }

    #[inline(always)]
    fn insert(&self, node: u32, scratch: &mut Scratch, dot: impl Fn(&[f32], &[f32]) -> f32 + Copy) {
        let level = self.levels[node as usize] as usize;
        let (entry, top) = *self.entry.lock().unwrap_or_else(|e| e.into_inner());
        let query = self.vectors.of(node);
        let mut best = Scored {
            score: dot(query, self.vectors.of(entry)),
            node: entry,
        };
        // Greedy descent through the levels above the node's own.
        let mut fresh = std::mem::take(&mut scratch.fresh);
        for l in (level + 1..=top).rev() {
            loop {
                let mut moved = false;
                self.neighbours_into(best.node, l, &mut fresh);
                for &next in &fresh {
                    let candidate = Scored {
                        score: dot(query, self.vectors.of(next)),
                        node: next,
                    };
                    if next != node && candidate > best {
                        best = candidate;
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        scratch.fresh = fresh;
        for l in (0..=level.min(top)).rev() {
            self.search_level(node, best, l, scratch, dot);
            if let Some(&first) = scratch.found.first() {
                best = first;
            }
            let mut found = std::mem::take(&mut scratch.found);
            let mut selected = std::mem::take(&mut scratch.selected);
            self.select(&found, self.m, &mut selected, dot);
            self.set_own_list(node, l, &selected, scratch, dot);
            for s in &selected {
                self.link_back(s.node, node, l, scratch, dot);
            }
            found.clear();
            scratch.found = found;
            scratch.selected = selected;
        }
        if level > top {
            let mut entry = self.entry.lock().unwrap_or_else(|e| e.into_inner());
            if level > entry.1 {
                *entry = (node, level);
            }
        }
    }

    /// The best `ef_construction` nodes of `level` for `node`'s vector, found from `start`,
    /// best first, into `scratch.found` (`node` itself is never among them).
    #[inline(always)]
    fn search_level(
        &self,
        node: u32,
        start: Scored,
        level: usize,
        scratch: &mut Scratch,
        dot: impl Fn(&[f32], &[f32]) -> f32,
    ) {
        let ef = self.ef_construction;
        let query = self.vectors.of(node);
        let epoch = scratch.next_epoch();
        let Scratch {
            visited,
            walk,
            fresh,
            found,
            ..
        } = scratch;
        visited[node as usize] = epoch;
        visited[start.node as usize] = epoch;
        walk.reset(ef);
        walk.insert(start);
        while let Some(current) = walk.expand_next() {
            if let Some(next) = walk.peek_next() {
                prefetch(self.list(next.node, level));
            }
            let list = self.list(current.node, level);
            let count = (list[0].load(Relaxed) as usize).min(list.len() - 1);
            fresh.clear();
            for word in &list[1..=count] {
                let next = word.load(Relaxed);
                let seen = &mut visited[next as usize];
                if *seen != epoch {
                    *seen = epoch;
                    fresh.push(next);
                }
            }
            score_ahead(
                fresh,
                |next| dot(query, self.vectors.of(next)),
                |next| prefetch(self.vectors.of(next)),
                |found| walk.insert(found),
            );
        }
        found.clear();
        found.extend(walk.found());
    }

    /// hnswlib's neighbour-selection heuristic: from `candidates` (best first, scored against
    /// the node being linked), keeps a candidate unless a kept one is closer to it than the
    /// node is, up to `m`. Fewer than `m` candidates are all kept.
    #[inline(always)]
    fn select(
        &self,
        candidates: &[Scored],
        m: usize,
        kept: &mut Vec<Scored>,
        dot: impl Fn(&[f32], &[f32]) -> f32,
    ) {
        kept.clear();
        if candidates.len() <= m {
            kept.extend_from_slice(candidates);
            return;
        }
        for &c in candidates {
            if kept.len() >= m {
                break;
            }
            let vector = self.vectors.of(c.node);
            let diverse = kept
                .iter()
                .all(|k| dot(vector, self.vectors.of(k.node)) <= c.score);
            if diverse {
                kept.push(c);
            }
        }
    }

    /// Writes `node`'s own list on `level`. Another thread may already have linked back to
    /// `node` there (it found `node` through a level above); those links are kept, pruned
    /// together with `selected` if they do not all fit.
    #[inline(always)]
    fn set_own_list(
        &self,
        node: u32,
        level: usize,
        selected: &[Scored],
        scratch: &mut Scratch,
        dot: impl Fn(&[f32], &[f32]) -> f32 + Copy,
    ) {
        let list = self.list(node, level);
        let _guard = self.locks[node as usize].lock();
        let count = list[0].load(Relaxed) as usize;
        if count == 0 {
            for (slot, s) in list[1..].iter().zip(selected) {
                slot.store(s.node, Relaxed);
            }
            list[0].store(selected.len() as u32, Relaxed);
            return;
        }
        let mut pool = std::mem::take(&mut scratch.pool);
        pool.clear();
        pool.extend_from_slice(selected);
        let vector = self.vectors.of(node);
        for word in &list[1..=count] {
            let other = word.load(Relaxed);
            if !pool.iter().any(|p| p.node == other) {
                pool.push(Scored {
                    score: dot(vector, self.vectors.of(other)),
                    node: other,
                });
            }
        }
        self.rewrite(list, &mut pool, self.capacity(level), scratch, dot);
        scratch.pool = pool;
    }

    /// Adds `node` to `to`'s list on `level`, or, when that list is full, keeps what the
    /// heuristic keeps of its neighbours and `node`.
    #[inline(always)]
    fn link_back(
        &self,
        to: u32,
        node: u32,
        level: usize,
        scratch: &mut Scratch,
        dot: impl Fn(&[f32], &[f32]) -> f32 + Copy,
    ) {
        let list = self.list(to, level);
        let capacity = self.capacity(level);
        let _guard = self.locks[to as usize].lock();
        let count = list[0].load(Relaxed) as usize;
        if list[1..=count].iter().any(|w| w.load(Relaxed) == node) {
            return;
        }
        if count < capacity {
            list[1 + count].store(node, Relaxed);
            list[0].store(count as u32 + 1, Relaxed);
            return;
        }
        let vector = self.vectors.of(to);
        let mut pool = std::mem::take(&mut scratch.pool);
        pool.clear();
        pool.push(Scored {
            score: dot(vector, self.vectors.of(node)),
            node,
        });
        for word in &list[1..=count] {
            let other = word.load(Relaxed);
            pool.push(Scored {
                score: dot(vector, self.vectors.of(other)),
                node: other,
            });
        }
        self.rewrite(list, &mut pool, capacity, scratch, dot);
        scratch.pool = pool;
    }

    /// Replaces `list` (its lock held) by the heuristic's choice of `pool` (scored against
    /// the list's owner), at most `capacity`.
    #[inline(always)]
    fn rewrite(
        &self,
        list: &[AtomicU32],
        pool: &mut [Scored],
        capacity: usize,
        scratch: &mut Scratch,
        dot: impl Fn(&[f32], &[f32]) -> f32,
    ) {
        pool.sort_unstable_by(|a, b| b.cmp(a));
        let mut kept = std::mem::take(&mut scratch.kept);
        self.select(pool, capacity, &mut kept, dot);
        for (slot, k) in list[1..].iter().zip(&kept) {
            slot.store(k.node, Relaxed);
        }
        list[0].store(kept.len() as u32, Relaxed);
        scratch.kept = kept;
    }

    /// Links every base-level node that the entry point cannot reach. With inner products the
    /// heuristic often drops a small-norm node from all of its neighbours' lists (each has a
    /// neighbour scoring higher with it than the list's owner does), so some nodes end up with
    /// no incoming link at all; a filtered walk needs them. Each such node is linked from a
    /// reachable node near it (its own neighbours, else the best nodes a search for it finds),
    /// taking a slot from a node with other incoming links when their lists are full; rounds
    /// repeat while a slot so taken cut some node off.
    fn connect_all(&self) {
        let len = self.levels.len();
        let mut scratch = Scratch::new(len);
        let mut incoming = vec![0u32; len];
        for node in 0..len as u32 {
            for next in self.base_list(node) {
                incoming[next as usize] += 1;
            }
        }
        let (entry, top) = *self.entry.lock().unwrap_or_else(|e| e.into_inner());
        for _round in 0..8 {
            let mut reached = vec![false; len];
            self.reach_from(entry, &mut reached);
            if reached.iter().all(|&r| r) {
                return;
            }
            for node in 0..len as u32 {
                if reached[node as usize] {
                    continue;
                }
                // Near hosts first: its own neighbours (near it when it was inserted), then
                // theirs, then the best nodes a search for it finds (all reachable).
                let hosts: Vec<u32> = self
                    .base_list(node)
                    .into_iter()
                    .filter(|&h| reached[h as usize])
                    .collect();
                let mut linked = self.append(node, &hosts, &mut incoming);
                if !linked {
                    let second: Vec<u32> = hosts.iter().flat_map(|&h| self.base_list(h)).collect();
                    linked = self.append(node, &second, &mut incoming);
                }
                let mut found = Vec::new();
                if !linked {
                    let start = self.descend(node, entry, top);
                    self.search_level(node, start, 0, &mut scratch, linalg::dot);
                    found.extend(scratch.found.iter().map(|s| s.node));
                    linked = self.append(node, &found, &mut incoming);
                }
                if !linked {
                    linked = self.evict(node, &hosts, &mut incoming)
                        || self.evict(node, &found, &mut incoming);
                }
                if linked {
                    self.reach_from(node, &mut reached);
                }
            }
        }
    }

    /// The base-level list of `node`, copied.
    fn base_list(&self, node: u32) -> Vec<u32> {
        let mut out = Vec::new();
        self.neighbours_into(node, 0, &mut out);
        out
    }

    /// Marks every node reachable on the base level from `from` in `reached`.
    fn reach_from(&self, from: u32, reached: &mut [bool]) {
        let mut stack = vec![from];
        reached[from as usize] = true;
        let mut list = Vec::new();
        while let Some(node) = stack.pop() {
            self.neighbours_into(node, 0, &mut list);
            for &next in &list {
                if !reached[next as usize] {
                    reached[next as usize] = true;
                    stack.push(next);
                }
            }
        }
    }

    /// The base-level node a greedy descent for `node`'s vector reaches from `entry`.
    fn descend(&self, node: u32, entry: u32, top: usize) -> Scored {
        let query = self.vectors.of(node);
        let score = |n: u32| Scored {
            score: linalg::dot(query, self.vectors.of(n)),
            node: n,
        };
        let mut best = score(entry);
        let mut list = Vec::new();
        for level in (1..=top).rev() {
            loop {
                self.neighbours_into(best.node, level, &mut list);
                let next = list
                    .iter()
                    .map(|&n| score(n))
                    .filter(|s| s.node != node)
                    .max();
                match next {
                    Some(next) if next > best => best = next,
                    _ => break,
                }
            }
        }
        best
    }

    /// Appends `node` to the first of `hosts` (other than itself) with room on the base
    /// level; returns whether one had room.
    fn append(&self, node: u32, hosts: &[u32], incoming: &mut [u32]) -> bool {
        for &host in hosts.iter().filter(|&&h| h != node) {
            let list = self.list(host, 0);
            let count = list[0].load(Relaxed) as usize;
            if list[1..=count].iter().any(|w| w.load(Relaxed) == node) {
                continue;
            }
            if count < list.len() - 1 {
                list[1 + count].store(node, Relaxed);
                list[0].store(count as u32 + 1, Relaxed);
                incoming[node as usize] += 1;
                return true;
            }
        }
        false
    }

    /// Gives `node`, in the first of `hosts` that has one, the slot of the neighbour with the
    /// most incoming links (at least two); returns whether one had such a slot.
    fn evict(&self, node: u32, hosts: &[u32], incoming: &mut [u32]) -> bool {
        for &host in hosts.iter().filter(|&&h| h != node) {
            let list = self.list(host, 0);
            let count = list[0].load(Relaxed) as usize;
            let links = |i: usize| incoming[list[1 + i].load(Relaxed) as usize];
            let slot = (0..count)
                .max_by_key(|&i| links(i))
                .filter(|&i| links(i) >= 2);
            if let Some(slot) = slot {
                let evicted = list[1 + slot].swap(node, Relaxed);
                incoming[evicted as usize] -= 1;
                incoming[node as usize] += 1;
                return true;
            }
        }
        false
    }

    /// The finished graph in the walk's layout.
    fn into_flat(self) -> FlatGraph {
        let len = self.levels.len();
        let (entry, top) = self.entry.into_inner().unwrap_or_else(|e| e.into_inner());
        let stride = 1 + 2 * self.m;
        // Collected in place: the buffer (on huge pages, see `new`) is reused.
        let base: Vec<u32> = self.base.into_iter().map(AtomicU32::into_inner).collect();
        let mut upper = Vec::with_capacity(top);
        for level in 1..=top {
            let lists = (0..len as u32)
                .filter(|&node| self.levels[node as usize] as usize >= level)
                .map(|node| {
                    let stride = 1 + self.m;
                    let at = self.upper_at[node as usize] + (level - 1) * stride;
                    let list = &self.upper[at..at + stride];
                    let count = list[0].load(Relaxed) as usize;
                    let neighbours: Vec<u32> =
                        list[1..=count].iter().map(|w| w.load(Relaxed)).collect();
                    (node, neighbours)
                });
            upper.push(UpperLevel::from_lists(lists));
        }
        FlatGraph::from_parts(stride, base, upper, entry, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::exact::{self, Matrix};

    /// `n × d` rows: gaussian directions with log-normal norms (xorshift64*, Box-Muller).
    fn catalogue(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut state = seed | 1;
        let mut uniform = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            ((state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 + 0.5) / (1u64 << 24) as f32
        };
        let mut gauss = move || {
            let (u, v) = (uniform(), uniform());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        };
        let mut out = Vec::with_capacity(n * d);
        for _ in 0..n {
            let scale = (0.5 * gauss()).exp();
            out.extend((0..d).map(|_| gauss() * scale));
        }
        out
    }

    fn params(m: usize) -> BuildParams {
        BuildParams {
            m,
            ef_construction: 64,
            seed: 7,
        }
    }

    fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    /// Nodes reachable from the entry point over every level's links.
    fn reachable(graph: &FlatGraph) -> usize {
        let mut seen = vec![false; graph.len()];
        let mut stack = vec![graph.entry()];
        seen[graph.entry() as usize] = true;
        let mut count = 1;
        while let Some(node) = stack.pop() {
            for level in 0..=graph.upper_levels() {
                for &next in graph.neighbours(node, level) {
                    if !seen[next as usize] {
                        seen[next as usize] = true;
                        count += 1;
                        stack.push(next);
                    }
                }
            }
        }
        count
    }

    #[test]
    fn degrees_stay_in_bounds_and_every_node_is_reachable() {
        let (n, d) = (4_000, 16);
        let data = catalogue(n, d, 1);
        for (threads, m) in [(1, 4), (1, 16), (4, 8), (4, 16)] {
            let graph = on_threads(threads, || build(&data, d, n, params(m)));
            assert_eq!((graph.len(), graph.base_width()), (n, 2 * m));
            assert!(
                graph.upper_levels() >= 1,
                "{n} nodes reach a level above the base"
            );
            for node in 0..n as u32 {
                for level in 0..=graph.upper_levels() {
                    let list = graph.neighbours(node, level);
                    let cap = if level == 0 { 2 * m } else { m };
                    assert!(
                        list.len() <= cap,
                        "node {node} level {level}: {}",
                        list.len()
                    );
                    assert!(!list.contains(&node), "node {node} links to itself");
                    let mut sorted = list.to_vec();
                    sorted.sort_unstable();
                    sorted.dedup();
                    assert_eq!(sorted.len(), list.len(), "node {node}: a repeated link");
                }
                assert!(
                    !graph.neighbours(node, 0).is_empty(),
                    "node {node} has no links"
                );
            }
            assert_eq!(reachable(&graph), n, "{threads} threads, M = {m}");
        }
    }

    #[test]
    fn one_thread_and_one_seed_build_the_same_graph() {
        let (n, d) = (2_000, 8);
        let data = catalogue(n, d, 2);
        let once = on_threads(1, || build(&data, d, n, params(8))).to_bytes(0);
        let again = on_threads(1, || build(&data, d, n, params(8))).to_bytes(0);
        assert_eq!(once, again);
        let other_seed = BuildParams {
            seed: 8,
            ..params(8)
        };
        let other = on_threads(1, || build(&data, d, n, other_seed)).to_bytes(0);
        assert_ne!(once, other);
    }

    #[test]
    fn a_broad_walk_finds_the_exact_top_10_on_any_thread_count() {
        let (n, d) = (10_000, 24);
        let data = catalogue(n, d, 3);
        let items = Matrix::new(&data, n, d).unwrap();
        let queries = catalogue(200, d, 4);
        for threads in [1, 3] {
            let graph = on_threads(threads, || build(&data, d, n, params(16)));
            let (mut hit, mut total) = (0, 0);
            for q in queries.chunks_exact(d) {
                let truth = exact::top_k(items, q, 10, &[]).unwrap();
                let found = graph.search(&crate::index::graph::Walk {
                    vectors: &data,
                    rows: None,
                    dim: d,
                    query: q,
                    ef: 128,
                    allowed: None,
                    two_hop: false,
                    codes: None,
                    rescore: 0,
                });
                let found: Vec<usize> = found.iter().take(10).map(|s| s.node as usize).collect();
                hit += truth.iter().filter(|h| found.contains(&h.row)).count();
                total += truth.len();
            }
            let recall = hit as f64 / total as f64;
            assert!(recall >= 0.97, "{threads} threads: recall@10 {recall}");
        }
    }

    #[test]
    fn the_pool_walk_finds_what_the_two_heap_walk_finds() {
        // Unfiltered walks run on one sorted pool; a filter that keeps everything takes the
        // two-heap walk (hnswlib's). Both expand the same nodes, so they return the same
        // nodes with the same scores, ties and duplicate vectors included.
        let (n, d) = (3_000, 8);
        let mut data = catalogue(n, d, 5);
        data.copy_within(0..100 * d, 1_000 * d);
        let graph = build(&data, d, n, params(6));
        let codes = crate::index::codes::Codes::new(&data, d);
        let keep_all = |_: u32| true;
        for (i, q) in catalogue(60, d, 6).chunks_exact(d).enumerate() {
            for ef in [1, 10, 37, 200] {
                let walk = crate::index::graph::Walk {
                    vectors: &data,
                    rows: None,
                    dim: d,
                    query: q,
                    ef,
                    allowed: None,
                    two_hop: false,
                    codes: (i % 2 == 0).then_some(&codes),
                    rescore: 0,
                };
                let pool = graph.search(&walk);
                let heaps = graph.search(&crate::index::graph::Walk {
                    allowed: Some(&keep_all),
                    ..walk
                });
                let bits = |v: &[Scored]| -> Vec<(u32, u32)> {
                    v.iter().map(|s| (s.node, s.score.to_bits())).collect()
                };
                assert_eq!(bits(&pool), bits(&heaps), "query {i}, ef {ef}");
                assert_eq!(pool.len(), ef.min(n));
            }
        }
    }

    #[test]
    fn tiny_and_degenerate_inputs_build() {
        assert_eq!(build(&[], 4, 0, params(4)).len(), 0);
        let one = build(&[1.0, 2.0], 2, 1, params(4));
        assert_eq!((one.len(), one.neighbours(0, 0).len()), (1, 0));
        // Identical vectors and zeros: ties everywhere, still a connected graph.
        let same = vec![0.5f32; 300 * 4];
        let graph = build(&same, 4, 300, params(4));
        assert_eq!(reachable(&graph), 300);
        let zeros = vec![0.0f32; 300 * 4];
        assert_eq!(reachable(&build(&zeros, 4, 300, params(4))), 300);
    }

    #[test]
    fn levels_follow_the_geometric_law() {
        let n = 200_000;
        let above = (0..n).filter(|&i| level_of(9, i, 16) >= 1).count();
        // P(level >= 1) = 1/16.
        let share = above as f64 / n as f64;
        assert!((share - 1.0 / 16.0).abs() < 0.005, "{share}");
        assert!((0..n).all(|i| level_of(9, i, 2) <= MAX_LEVEL));
    }
}

// Over 400 lines because the flat file's writer, reader and the walk share one private layout.
//! Best-first search over the HNSW graph in its flat layout, which [`crate::index::build`]
//! produces and [`crate::index::file`] saves.
//!
//! The base level is one fixed-stride table (a node's neighbour count, then its neighbours);
//! visits are epoch-stamped in a per-thread array; an unfiltered walk keeps its candidates and
//! results in one sorted [`crate::index::pool`], a filtered one in hnswlib's two heaps (its
//! candidates may be nodes its results cannot hold); the next candidate's list is prefetched
//! while the current one is expanded, and each neighbour's vector a few neighbours before it
//! is scored; the walk scores int8 codes of the vectors ([`crate::index::codes`], a quarter of
//! the memory traffic; with VNNI byte dot products against an int8 copy of the query where the
//! CPU has AVX-512 VNNI, a third of the instructions) and the results are rescored with
//! [`linalg::dot`] (AVX2+FMA where the CPU has it), the exact scan's dot product. (Searching through usearch, which built the
//! graph before, measured 3-4x slower than hnswlib: a hash set of visited nodes, no prefetch,
//! two indirect calls per distance.)

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;

use crate::index::codes::{Codes, QueryBytes};
use crate::index::pages;
use crate::index::pool::{self, Pool};
use crate::nn::linalg;

/// The graph over local nodes `0..len` (node `i` is item row `start + i` of its index).
pub struct FlatGraph {
    /// Entries per node in `base`: the neighbour count, then room for the base level's
    /// maximum number of neighbours.
    stride: usize,
    base: Vec<u32>,
    /// `upper[l - 1]` holds level `l`.
    upper: Vec<UpperLevel>,
    entry: u32,
    len: usize,
}

/// One level above the base: few nodes, so a map from node to its slice of `neighbours`.
pub(crate) struct UpperLevel {
    slots: FxHashMap<u32, (u32, u32)>,
    neighbours: Vec<u32>,
}

impl UpperLevel {
    /// The level holding each `(node, neighbours)` list.
    pub(crate) fn from_lists(lists: impl Iterator<Item = (u32, Vec<u32>)>) -> Self {
        let mut slots = FxHashMap::default();
        let mut neighbours = Vec::new();
        for (node, list) in lists {
            let offset = neighbours.len() as u32;
            neighbours.extend_from_slice(&list);
            slots.insert(node, (offset, list.len() as u32));
        }
        Self { slots, neighbours }
    }

    fn of(&self, node: u32) -> &[u32] {
        match self.slots.get(&node) {
            Some(&(offset, count)) => &self.neighbours[offset as usize..(offset + count) as usize],
            None => &[],
        }
    }
}

/// A node and its inner product with the query; greater is better (ties to the lower node).
#[derive(Clone, Copy, Debug)]
pub struct Scored {
    pub score: f32,
    pub node: u32,
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.node.cmp(&self.node))
    }
}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Scored {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scored {}

const FLAT_MAGIC: &[u8; 8] = b"DPRFLAT1";

fn push_words(out: &mut Vec<u8>, values: &[u32]) {
    out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
}

/// Little-endian reads over a byte slice that fail instead of running off its end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or("file too short")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u64(&mut self) -> Result<usize, String> {
        let raw = u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"));
        usize::try_from(raw).map_err(|_| "value too large".to_string())
    }

    fn words(&mut self, n: usize) -> Result<Vec<u32>, String> {
        let raw = self.take(n.checked_mul(4).ok_or("value too large")?)?;
        let words = raw.chunks_exact(4);
        Ok(pages::collected(words.map(|w| {
            u32::from_le_bytes(w.try_into().expect("4 bytes"))
        })))
    }
}

/// One search's inputs (see [`FlatGraph::search`]).
#[derive(Clone, Copy)]
pub struct Walk<'a> {
    /// Node `i`'s vector is `vectors[i * dim..(i + 1) * dim]`, or with `rows = Some((rows,
    /// base))`, `vectors[(rows[i] - base) * dim..]` (a graph over some rows of a table).
    pub vectors: &'a [f32],
    pub rows: Option<(&'a [u32], usize)>,
    pub dim: usize,
    pub query: &'a [f32],
    /// The breadth.
    pub ef: usize,
    /// Which nodes may be returned (all when `None`).
    pub allowed: Option<&'a dyn Fn(u32) -> bool>,
    pub two_hop: bool,
    /// Codes of the vectors to score the walk on (the results are rescored exactly).
    pub codes: Option<&'a Codes>,
    /// With `codes`: how many of the best results by the codes' scores are rescored and
    /// returned (0: all of them).
    pub rescore: usize,
}

impl<'a> Walk<'a> {
    /// Node `node`'s vector.
    #[inline(always)]
    fn vector(&self, node: u32) -> &'a [f32] {
        let at = match self.rows {
            None => node as usize,
            Some((rows, base)) => rows[node as usize] as usize - base,
        };
        &self.vectors[at * self.dim..][..self.dim]
    }
}

/// Per-thread search state, reused across searches (and across indexes).
#[derive(Default)]
struct Scratch {
    visited: Vec<u16>,
    epoch: u16,
    candidates: BinaryHeap<Scored>,
    results: BinaryHeap<Reverse<Scored>>,
    /// The unfiltered walk's candidates and results in one.
    pool: Pool,
    /// The current node's neighbours not visited before.
    fresh: Vec<u32>,
}

impl Scratch {
    /// Starts a search over `len` nodes: every node unvisited, both heaps empty.
    fn start(&mut self, len: usize) {
        if self.visited.len() < len {
            self.visited.resize(len, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.visited.fill(0);
            self.epoch = 1;
        }
        self.candidates.clear();
        self.results.clear();
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Asks the CPU to start loading `data` into the caches (every 64-byte line of it).
#[inline(always)]
pub(crate) fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let (start, bytes) = (data.as_ptr().cast::<i8>(), std::mem::size_of_val(data));
        for offset in (0..bytes).step_by(64) {
            // SAFETY: a prefetch is a hint that never faults; the pointer is in bounds anyway.
            #[allow(unused_unsafe)]
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    start.wrapping_add(offset),
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// How many neighbours ahead of the one being scored the walk prefetches.
const AHEAD: usize = 8;

/// Scores each of `nodes` in order and hands it to `each`, with the data of the node
/// [`AHEAD`] places later already requested (`fetch`), so that cache misses overlap.
#[inline(always)]
pub(crate) fn score_ahead(
    nodes: &[u32],
    score: impl Fn(u32) -> f32,
    fetch: impl Fn(u32),
    mut each: impl FnMut(Scored),
) {
    for &node in nodes.iter().take(AHEAD) {
        fetch(node);
    }
    for (i, &node) in nodes.iter().enumerate() {
        if let Some(&later) = nodes.get(i + AHEAD) {
            fetch(later);
        }
        each(Scored {
            score: score(node),
            node,
        });
    }
}

impl FlatGraph {
    /// The graph from its parts: `base` holds `stride` words per node (its neighbour count,
    /// then its neighbours), `upper[l - 1]` level `l`.
    pub(crate) fn from_parts(
        stride: usize,
        base: Vec<u32>,
        upper: Vec<UpperLevel>,
        entry: u32,
        len: usize,
    ) -> Self {
        debug_assert_eq!(base.len(), len * stride);
        Self {
            stride,
            base,
            upper,
            entry,
            len,
        }
    }

    /// Number of nodes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The node every search starts from.
    #[cfg(test)]
    pub(crate) fn entry(&self) -> u32 {
        self.entry
    }

    /// Levels above the base.
    #[cfg(test)]
    pub(crate) fn upper_levels(&self) -> usize {
        self.upper.len()
    }

    /// Most neighbours a node keeps on the base level.
    #[cfg(test)]
    pub(crate) fn base_width(&self) -> usize {
        self.stride - 1
    }

    /// `node`'s neighbours on `level` (0: the base).
    #[cfg(test)]
    pub(crate) fn neighbours(&self, node: u32, level: usize) -> &[u32] {
        if level == 0 {
            self.base_neighbours(node)
        } else {
            self.upper[level - 1].of(node)
        }
    }

    /// The copy as bytes, for [`FlatGraph::from_bytes`]: a magic tag, then little-endian
    /// `u64` start, len, stride, entry and level count, the base table as `u32`s, and per upper
    /// level its node and neighbour counts, `(node, offset, count)` triples and neighbours.
    pub fn to_bytes(&self, start: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + 4 * self.base.len());
        out.extend_from_slice(FLAT_MAGIC);
        for value in [
            start,
            self.len,
            self.stride,
            self.entry as usize,
            self.upper.len(),
        ] {
            out.extend_from_slice(&(value as u64).to_le_bytes());
        }
        push_words(&mut out, &self.base);
        for level in &self.upper {
            let mut slots: Vec<(u32, (u32, u32))> =
                level.slots.iter().map(|(&n, &s)| (n, s)).collect();
            slots.sort_unstable();
            let counts = [slots.len() as u64, level.neighbours.len() as u64];
            let triples: Vec<u32> = slots
                .iter()
                .flat_map(|&(node, (offset, count))| [node, offset, count])
                .collect();
            out.extend(counts.iter().flat_map(|c| c.to_le_bytes()));
            push_words(&mut out, &triples);
            push_words(&mut out, &level.neighbours);
        }
        out
    }

    /// Reads [`FlatGraph::to_bytes`] output, checking every count and node id; returns the
    /// first row with the graph, or says what does not fit.
    pub fn from_bytes(bytes: &[u8]) -> Result<(usize, Self), String> {
        let mut reader = Reader { bytes, at: 0 };
        if reader.take(FLAT_MAGIC.len())? != FLAT_MAGIC {
            return Err("not a dpr flat HNSW graph".into());
        }
        let header: Vec<usize> = (0..5).map(|_| reader.u64()).collect::<Result<_, _>>()?;
        let [start, len, stride, entry, levels] = header[..] else {
            unreachable!("five header fields")
        };
        if len > u32::MAX as usize
            || start.checked_add(len).is_none()
            || stride == 0
            || (len > 0 && entry >= len)
            || levels > 64
        {
            return Err("bad header".into());
        }
        let node_ok = |n: u32| (n as usize) < len;
        let base = reader.words(len.checked_mul(stride).ok_or("bad header")?)?;
        for slot in base.chunks_exact(stride) {
            let count = slot[0] as usize;
            if count >= stride || !slot[1..=count].iter().all(|&n| node_ok(n)) {
                return Err("bad base-level neighbour list".into());
            }
        }
        let mut upper = Vec::with_capacity(levels);
        for _ in 0..levels {
            let (nodes, total) = (reader.u64()?, reader.u64()?);
            let triples = reader.words(nodes.checked_mul(3).ok_or("bad level")?)?;
            let neighbours = reader.words(total)?;
            if !neighbours.iter().all(|&n| node_ok(n)) {
                return Err("bad upper-level neighbour".into());
            }
            let mut slots = FxHashMap::default();
            for t in triples.chunks_exact(3) {
                let (node, offset, count) = (t[0], t[1], t[2]);
                if !node_ok(node) || offset as usize + count as usize > total {
                    return Err("bad upper-level node".into());
                }
                slots.insert(node, (offset, count));
            }
            upper.push(UpperLevel { slots, neighbours });
        }
        if reader.at != bytes.len() {
            return Err("trailing bytes".into());
        }
        Ok((
            start,
            Self {
                stride,
                base,
                upper,
                entry: entry as u32,
                len,
            },
        ))
    }

    fn base_neighbours(&self, node: u32) -> &[u32] {
        let slot = &self.base[node as usize * self.stride..][..self.stride];
        &slot[1..1 + slot[0] as usize]
    }

    /// Up to `ef` nodes that `allowed` keeps (all when `None`), found by the HNSW walk with
    /// breadth `ef`, best first, with exact scores (`linalg::dot` of the query and the
    /// vector; the walk itself scores `codes` when given). With `two_hop`, a disallowed neighbour is not scored; its own allowed neighbours are, up to
    /// a node's base-level width per expansion (ACORN-1); without, every neighbour is scored
    /// and only allowed ones enter the results (hnswlib's filtered search).
    ///
    /// # Panics
    /// If `vectors` holds fewer than `len` rows of `dim` floats (or lacks a row `rows`
    /// names), `codes` fewer than `len` rows, or `query` is not `dim` long.
    pub fn search(&self, walk: &Walk<'_>) -> Vec<Scored> {
        let (vectors, dim, query) = (walk.vectors, walk.dim, walk.query);
        assert!(query.len() == dim);
        match walk.rows {
            None => assert!(vectors.len() >= self.len * dim),
            Some((rows, _)) => assert!(rows.len() >= self.len),
        }
        if self.len == 0 || walk.ef == 0 {
            return Vec::new();
        }
        let walk = &Walk {
            two_hop: walk.two_hop && walk.allowed.is_some(),
            ..*walk
        };
        let mut scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        let vector = |node: u32| walk.vector(node);
        let mut found = match walk.codes {
            None => {
                #[cfg(target_arch = "x86_64")]
                if linalg::x86::has_avx2_fma() {
                    // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
                    unsafe { self.walk_avx2(walk, &mut scratch) }
                } else {
                    self.walk_with(
                        walk,
                        &mut scratch,
                        |n| linalg::dot(query, vector(n)),
                        |n| prefetch(vector(n)),
                    )
                }
                #[cfg(not(target_arch = "x86_64"))]
                self.walk_with(
                    walk,
                    &mut scratch,
                    |n| linalg::dot(query, vector(n)),
                    |n| prefetch(vector(n)),
                )
            }
            Some(codes) => {
                let scaled = codes.scaled(query);
                #[cfg(target_arch = "x86_64")]
                let mut found = if linalg::x86::has_avx512_vnni() {
                    let bytes = codes.query_bytes(&scaled);
                    // SAFETY: the CPU supports AVX-512 F, BW and VNNI (checked at run time).
                    unsafe { self.walk_codes_vnni(walk, &mut scratch, codes, &bytes) }
                } else if linalg::x86::has_avx2_fma() {
                    // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
                    unsafe { self.walk_codes_avx2(walk, &mut scratch, codes, &scaled) }
                } else {
                    self.walk_codes(walk, &mut scratch, codes, &scaled)
                };
                #[cfg(not(target_arch = "x86_64"))]
                let mut found = self.walk_codes(walk, &mut scratch, codes, &scaled);
                // The codes only steered the walk: the best `rescore` by their scores are
                // scored exactly, and only exact scores are handed out.
                if walk.rescore > 0 && found.len() > walk.rescore {
                    found.sort_unstable_by(|a, b| b.cmp(a));
                    found.truncate(walk.rescore);
                }
                found.iter().for_each(|s| prefetch(vector(s.node)));
                for s in &mut found {
                    s.score = linalg::dot(query, vector(s.node));
                }
                found
            }
        };
        SCRATCH.with(|s| *s.borrow_mut() = scratch);
        found.sort_unstable_by(|a, b| b.cmp(a));
        found
    }

    /// [`Self::walk_with`] on exact scores, compiled for AVX2+FMA so that the dot product
    /// inlines into the loop.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn walk_avx2(&self, walk: &Walk<'_>, scratch: &mut Scratch) -> Vec<Scored> {
        let query = walk.query;
        let vector = |node: u32| walk.vector(node);
        // SAFETY: this function only runs where AVX2 and FMA are present.
        let score = |node: u32| unsafe { linalg::x86::dot(query, vector(node)) };
        self.walk_with(walk, scratch, score, |node| prefetch(vector(node)))
    }

    /// [`Self::walk_with`] on the scores of `codes` (against the `scaled` query).
    fn walk_codes(
        &self,
        walk: &Walk<'_>,
        scratch: &mut Scratch,
        codes: &Codes,
        scaled: &[f32],
    ) -> Vec<Scored> {
        let score = |node: u32| Codes::score(scaled, codes.of(node));
        self.walk_with(walk, scratch, score, |node| prefetch(codes.of(node)))
    }

    /// [`Self::walk_codes`] compiled for AVX2+FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn walk_codes_avx2(
        &self,
        walk: &Walk<'_>,
        scratch: &mut Scratch,
        codes: &Codes,
        scaled: &[f32],
    ) -> Vec<Scored> {
        // SAFETY: this function only runs where AVX2 and FMA are present.
        let score = |node: u32| unsafe { Codes::score_avx2(scaled, codes.of(node)) };
        self.walk_with(walk, scratch, score, |node| prefetch(codes.of(node)))
    }

    /// [`Self::walk_with`] on the codes' VNNI scores ([`Codes::score_vnni`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vnni")]
    unsafe fn walk_codes_vnni(
        &self,
        walk: &Walk<'_>,
        scratch: &mut Scratch,
        codes: &Codes,
        query: &QueryBytes,
    ) -> Vec<Scored> {
        // SAFETY: this function only runs where AVX-512 F, BW and VNNI are present.
        let score = |node: u32| unsafe { codes.score_vnni(query, node) };
        self.walk_with(walk, scratch, score, |node| prefetch(codes.of(node)))
    }

    #[inline(always)]
    fn walk_with(
        &self,
        walk: &Walk<'_>,
        scratch: &mut Scratch,
        score: impl Fn(u32) -> f32,
        fetch: impl Fn(u32),
    ) -> Vec<Scored> {
        let Walk {
            ef,
            allowed,
            two_hop,
            ..
        } = *walk;
        let keeps = |node: u32| allowed.is_none_or(|keep| keep(node));

        // Greedy descent through the upper levels.
        let mut best = Scored {
            score: score(self.entry),
            node: self.entry,
        };
        for level in self.upper.iter().rev() {
            loop {
                let mut moved = false;
                for &node in level.of(best.node) {
                    let candidate = Scored {
                        score: score(node),
                        node,
                    };
                    if candidate > best {
                        best = candidate;
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }

        // Best-first search of the base level with breadth `ef`.
        scratch.start(self.len);
        if allowed.is_none() && self.len <= pool::MAX_NODES {
            return self.walk_pool(best, ef, scratch, score, fetch);
        }
        let Scratch {
            visited,
            epoch,
            candidates,
            results,
            fresh,
            ..
        } = scratch;
        let epoch = *epoch;
        visited[best.node as usize] = epoch;
        candidates.push(best);
        if keeps(best.node) {
            results.push(Reverse(best));
        }
        while let Some(current) = candidates.pop() {
            if results.len() >= ef && current < results.peek().expect("non-empty").0 {
                break;
            }
            // The next candidate's list is likely read next: start loading it now.
            if let Some(next) = candidates.peek() {
                prefetch(&self.base[next.node as usize * self.stride..][..self.stride]);
            }
            // Mark the unvisited neighbours, then score them with the vectors of the next
            // few already on their way, so that cache misses overlap.
            fresh.clear();
            let width = self.stride - 1;
            for &node in self.base_neighbours(current.node) {
                let seen = &mut visited[node as usize];
                if *seen == epoch {
                    continue;
                }
                *seen = epoch;
                if !two_hop || keeps(node) {
                    fresh.push(node);
                    continue;
                }
                // ACORN-1: reach past a disallowed neighbour to its allowed neighbours.
                for &second in self.base_neighbours(node) {
                    if fresh.len() >= width {
                        break;
                    }
                    let seen = &mut visited[second as usize];
                    if *seen != epoch && keeps(second) {
                        *seen = epoch;
                        fresh.push(second);
                    }
                }
            }
            score_ahead(fresh, &score, &fetch, |candidate| {
                let worst = results.peek().map(|r| r.0);
                if results.len() < ef || worst.is_none_or(|w| candidate > w) {
                    candidates.push(candidate);
                    if keeps(candidate.node) {
                        results.push(Reverse(candidate));
                        if results.len() > ef {
                            results.pop();
                        }
                    }
                }
            });
        }
        results.drain().map(|r| r.0).collect()
    }

    /// The unfiltered base-level walk from `start`: [`Self::walk_with`]'s loop on one
    /// [`Pool`] instead of two heaps (the same nodes expanded, best first).
    #[inline(always)]
    fn walk_pool(
        &self,
        start: Scored,
        ef: usize,
        scratch: &mut Scratch,
        score: impl Fn(u32) -> f32,
        fetch: impl Fn(u32),
    ) -> Vec<Scored> {
        let Scratch {
            visited,
            epoch,
            pool,
            fresh,
            ..
        } = scratch;
        let epoch = *epoch;
        visited[start.node as usize] = epoch;
        pool.reset(ef);
        pool.insert(start);
        while let Some(current) = pool.expand_next() {
            if let Some(next) = pool.peek_next() {
                prefetch(&self.base[next.node as usize * self.stride..][..self.stride]);
            }
            fresh.clear();
            for &node in self.base_neighbours(current.node) {
                let seen = &mut visited[node as usize];
                if *seen != epoch {
                    *seen = epoch;
                    fresh.push(node);
                }
            }
            score_ahead(fresh, &score, &fetch, |found| pool.insert(found));
        }
        pool.found().collect()
    }
}

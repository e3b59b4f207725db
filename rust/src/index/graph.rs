// Over 400 lines because the flat file's writer, reader and the walk share one private layout.
//! Best-first search over a flat copy of the HNSW graph that usearch built.
//!
//! usearch builds, saves and loads the graph; searching it through usearch measured 3-4x
//! slower than hnswlib at equal recall (`benches/results/retrieval.md` before this module): it
//! tracks visited nodes in a hash set, prefetches no vectors, and reaches every distance
//! through two indirect calls into a kernel compiled for baseline x86-64. Here the base level
//! is one fixed-stride table (a node's neighbour count, then its neighbours), visits are
//! epoch-stamped in a per-thread array, the vectors of a node's unvisited neighbours are all
//! prefetched before any is scored, and scores use [`linalg::dot`] (AVX2+FMA where the CPU
//! has it).

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;

use crate::nn::linalg;

/// The graph over local nodes `0..len` (usearch key `start + i` is node `i`).
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
        Ok(raw
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes")))
            .collect())
    }
}

/// One search's inputs (see [`FlatGraph::search`]).
struct Walk<'a> {
    vectors: &'a [f32],
    dim: usize,
    query: &'a [f32],
    ef: usize,
    allowed: Option<&'a dyn Fn(u32) -> bool>,
    two_hop: bool,
}

/// Per-thread search state, reused across searches (and across indexes).
#[derive(Default)]
struct Scratch {
    visited: Vec<u16>,
    epoch: u16,
    candidates: BinaryHeap<Scored>,
    results: BinaryHeap<Reverse<Scored>>,
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

/// Asks the CPU to start loading `data` into the caches.
#[inline(always)]
pub(crate) fn prefetch(data: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in data.chunks(16) {
        // SAFETY: a prefetch is a hint that never faults; the pointer is in bounds anyway.
        #[allow(unused_unsafe)]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
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
    /// breadth `ef`, best first. `vectors` holds node `i`'s vector at `i * dim`. With
    /// `two_hop`, a disallowed neighbour is not scored; its own allowed neighbours are, up to
    /// a node's base-level width per expansion (ACORN-1); without, every neighbour is scored
    /// and only allowed ones enter the results (hnswlib's filtered search).
    ///
    /// # Panics
    /// If `vectors` holds fewer than `len` rows of `dim` floats, or `query` is not `dim` long.
    pub fn search(
        &self,
        vectors: &[f32],
        dim: usize,
        query: &[f32],
        ef: usize,
        allowed: Option<&dyn Fn(u32) -> bool>,
        two_hop: bool,
    ) -> Vec<Scored> {
        assert!(vectors.len() >= self.len * dim && query.len() == dim);
        if self.len == 0 || ef == 0 {
            return Vec::new();
        }
        let walk = Walk {
            vectors,
            dim,
            query,
            ef,
            allowed,
            two_hop: two_hop && allowed.is_some(),
        };
        let mut scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        #[cfg(target_arch = "x86_64")]
        let found = if linalg::x86::has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            unsafe { self.walk_avx2(&walk, &mut scratch) }
        } else {
            self.walk(&walk, &mut scratch, linalg::dot)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let found = self.walk(&walk, &mut scratch, linalg::dot);
        SCRATCH.with(|s| *s.borrow_mut() = scratch);
        found
    }

    /// [`Self::walk`] compiled for AVX2+FMA, so that the dot product inlines into the loop.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn walk_avx2(&self, walk: &Walk<'_>, scratch: &mut Scratch) -> Vec<Scored> {
        // SAFETY: this function only runs where AVX2 and FMA are present.
        let dot = |a: &[f32], b: &[f32]| unsafe { linalg::x86::dot(a, b) };
        self.walk(walk, scratch, dot)
    }

    #[inline(always)]
    fn walk(
        &self,
        walk: &Walk<'_>,
        scratch: &mut Scratch,
        dot: impl Fn(&[f32], &[f32]) -> f32,
    ) -> Vec<Scored> {
        let Walk {
            vectors,
            dim,
            query,
            ef,
            allowed,
            two_hop,
        } = *walk;
        let vector = |node: u32| &vectors[node as usize * dim..][..dim];
        let keeps = |node: u32| allowed.is_none_or(|keep| keep(node));

        // Greedy descent through the upper levels.
        let mut best = Scored {
            score: dot(query, vector(self.entry)),
            node: self.entry,
        };
        for level in self.upper.iter().rev() {
            loop {
                let mut moved = false;
                for &node in level.of(best.node) {
                    let candidate = Scored {
                        score: dot(query, vector(node)),
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
        let Scratch {
            visited,
            epoch,
            candidates,
            results,
            fresh,
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
            // Mark the unvisited neighbours and prefetch all their vectors first, so that
            // their cache misses overlap instead of coming one after another.
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
                    prefetch(vector(node));
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
                        prefetch(vector(second));
                    }
                }
            }
            for &node in fresh.iter() {
                let candidate = Scored {
                    score: dot(query, vector(node)),
                    node,
                };
                let worst = results.peek().map(|r| r.0);
                if results.len() < ef || worst.is_none_or(|w| candidate > w) {
                    candidates.push(candidate);
                    if keeps(node) {
                        results.push(Reverse(candidate));
                        if results.len() > ef {
                            results.pop();
                        }
                    }
                }
            }
        }
        let mut found: Vec<Scored> = results.drain().map(|r| r.0).collect();
        found.sort_unstable_by(|a, b| b.cmp(a));
        found
    }
}

//! The candidate pool of an unfiltered best-first walk: the best `capacity` nodes found so
//! far, kept sorted (best first), each marked once it has been expanded.
//!
//! It stands in for hnswlib's pair of binary heaps (candidates to expand, results so far).
//! An unfiltered walk only ever expands nodes that are still among its best `ef`, so one
//! sorted array holds both, and its next candidate is the first unexpanded slot: no heap
//! pops, whose unpredictable branches were a fifth of a small graph's search time. Inserting
//! shifts the worse slots by one, a short move while `capacity` is a few hundred.

use crate::index::graph::Scored;

/// Set in a key once its node has been expanded.
const EXPANDED: u64 = 1;

/// Nodes a pool can hold: the node takes 31 bits of a key.
pub(crate) const MAX_NODES: usize = 1 << 31;

/// `found` as one integer that orders like [`Scored`] (greater is better, ties to the lower
/// node): the score's total-order bits, then the node inverted, then the expanded flag.
#[inline(always)]
fn key(found: Scored) -> u64 {
    let bits = found.score.to_bits();
    let ordered = if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    };
    (u64::from(ordered) << 32) | (u64::from(!found.node & 0x7FFF_FFFF) << 1)
}

#[inline(always)]
fn unkey(key: u64) -> Scored {
    let ordered = (key >> 32) as u32;
    let bits = if ordered >> 31 == 1 {
        ordered & !(1 << 31)
    } else {
        !ordered
    };
    Scored {
        score: f32::from_bits(bits),
        node: !((key as u32) >> 1) & 0x7FFF_FFFF,
    }
}

/// Best-first pool of at most `capacity` nodes below [`MAX_NODES`] (see the module docs).
#[derive(Default)]
pub(crate) struct Pool {
    /// Sorted from best to worst.
    keys: Vec<u64>,
    capacity: usize,
    /// Every key before it has been expanded.
    cursor: usize,
}

impl Pool {
    /// Empties the pool and sets how many nodes it keeps (at least one).
    pub(crate) fn reset(&mut self, capacity: usize) {
        self.keys.clear();
        self.capacity = capacity.max(1);
        self.keys.reserve(self.capacity + 1);
        self.cursor = 0;
    }

    /// Adds `found` (a node below [`MAX_NODES`], not in the pool) if the pool is not full or
    /// `found` beats its worst node, which it then drops.
    #[inline(always)]
    pub(crate) fn insert(&mut self, found: Scored) {
        debug_assert!((found.node as usize) < MAX_NODES);
        let key = key(found);
        if self.keys.len() >= self.capacity && self.keys.last().is_some_and(|&w| key < w) {
            return;
        }
        let at = self.keys.partition_point(|&k| k > key);
        self.keys.insert(at, key);
        if self.keys.len() > self.capacity {
            self.keys.pop();
        }
        self.cursor = self.cursor.min(at);
    }

    /// The best node not expanded yet, now marked expanded; `None` when every node is.
    #[inline(always)]
    pub(crate) fn expand_next(&mut self) -> Option<Scored> {
        while let Some(key) = self.keys.get_mut(self.cursor) {
            self.cursor += 1;
            if *key & EXPANDED == 0 {
                *key |= EXPANDED;
                return Some(unkey(*key));
            }
        }
        None
    }

    /// The node [`Self::expand_next`] would return, left unexpanded.
    #[inline(always)]
    pub(crate) fn peek_next(&self) -> Option<Scored> {
        self.keys[self.cursor.min(self.keys.len())..]
            .iter()
            .find(|&&k| k & EXPANDED == 0)
            .map(|&k| unkey(k))
    }

    /// The nodes in the pool, best first.
    pub(crate) fn found(&self) -> impl Iterator<Item = Scored> + '_ {
        self.keys.iter().map(|&k| unkey(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(score: f32, node: u32) -> Scored {
        Scored { score, node }
    }

    #[test]
    fn keeps_the_best_sorted_and_expands_best_first() {
        let mut pool = Pool::default();
        pool.reset(3);
        for (score, node) in [(0.5, 1), (0.9, 2), (0.1, 3), (0.7, 4)] {
            pool.insert(scored(score, node));
        }
        let nodes: Vec<u32> = pool.found().map(|s| s.node).collect();
        assert_eq!(nodes, vec![2, 4, 1]);
        assert_eq!(pool.peek_next().map(|s| s.node), Some(2));
        assert_eq!(pool.expand_next().map(|s| s.node), Some(2));
        assert_eq!(pool.expand_next().map(|s| s.node), Some(4));
        // A better node found later is expanded next, before the older worse one.
        pool.insert(scored(0.8, 5));
        assert_eq!(pool.peek_next().map(|s| s.node), Some(5));
        assert_eq!(pool.expand_next().map(|s| s.node), Some(5));
        // 1 fell out when 5 came in; nothing is left to expand.
        assert_eq!(pool.expand_next(), None);
        let nodes: Vec<u32> = pool.found().map(|s| s.node).collect();
        assert_eq!(nodes, vec![2, 5, 4]);
    }

    #[test]
    fn keys_order_like_scored_and_give_it_back() {
        let values = [
            f32::NEG_INFINITY,
            -3.5,
            -1e-30,
            -0.0,
            0.0,
            1e-30,
            0.25,
            7.0,
            f32::INFINITY,
        ];
        let nodes = [0, 1, 5, (MAX_NODES - 1) as u32];
        let all: Vec<Scored> = values
            .iter()
            .flat_map(|&score| nodes.iter().map(move |&node| scored(score, node)))
            .collect();
        for &a in &all {
            assert_eq!(unkey(key(a)).score.to_bits(), a.score.to_bits());
            assert_eq!(unkey(key(a)).node, a.node);
            assert_eq!(unkey(key(a) | EXPANDED).node, a.node);
            for &b in &all {
                assert_eq!(key(a).cmp(&key(b)), a.cmp(&b), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn ties_go_to_the_lower_node() {
        let mut pool = Pool::default();
        pool.reset(2);
        for node in [7, 3, 5] {
            pool.insert(scored(1.0, node));
        }
        let nodes: Vec<u32> = pool.found().map(|s| s.node).collect();
        assert_eq!(nodes, vec![3, 5]);
    }
}

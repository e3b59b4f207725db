//! What a history alone determines, remembered: a conversation re-prompts the same history
//! many times, and the backbone forward is most of a warm query's cost. The engine stores the
//! backbone's vector and the steering head's terms in it ([`crate::nn::steer`]); this module
//! only sees a fixed-length float vector per key.
//!
//! Keyed by the rows the backbone actually reads (the last `max_len` of the history), so two
//! histories that differ only before that window share an entry. Bounded (least recently used
//! entries are dropped), split into shards so that threads of a batch rarely wait on one lock,
//! and counted: hits and misses are what [`HistoryCache::stats`] reports.

use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use lru::LruCache;
use rustc_hash::FxBuildHasher;

/// Shards of a cache (each a lock and an LRU list); a power of two.
const SHARDS: usize = 16;

/// Counters and size of a [`HistoryCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Entries held now.
    pub size: usize,
    /// Most entries held (0: the cache is off).
    pub capacity: usize,
}

type Entries = LruCache<Box<[u32]>, Box<[f32]>, FxBuildHasher>;
type Shard = Mutex<Entries>;

/// A thread-safe bounded map from a history window to the backbone's vector for it.
pub struct HistoryCache {
    shards: Vec<Shard>,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl HistoryCache {
    /// A cache holding at most `capacity` vectors (0: none; every lookup computes).
    pub fn new(capacity: usize) -> Self {
        // Each shard gets an equal share, rounded up, so the total is at least `capacity`;
        // a small cache uses fewer shards rather than shards of one entry.
        let shards = if capacity == 0 {
            0
        } else {
            SHARDS.min(capacity.next_power_of_two())
        };
        let per_shard = capacity.div_ceil(shards.max(1));
        HistoryCache {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(LruCache::with_hasher(
                        NonZeroUsize::new(per_shard).expect("a shard holds at least one entry"),
                        FxBuildHasher,
                    ))
                })
                .collect(),
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, window: &[u32]) -> Option<MutexGuard<'_, Entries>> {
        if self.shards.is_empty() {
            return None;
        }
        let shard = &self.shards[FxBuildHasher.hash_one(window) as usize & (self.shards.len() - 1)];
        // A panic while holding the lock cannot leave an entry half written (insertions are
        // single calls), so a poisoned shard is still consistent.
        Some(shard.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Writes the vector for `window` into `out`: the cached one, or `compute(out)`'s result,
    /// which is then remembered. The lock is not held while computing.
    pub fn get_or_compute(
        &self,
        window: &[u32],
        out: &mut [f32],
        compute: impl FnOnce(&mut [f32]),
    ) {
        if let Some(mut shard) = self.shard(window) {
            if let Some(vector) = shard.get(window) {
                out.copy_from_slice(vector);
                self.hits.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        compute(out);
        if let Some(mut shard) = self.shard(window) {
            self.misses.fetch_add(1, Ordering::Relaxed);
            shard.put(window.into(), out.into());
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            size: self
                .shards
                .iter()
                .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
                .sum(),
            capacity: self.capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(value: f32) -> impl FnOnce(&mut [f32]) {
        move |out: &mut [f32]| out.fill(value)
    }

    #[test]
    fn a_hit_returns_the_computed_vector_without_computing() {
        let cache = HistoryCache::new(8);
        let mut out = [0.0f32; 3];
        cache.get_or_compute(&[1, 2, 3], &mut out, fill(7.0));
        assert_eq!(out, [7.0; 3]);
        let mut again = [0.0f32; 3];
        cache.get_or_compute(&[1, 2, 3], &mut again, |_| panic!("computed on a hit"));
        assert_eq!(again, [7.0; 3]);
        let mut other = [0.0f32; 3];
        cache.get_or_compute(&[1, 2], &mut other, fill(1.0));
        assert_eq!(other, [1.0; 3]);
        let stats = cache.stats();
        assert_eq!(
            (stats.hits, stats.misses, stats.size, stats.capacity),
            (1, 2, 2, 8)
        );
    }

    #[test]
    fn capacity_bounds_the_entries_and_zero_turns_it_off() {
        let cache = HistoryCache::new(40);
        let mut out = [0.0f32; 1];
        for row in 0..1000u32 {
            cache.get_or_compute(&[row, row + 1], &mut out, fill(row as f32));
        }
        let stats = cache.stats();
        assert!(stats.size <= 48 && stats.size >= 40, "{stats:?}");
        assert_eq!(stats.misses, 1000);

        let off = HistoryCache::new(0);
        let mut computed = 0;
        for _ in 0..3 {
            off.get_or_compute(&[5], &mut out, |o| {
                computed += 1;
                o[0] = 2.0
            });
        }
        assert_eq!(computed, 3);
        assert_eq!(
            off.stats(),
            CacheStats {
                hits: 0,
                misses: 0,
                size: 0,
                capacity: 0
            }
        );
    }

    #[test]
    fn many_threads_share_it_safely() {
        // Room for every key in every shard, so nothing is evicted: each of the 64 keys can
        // miss at most once per thread (threads racing on a key both compute it).
        let cache = HistoryCache::new(1024);
        std::thread::scope(|scope| {
            for t in 0..8u32 {
                let cache = &cache;
                scope.spawn(move || {
                    let mut out = [0.0f32; 2];
                    for i in 0..500u32 {
                        let key = [i % 32, t % 2];
                        cache.get_or_compute(&key, &mut out, |o| o.fill((i % 32 + t % 2) as f32));
                        assert_eq!(out, [(i % 32 + t % 2) as f32; 2]);
                    }
                });
            }
        });
        let stats = cache.stats();
        assert_eq!(stats.hits + stats.misses, 8 * 500);
        assert!(stats.misses <= 8 * 64, "{stats:?}");
    }
}

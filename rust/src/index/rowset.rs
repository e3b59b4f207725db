//! Allowed rows as data: a [`RowSet`] (a sorted row list when few rows pass, a bitset when
//! many do, with its exact size), and the [`Postings`] built at load time from which the
//! engine computes a filter's row set without a predicate call per catalogue row.

use crate::bundle::Attribute;
use crate::index::policy::{self, Filter};

/// A set of item rows, iterated in increasing order, with its exact size.
#[derive(Clone, Debug)]
pub enum RowSet {
    /// Sorted, unique rows.
    Sorted(Vec<u32>),
    /// Bit `r` of `words` set for row `r`; `count` bits are set.
    Bits { words: Vec<u64>, count: usize },
}

impl RowSet {
    /// The rows whose `mask` flag is set (row `r` is `mask[r]`): a list when at most
    /// a share [`policy::is_dense`] calls sparse are set, else a bitset.
    pub fn from_mask(mask: &[bool]) -> Self {
        // One pass packs the flags into words (16 at a time), the words' popcount decides.
        let words = pack_flags(as_bytes(mask));
        let count = words.iter().map(|w| w.count_ones() as usize).sum();
        if policy::is_dense(count, mask.len()) {
            return Self::Bits { words, count };
        }
        let mut rows = Vec::with_capacity(count);
        for (i, &w) in words.iter().enumerate() {
            rows.extend(word_rows(i, w).map(|r| r as u32));
        }
        Self::Sorted(rows)
    }

    /// Rows `0..universe` for which `keep` holds (tests and small inputs).
    pub fn from_fn(universe: usize, keep: impl Fn(usize) -> bool) -> Self {
        let mask: Vec<bool> = (0..universe).map(keep).collect();
        Self::from_mask(&mask)
    }

    /// Number of rows in the set.
    pub fn len(&self) -> usize {
        match self {
            Self::Sorted(rows) => rows.len(),
            Self::Bits { count, .. } => *count,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `row` is in the set (constant time for a bitset, a binary search for a list).
    #[inline]
    pub fn contains(&self, row: usize) -> bool {
        match self {
            Self::Sorted(rows) => u32::try_from(row).is_ok_and(|r| rows.binary_search(&r).is_ok()),
            Self::Bits { words, .. } => words
                .get(row / 64)
                .is_some_and(|w| w >> (row % 64) & 1 == 1),
        }
    }

    /// The rows in increasing order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = usize> + '_> {
        match self {
            Self::Sorted(rows) => Box::new(rows.iter().map(|&r| r as usize)),
            Self::Bits { words, .. } => {
                Box::new(words.iter().enumerate().flat_map(|(i, &w)| word_rows(i, w)))
            }
        }
    }

    /// The set as a bitset over rows `0..universe` (a list is converted).
    pub fn to_bits(&self, universe: usize) -> Vec<u64> {
        match self {
            Self::Bits { words, .. } => words.clone(),
            Self::Sorted(rows) => {
                let mut words = vec![0u64; universe.div_ceil(64)];
                set_bits(&mut words, rows);
                words
            }
        }
    }
}

/// Calls `visit` for each row of `rows` in `first..end`, in increasing order, and `fetch` for
/// the row about `ahead` rows later (so that a gather-scan's memory loads overlap).
pub(crate) fn visit_rows(
    rows: &RowSet,
    (first, end): (usize, usize),
    ahead: usize,
    fetch: impl Fn(usize),
    mut visit: impl FnMut(usize),
) {
    match rows {
        RowSet::Sorted(list) => {
            let lo = list.partition_point(|&r| (r as usize) < first);
            let hi = list.partition_point(|&r| (r as usize) < end);
            let list = &list[lo..hi];
            for (i, &row) in list.iter().enumerate() {
                if let Some(&later) = list.get(i + ahead) {
                    fetch(later as usize);
                }
                visit(row as usize);
            }
        }
        RowSet::Bits { words, count } => {
            let in_range = |r: &usize| (first..end).contains(r);
            let last = end.div_ceil(64).min(words.len());
            // The word holding the rows about `ahead` allowed rows on, at this density.
            let per_word = (*count as f64 / words.len().max(1) as f64).max(0.5);
            let words_ahead = (ahead as f64 / per_word).ceil().max(1.0) as usize;
            for w in first / 64..last {
                let later = w + words_ahead;
                if let Some(&bits) = words.get(later).filter(|_| later < last) {
                    word_rows(later, bits).filter(in_range).for_each(&fetch);
                }
                word_rows(w, words[w]).filter(in_range).for_each(&mut visit);
            }
        }
    }
}

/// The rows of bitset word `index` (bit `b` is row `64 * index + b`), in increasing order.
pub(crate) fn word_rows(index: usize, word: u64) -> impl Iterator<Item = usize> {
    let mut bits = word;
    std::iter::from_fn(move || {
        (bits != 0).then(|| {
            let bit = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            index * 64 + bit
        })
    })
}

/// The flags as bytes, each 0 or 1.
fn as_bytes(mask: &[bool]) -> &[u8] {
    // SAFETY: a `bool` is one byte holding 0 or 1, which is a valid `u8`; same length, same
    // alignment, and the borrow keeps the flags alive and unchanged.
    unsafe { std::slice::from_raw_parts(mask.as_ptr().cast::<u8>(), mask.len()) }
}

/// Eight flags (as bytes) as one word, flag `i` in byte `i`.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn as_word(eight: &[u8]) -> u64 {
    u64::from_le_bytes(eight.try_into().expect("eight bytes"))
}

/// Flags (bytes, each 0 or 1) as bits, flag `r` in bit `r % 64` of word `r / 64`.
fn pack_flags(bytes: &[u8]) -> Vec<u64> {
    let mut words = vec![0u64; bytes.len().div_ceil(64)];
    let mut chunks = bytes.chunks_exact(64);
    for (word, flags) in words.iter_mut().zip(&mut chunks) {
        *word = pack64(flags);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let last = words.len() - 1;
        for (bit, &f) in tail.iter().enumerate() {
            words[last] |= u64::from(f) << bit;
        }
    }
    words
}

/// 64 flags as 64 bits: SSE2 (part of x86-64's baseline) compares 16 bytes at a time with
/// zero and gathers the results' high bits.
#[cfg(target_arch = "x86_64")]
#[inline]
fn pack64(flags: &[u8]) -> u64 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_setzero_si128,
    };
    assert_eq!(flags.len(), 64);
    let mut zeros = 0u64;
    for (i, sixteen) in flags.chunks_exact(16).enumerate() {
        // SAFETY: SSE2 is always present on x86-64; the load reads the 16 bytes of `sixteen`
        // (unaligned loads allowed).
        let m = unsafe {
            let v = _mm_loadu_si128(sixteen.as_ptr().cast());
            _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128()))
        };
        zeros |= u64::from(m as u16) << (16 * i);
    }
    !zeros
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn pack64(flags: &[u8]) -> u64 {
    flags
        .chunks_exact(8)
        .enumerate()
        .fold(0, |word, (i, eight)| word | pack8(eight) << (8 * i))
}

/// Eight flags as eight bits, flag `i` in bit `i`: the multiply moves byte `i`'s low bit to
/// bit `56 + i` (no two partial products share a bit, so nothing carries).
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn pack8(eight: &[u8]) -> u64 {
    as_word(eight).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

fn set_bits(words: &mut [u64], rows: &[u32]) {
    for &r in rows {
        words[r as usize / 64] |= 1 << (r % 64);
    }
}

fn clear_bits(words: &mut [u64], rows: impl IntoIterator<Item = usize>) {
    for r in rows {
        if let Some(w) = words.get_mut(r / 64) {
            *w &= !(1 << (r % 64));
        }
    }
}

/// One attribute value's items: their rows, and a bitset of them when the value is dense.
struct Posting {
    rows: Vec<u32>,
    bits: Option<Vec<u64>>,
}

/// Per attribute and value, the rows having it, built once at load: the source of every
/// filter's row set and of the value counts.
pub struct Postings {
    /// `lists[a][v]`: rows `1..=N` having value `v` of attribute `a`.
    lists: Vec<Vec<Posting>>,
    num_items: usize,
}

impl Postings {
    /// Reads the attribute matrices of rows `1..=num_items` once.
    pub fn build(attributes: &[Attribute], num_items: usize) -> Self {
        let universe = num_items + 1;
        let lists = attributes
            .iter()
            .map(|a| {
                let mut rows: Vec<Vec<u32>> = vec![Vec::new(); a.width()];
                for row in 1..=num_items {
                    a.values_of(row).for_each(|v| rows[v].push(row as u32));
                }
                rows.into_iter()
                    .map(|rows| {
                        let bits = policy::is_dense(rows.len(), universe).then(|| {
                            let mut words = vec![0u64; universe.div_ceil(64)];
                            set_bits(&mut words, &rows);
                            words
                        });
                        Posting { rows, bits }
                    })
                    .collect()
            })
            .collect();
        Self { lists, num_items }
    }

    /// The rows of every value of every attribute (ascending within each value).
    pub fn value_rows(&self) -> impl Iterator<Item = &[u32]> {
        self.lists.iter().flatten().map(|p| p.rows.as_slice())
    }

    /// Items having value `value` of attribute `attribute`.
    pub fn count(&self, attribute: usize, value: usize) -> usize {
        self.lists[attribute][value].rows.len()
    }

    /// The rows `1..=N` passing `filter` (see [`Filter::passes`]) and not in `removed`
    /// (any order). The include family with the fewest rows drives: when it is sparse, its
    /// rows are gathered and the rest of the filter is checked on them alone; when every
    /// family is dense, the set is built with word operations on the values' bitsets.
    pub fn allowed(&self, filter: &Filter, attributes: &[Attribute], removed: &[usize]) -> RowSet {
        let universe = self.num_items + 1;
        let bound = |(a, values): &(usize, Vec<usize>)| -> usize {
            values.iter().map(|&v| self.count(*a, v)).sum()
        };
        let driver = filter.include.iter().min_by_key(|f| bound(f));
        if let Some(family) = driver.filter(|f| !policy::is_dense(bound(f), universe)) {
            let (a, values) = family;
            let mut rows: Vec<u32> = values
                .iter()
                .flat_map(|&v| self.lists[*a][v].rows.iter().copied())
                .collect();
            if values.len() > 1 {
                rows.sort_unstable();
                rows.dedup();
            }
            let mut removed = removed.to_vec();
            removed.sort_unstable();
            rows.retain(|&r| {
                let r = r as usize;
                removed.binary_search(&r).is_err()
                    && filter
                        .include
                        .iter()
                        .filter(|&f| !std::ptr::eq(f, family))
                        .all(|(a, vs)| vs.iter().any(|&v| attributes[*a].has(r, v)))
                    && !filter
                        .exclude
                        .iter()
                        .any(|(a, vs)| vs.iter().any(|&v| attributes[*a].has(r, v)))
            });
            return RowSet::Sorted(rows);
        }
        // Dense: start from every row but the padding row 0, then narrow word by word.
        let mut words = vec![u64::MAX; universe.div_ceil(64)];
        if let Some(last) = words.last_mut() {
            let tail = universe % 64;
            if tail != 0 {
                *last = (1u64 << tail) - 1;
            }
        }
        words[0] &= !1;
        let mut family = vec![0u64; words.len()];
        for (a, values) in &filter.include {
            family.fill(0);
            for &v in values {
                self.or_into(&mut family, *a, v);
            }
            words.iter_mut().zip(&family).for_each(|(w, f)| *w &= f);
        }
        for (a, values) in &filter.exclude {
            for &v in values {
                let posting = &self.lists[*a][v];
                match &posting.bits {
                    Some(bits) => words.iter_mut().zip(bits).for_each(|(w, b)| *w &= !b),
                    None => clear_bits(&mut words, posting.rows.iter().map(|&r| r as usize)),
                }
            }
        }
        clear_bits(&mut words, removed.iter().copied());
        let count = words.iter().map(|w| w.count_ones() as usize).sum();
        if policy::is_dense(count, universe) {
            RowSet::Bits { words, count }
        } else {
            let bits = RowSet::Bits { words, count };
            RowSet::Sorted(bits.iter().map(|r| r as u32).collect())
        }
    }

    fn or_into(&self, words: &mut [u64], attribute: usize, value: usize) {
        let posting = &self.lists[attribute][value];
        match &posting.bits {
            Some(bits) => words.iter_mut().zip(bits).for_each(|(w, b)| *w |= b),
            None => set_bits(words, &posting.rows),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(name: &str, width: usize, rows: &[Vec<usize>]) -> Attribute {
        let mut matrix = vec![0u8; (rows.len() + 1) * width];
        for (i, values) in rows.iter().enumerate() {
            for &v in values {
                matrix[(i + 1) * width + v] = 1;
            }
        }
        Attribute {
            name: name.into(),
            values: (0..width).map(|v| format!("v{v}")).collect(),
            matrix,
        }
    }

    /// xorshift64*, so the test needs no extra crate.
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    #[test]
    fn a_filter_row_set_is_the_rule_applied_to_every_row() {
        let n = 3000;
        let mut seed = 7u64;
        // Attribute 0: one value per item, value 0 very common (dense), the rest rare.
        // Attribute 1: zero to three values per item, uniform over 6.
        let genre: Vec<Vec<usize>> = (0..n)
            .map(|_| {
                let x = rng(&mut seed) % 100;
                vec![if x < 60 { 0 } else { 1 + (x as usize % 5) }]
            })
            .collect();
        let tags: Vec<Vec<usize>> = (0..n)
            .map(|_| {
                let mut t: Vec<usize> = (0..rng(&mut seed) % 4)
                    .map(|_| (rng(&mut seed) % 6) as usize)
                    .collect();
                t.sort_unstable();
                t.dedup();
                t
            })
            .collect();
        let attributes = vec![attribute("genre", 6, &genre), attribute("tags", 6, &tags)];
        let postings = Postings::build(&attributes, n);
        assert_eq!(
            postings.count(0, 0),
            genre.iter().filter(|g| g[0] == 0).count()
        );
        let families = [
            vec![],
            vec![(0, vec![0])],
            vec![(0, vec![3])],
            vec![(0, vec![1, 2])],
            vec![(0, vec![0, 4])],
            vec![(1, vec![2])],
            vec![(0, vec![0]), (1, vec![1, 5])],
            vec![(0, vec![3, 4]), (1, vec![0])],
        ];
        let removed = [5usize, 17, 17, 2999, 1];
        for include in &families {
            for exclude in &families {
                let filter = Filter {
                    include: include.clone(),
                    exclude: exclude.clone(),
                };
                let got = postings.allowed(&filter, &attributes, &removed);
                let want: Vec<usize> = (1..=n)
                    .filter(|r| !removed.contains(r) && filter.passes(&attributes, *r))
                    .collect();
                assert_eq!(got.iter().collect::<Vec<_>>(), want, "{filter:?}");
                assert_eq!(got.len(), want.len());
                assert!(want.iter().all(|&r| got.contains(r)));
                assert!(!got.contains(0) && !got.contains(5) && !got.contains(n + 1));
            }
        }
    }

    #[test]
    fn a_mask_becomes_the_same_set_as_a_list_or_a_bitset() {
        for (n, every) in [
            (0usize, 1usize),
            (1, 1),
            (70, 3),
            (1000, 1),
            (1000, 97),
            (129, 64),
            (4099, 5),
            (4099, 61),
        ] {
            let mask: Vec<bool> = (0..n).map(|r| r % every == 0).collect();
            let set = RowSet::from_mask(&mask);
            let want: Vec<usize> = (0..n).filter(|r| r % every == 0).collect();
            assert_eq!(set.iter().collect::<Vec<_>>(), want);
            assert_eq!(set.len(), want.len());
            assert_eq!(
                matches!(set, RowSet::Bits { .. }),
                policy::is_dense(want.len(), n)
            );
            let bits = RowSet::Bits {
                words: set.to_bits(n),
                count: want.len(),
            };
            assert_eq!(bits.iter().collect::<Vec<_>>(), want);
        }
    }
}

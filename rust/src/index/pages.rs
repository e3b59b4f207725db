//! Large retrieval tables on transparent huge pages.
//!
//! A graph walk or a filtered gather over a large catalogue reads rows scattered over
//! hundreds of MB. With 4 KB pages nearly every such row also misses the TLB and waits for a
//! page walk; with 2 MB pages the whole table needs a few hundred TLB entries. Linux backs
//! memory with huge pages only where asked (`madvise`, the default `transparent_hugepage`
//! mode), and only when the pages are first touched, so the tables are asked for before they
//! are filled. Measured on 1M items, d = 64 (`benches/results/retrieval-1m.md`).

/// Tables smaller than this stay on ordinary pages (they fit the TLB's reach anyway).
const MIN_BYTES: usize = 4 << 20;

/// The huge page size asked for (x86-64 and arm64 with 4 KB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// An empty vector with room for `capacity` values, whose memory the OS is asked to back
/// with huge pages (a hint: where it is not honoured this is `Vec::with_capacity`).
fn with_capacity<T>(capacity: usize) -> Vec<T> {
    let v = Vec::with_capacity(capacity);
    advise(&v);
    v
}

/// `len` copies of `value`, on huge pages where the OS offers them.
pub fn filled<T: Clone>(len: usize, value: T) -> Vec<T> {
    let mut v = with_capacity(len);
    v.resize(len, value);
    v
}

/// The values of `values`, on huge pages where the OS offers them.
pub fn collected<T>(values: impl ExactSizeIterator<Item = T>) -> Vec<T> {
    let mut v = with_capacity(values.len());
    v.extend(values);
    v
}

/// Asks the OS to back the whole 2 MB pages of `v`'s buffer with huge pages.
fn advise<T>(v: &Vec<T>) {
    let bytes = v.capacity().saturating_mul(std::mem::size_of::<T>());
    if bytes < MIN_BYTES {
        return;
    }
    let start = v.as_ptr() as usize;
    let (lo, hi) = (
        start.next_multiple_of(HUGE_PAGE),
        (start + bytes) / HUGE_PAGE * HUGE_PAGE,
    );
    if hi <= lo {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: `lo..hi` lies inside `v`'s allocation; MADV_HUGEPAGE changes how the kernel
    // backs those pages, never their contents, and a failure (e.g. THP disabled) is harmless.
    unsafe {
        libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vectors_hold_what_was_asked() {
        let big = filled(3 << 20, 7u32);
        assert_eq!(big.len(), 3 << 20);
        assert!(big.iter().all(|&v| v == 7));
        assert_eq!(collected(0..5u8), [0, 1, 2, 3, 4]);
        let many = collected((0..(2usize << 20)).map(|i| i as u32));
        assert_eq!(many[123_456], 123_456);
        assert!(with_capacity::<u64>(10).is_empty());
    }
}

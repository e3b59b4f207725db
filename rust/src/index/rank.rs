//! The ranking order of every result dpr returns, written once: higher score first; equal
//! scores (`0.0` and `-0.0` included) to the lower row; `NaN` below every number, `-inf`
//! included. The exact scan, the HNSW search and the merges of partial results all use it.

use std::cmp::Ordering;

/// One result: a row of the item matrix and its inner product with the query.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    pub row: usize,
    pub score: f32,
}

/// The rank of a score as an integer whose order is the documented one: `f32::total_cmp`'s
/// bit trick applied after mapping every NaN to a negative NaN (below `-inf`) and `-0.0` to
/// `0.0` (so that zeros tie and fall back to the row index). An integer compare keeps the
/// scan's hot path, rejecting a row that cannot enter the top k, to one instruction.
#[inline]
pub(crate) fn rank_key(score: f32) -> i32 {
    let canonical = if score.is_nan() {
        f32::from_bits(0xFFC0_0000)
    } else {
        score + 0.0
    };
    let bits = canonical.to_bits() as i32;
    bits ^ (((bits >> 31) as u32) >> 1) as i32
}

/// `Less` means `(key, row)` `a` ranks before `b`: the higher [`rank_key`] first, ties to the
/// lower row.
#[inline]
pub(crate) fn rank_cmp((a_key, a_row): (i32, usize), (b_key, b_row): (i32, usize)) -> Ordering {
    b_key.cmp(&a_key).then_with(|| a_row.cmp(&b_row))
}

/// `Less` means hit `a` ranks before hit `b`; `sort_by(rank_order)` puts the best first.
#[inline]
pub fn rank_order(a: &Hit, b: &Hit) -> Ordering {
    rank_cmp((rank_key(a.score), a.row), (rank_key(b.score), b.row))
}

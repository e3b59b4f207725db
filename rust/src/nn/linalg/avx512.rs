//! The AVX-512 kernels (32 `zmm` registers, masked tails).

use std::arch::x86_64::*;

use super::{x86, GemmArgs};

/// Rows per register tile: 6 rows × 4 vectors = 24 accumulators, 4 weight vectors and a
/// broadcast fill 29 of the 32 registers.
const MR: usize = 6;

/// [`super::gemm`]: columns in blocks of 64 (four vectors), then the rest in one tile of one
/// to four vectors, the last masked; rows in tiles of [`MR`]. Every output is `bias + Σ_i x_i w_i`, one FMA per `i` in order: the
/// same bits as the AVX2 kernel.
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA; `g` must describe in-bounds operands.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn gemm(g: &GemmArgs) {
    let mut c = 0;
    while c + 64 <= g.cols {
        rows_of::<4>(g, c, 0xFFFF);
        c += 64;
    }
    // The rest (under 64 columns: attention's key and head widths) in one tile as wide as it
    // needs, so that each broadcast of `x` feeds as many FMAs as there are vectors.
    let rest = g.cols - c;
    let last = match rest % 16 {
        0 => 0xFFFF,
        lanes => (1u16 << lanes) - 1,
    };
    match rest.div_ceil(16) {
        4 => rows_of::<4>(g, c, last),
        3 => rows_of::<3>(g, c, last),
        2 => rows_of::<2>(g, c, last),
        1 => rows_of::<1>(g, c, last),
        _ => {}
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn rows_of<const NV: usize>(g: &GemmArgs, c: usize, last: __mmask16) {
    let mut r = 0;
    while r + MR <= g.rows {
        tile::<MR, NV>(g, r, c, last);
        r += MR;
    }
    match g.rows - r {
        5 => tile::<5, NV>(g, r, c, last),
        4 => tile::<4, NV>(g, r, c, last),
        3 => tile::<3, NV>(g, r, c, last),
        2 => tile::<2, NV>(g, r, c, last),
        1 => tile::<1, NV>(g, r, c, last),
        _ => {}
    }
}

/// Rows `r0..r0+R`, columns `c..c+16·NV` (the last vector's lanes limited by `last`; masked
/// lanes are neither read nor written).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tile<const R: usize, const NV: usize>(
    g: &GemmArgs,
    r0: usize,
    c: usize,
    last: __mmask16,
) {
    let mask = |v: usize| if v + 1 == NV { last } else { 0xFFFF };
    let mut acc = [[_mm512_setzero_ps(); NV]; R];
    if !g.bias.is_null() {
        for v in 0..NV {
            let b = _mm512_maskz_loadu_ps(mask(v), g.bias.add(c + 16 * v));
            for row in acc.iter_mut() {
                row[v] = b;
            }
        }
    }
    let step = |i: usize| {
        let wrow = g.w.add(i * g.ws + c);
        let mut wv = [_mm512_setzero_ps(); NV];
        for (v, w) in wv.iter_mut().enumerate() {
            *w = _mm512_maskz_loadu_ps(mask(v), wrow.add(16 * v));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let xb = _mm512_set1_ps(*g.x.add((r0 + r) * g.xs + i));
            for (a, w) in row.iter_mut().zip(&wv) {
                *a = _mm512_fmadd_ps(xb, *w, *a);
            }
        }
    };
    // Sixteen inputs at a time: a bit for each input non-zero (or NaN) in some row of the tile.
    let live = g.skip_zeros.then_some(|from: usize| {
        let lanes = (g.depth - from).min(16);
        let tail: __mmask16 = if lanes == 16 {
            0xFFFF
        } else {
            (1 << lanes) - 1
        };
        (0..R).fold(0u32, |live, r| {
            let x = _mm512_maskz_loadu_ps(tail, g.x.add((r0 + r) * g.xs + from));
            let nonzero = _mm512_mask_cmp_ps_mask::<_CMP_NEQ_UQ>(tail, x, _mm512_setzero_ps());
            live | u32::from(nonzero)
        })
    });
    super::walk_inputs(g.depth, 16, live, step);
    for (r, row) in acc.iter().enumerate() {
        let o = g.out.add((r0 + r) * g.os + c);
        for (v, a) in row.iter().enumerate() {
            _mm512_mask_storeu_ps(o.add(16 * v), mask(v), *a);
        }
    }
}

/// [`super::gemv`] on whole registers, the same bits as the AVX2 kernel: lanes 0–7 of a row's
/// register do the AVX2 kernel's first accumulator's FMAs, lanes 8–15 its second's, in the same
/// order, and the two halves then take the AVX2 kernel's reduction ([`x86::finish4`]).
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA; `rows` holds `out.len()` rows of `x.len()`
/// floats at `stride`.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn gemv(rows: &[f32], stride: usize, x: &[f32], out: &mut [f32]) {
    let (n, px) = (x.len(), x.as_ptr());
    let blocked = out.len() / 4 * 4;
    const LOW: __mmask16 = 0x00FF;
    for r in (0..blocked).step_by(4) {
        let first = rows.as_ptr().add(r * stride);
        let p = [0, 1, 2, 3].map(|k| first.add(k * stride));
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 16 <= n {
            let xv = _mm512_loadu_ps(px.add(i));
            for (a, row) in acc.iter_mut().zip(p) {
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(row.add(i)), xv, *a);
            }
            i += 16;
        }
        if i + 8 <= n {
            let xv = _mm512_maskz_loadu_ps(LOW, px.add(i));
            for (a, row) in acc.iter_mut().zip(p) {
                *a = _mm512_mask3_fmadd_ps(_mm512_maskz_loadu_ps(LOW, row.add(i)), xv, *a, LOW);
            }
            i += 8;
        }
        let halves = acc.map(|a| {
            let high = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a));
            _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(high))
        });
        let four = x86::finish4(halves, p, px, i, n);
        out.get_unchecked_mut(r..r + 4).copy_from_slice(&four);
    }
    for r in blocked..out.len() {
        *out.get_unchecked_mut(r) = x86::dot(rows.get_unchecked(r * stride..r * stride + n), x);
    }
}

/// [`super::scaled_softmax`] on whole registers, the last one masked: attention rows are
/// short (one to a few dozen scores), so the compiled generic body spent most of its time in
/// scalar tails. The same operations in the same order as that body (its sum is
/// `lane_sum`'s, lane for lane): the same bits.
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn scaled_softmax(x: &mut [f32], scale: f32) {
    let n = x.len();
    let p = x.as_mut_ptr();
    let mask = |i: usize| -> __mmask16 {
        if n - i >= 16 {
            0xFFFF
        } else {
            (1u16 << (n - i)) - 1
        }
    };
    let scale = _mm512_set1_ps(scale);
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i < n {
        let m = mask(i);
        let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p.add(i)), scale);
        _mm512_mask_storeu_ps(p.add(i), m, v);
        max = _mm512_mask_max_ps(max, m, max, v);
        i += 16;
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
    let mut sum = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let m = mask(i);
        let e = exp_poly(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p.add(i)), max));
        _mm512_mask_storeu_ps(p.add(i), m, e);
        sum = _mm512_mask_add_ps(sum, m, sum, e);
        i += 16;
    }
    let mut lanes = [0.0f32; super::SUM_LANES];
    _mm512_storeu_ps(lanes.as_mut_ptr(), sum);
    let inv = _mm512_set1_ps(1.0 / super::lanes_total(lanes));
    let mut i = 0;
    while i < n {
        let m = mask(i);
        let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p.add(i)), inv);
        _mm512_mask_storeu_ps(p.add(i), m, v);
        i += 16;
    }
}

/// `super::exp_poly` on sixteen lanes, operation for operation.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn exp_poly(x: __m512) -> __m512 {
    // `max` returns its second operand for a NaN, as `f32::max` returns the non-NaN one.
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
    let n = _mm512_add_ps(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        _mm512_set1_ps(0.5),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(n);
    let n = _mm512_min_ps(
        _mm512_max_ps(n, _mm512_set1_ps(-126.0)),
        _mm512_set1_ps(127.0),
    );
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-super::LN2_HI), x);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-super::LN2_LO), r);
    let mut p = _mm512_set1_ps(super::EXP_LEADING);
    for c in super::EXP_COEFFICIENTS {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let y = _mm512_add_ps(
        _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
        _mm512_set1_ps(1.0),
    );
    // `n` is a whole number in [-126, 127]: the conversion is exact.
    let exponent = _mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127));
    _mm512_mul_ps(y, _mm512_castsi512_ps(_mm512_slli_epi32::<23>(exponent)))
}

/// [`super::layer_norm`] compiled for this level.
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn layer_norm(x: &mut [f32], dim: usize, weight: &[f32], bias: &[f32], eps: f32) {
    super::layer_norm_rows(x, dim, weight, bias, eps);
}

//! The AVX2 + FMA kernels (16 `ymm` registers).

use std::arch::x86_64::*;

use super::{GemmArgs, Level};

/// Whether the AVX2 + FMA kernels run in this process (the [`super::level`] is AVX2 or above).
pub fn has_avx2_fma() -> bool {
    super::level() >= Level::Avx2
}

/// Whether this process runs AVX-512 kernels ([`super::level`], which `DPR_KERNELS` caps) and
/// the CPU has VNNI's byte dot products.
pub fn has_avx512_vnni() -> bool {
    static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| {
        super::level() >= Level::Avx512
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    })
}

/// Rows per register tile: 6 rows × 2 vectors = 12 accumulators, 2 weight vectors and a
/// broadcast fill 15 of the 16 registers.
const MR: usize = 6;

/// [`super::gemm`]: columns in blocks of 16 (two vectors), then 8, then a masked rest; rows in
/// tiles of [`MR`]. Every output is `bias + Σ_i x_i w_i`, one FMA per `i` in order.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `g` must describe in-bounds operands.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gemm(g: &GemmArgs) {
    let full = _mm256_set1_epi32(-1);
    let mut c = 0;
    while c + 16 <= g.cols {
        rows_of::<2, false>(g, c, full);
        c += 16;
    }
    while c + 8 <= g.cols {
        rows_of::<1, false>(g, c, full);
        c += 8;
    }
    if c < g.cols {
        const ONES: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
        let mask = _mm256_loadu_si256(ONES.as_ptr().add(8 - (g.cols - c)).cast());
        rows_of::<1, true>(g, c, mask);
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_of<const NV: usize, const MASKED: bool>(g: &GemmArgs, c: usize, last: __m256i) {
    let mut r = 0;
    while r + MR <= g.rows {
        tile::<MR, NV, MASKED>(g, r, c, last);
        r += MR;
    }
    match g.rows - r {
        5 => tile::<5, NV, MASKED>(g, r, c, last),
        4 => tile::<4, NV, MASKED>(g, r, c, last),
        3 => tile::<3, NV, MASKED>(g, r, c, last),
        2 => tile::<2, NV, MASKED>(g, r, c, last),
        1 => tile::<1, NV, MASKED>(g, r, c, last),
        _ => {}
    }
}

/// Rows `r0..r0+R`, columns `c..c+8·NV`; when `MASKED`, the last vector's lanes are limited
/// by `last` (masked lanes are neither read nor written).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize, const NV: usize, const MASKED: bool>(
    g: &GemmArgs,
    r0: usize,
    c: usize,
    last: __m256i,
) {
    let masked = |v: usize| MASKED && v + 1 == NV;
    let load = |p: *const f32, v: usize| {
        if masked(v) {
            _mm256_maskload_ps(p, last)
        } else {
            _mm256_loadu_ps(p)
        }
    };
    let mut acc = [[_mm256_setzero_ps(); NV]; R];
    if !g.bias.is_null() {
        for v in 0..NV {
            let b = load(g.bias.add(c + 8 * v), v);
            for row in acc.iter_mut() {
                row[v] = b;
            }
        }
    }
    let step = |i: usize| {
        let wrow = g.w.add(i * g.ws + c);
        let mut wv = [_mm256_setzero_ps(); NV];
        for (v, w) in wv.iter_mut().enumerate() {
            *w = load(wrow.add(8 * v), v);
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let xb = _mm256_broadcast_ss(&*g.x.add((r0 + r) * g.xs + i));
            for (a, w) in row.iter_mut().zip(&wv) {
                *a = _mm256_fmadd_ps(xb, *w, *a);
            }
        }
    };
    // Eight inputs at a time: a bit for each input non-zero (or NaN) in some row of the tile.
    let live = g.skip_zeros.then_some(|from: usize| {
        let lanes = (g.depth - from).min(8);
        (0..R).fold(0u32, |live, r| {
            let x = g.x.add((r0 + r) * g.xs + from);
            (0..lanes).fold(live, |live, l| live | u32::from(*x.add(l) != 0.0) << l)
        })
    });
    super::walk_inputs(g.depth, 8, live, step);
    for (r, row) in acc.iter().enumerate() {
        let o = g.out.add((r0 + r) * g.os + c);
        for (v, a) in row.iter().enumerate() {
            if masked(v) {
                _mm256_maskstore_ps(o.add(8 * v), last, *a);
            } else {
                _mm256_storeu_ps(o.add(8 * v), *a);
            }
        }
    }
}

/// [`super::scaled_softmax`] compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn scaled_softmax(x: &mut [f32], scale: f32) {
    super::scaled_softmax_poly(x, scale);
}

/// # Safety
/// The CPU must support AVX2 and FMA; `rows` holds `out.len()` rows of `x.len()` floats
/// at `stride`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gemv(rows: &[f32], stride: usize, x: &[f32], out: &mut [f32]) {
    let width = x.len();
    let blocked = out.len() / 4 * 4;
    for r in (0..blocked).step_by(4) {
        let four = dot4(rows.as_ptr().add(r * stride), stride, x);
        out.get_unchecked_mut(r..r + 4).copy_from_slice(&four);
    }
    for r in blocked..out.len() {
        *out.get_unchecked_mut(r) = dot(rows.get_unchecked(r * stride..r * stride + width), x);
    }
}

/// [`dot`] of four rows (`stride` apart from `rows`) with `x`, each bit for bit what
/// `dot` returns: the same partial sums in the same order, with the four horizontal
/// reductions done together by one 4×4 transpose.
///
/// # Safety
/// The CPU must support AVX2 and FMA; the four rows of `x.len()` floats are readable.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4(rows: *const f32, stride: usize, x: &[f32]) -> [f32; 4] {
    let n = x.len();
    let px = x.as_ptr();
    let p = [
        rows,
        rows.add(stride),
        rows.add(2 * stride),
        rows.add(3 * stride),
    ];
    let mut acc0 = [_mm256_setzero_ps(); 4];
    let mut acc1 = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 16 <= n {
        let (x0, x1) = (_mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(px.add(i + 8)));
        for k in 0..4 {
            acc0[k] = _mm256_fmadd_ps(_mm256_loadu_ps(p[k].add(i)), x0, acc0[k]);
            acc1[k] = _mm256_fmadd_ps(_mm256_loadu_ps(p[k].add(i + 8)), x1, acc1[k]);
        }
        i += 16;
    }
    if i + 8 <= n {
        let x0 = _mm256_loadu_ps(px.add(i));
        for k in 0..4 {
            acc0[k] = _mm256_fmadd_ps(_mm256_loadu_ps(p[k].add(i)), x0, acc0[k]);
        }
        i += 8;
    }
    let sums = [0, 1, 2, 3].map(|k| _mm256_add_ps(acc0[k], acc1[k]));
    finish4(sums, p, px, i, n)
}

/// The end of [`dot4`] from each row's `acc0 + acc1` (`sums`), the products of `from..n`
/// still to add: what [`dot`] does after its vector loop, for four rows at once.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `rows[k]` and `x` are readable up to `n`.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn finish4(
    sums: [__m256; 4],
    rows: [*const f32; 4],
    x: *const f32,
    from: usize,
    n: usize,
) -> [f32; 4] {
    let quads =
        sums.map(|acc| _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1)));
    // Transpose: lane j of `cols[j]` holds lane j of every row's quad.
    let t0 = _mm_unpacklo_ps(quads[0], quads[1]);
    let t1 = _mm_unpackhi_ps(quads[0], quads[1]);
    let t2 = _mm_unpacklo_ps(quads[2], quads[3]);
    let t3 = _mm_unpackhi_ps(quads[2], quads[3]);
    let cols = [
        _mm_movelh_ps(t0, t2),
        _mm_movehl_ps(t2, t0),
        _mm_movelh_ps(t1, t3),
        _mm_movehl_ps(t3, t1),
    ];
    // `dot` adds (q0 + q2) + (q1 + q3).
    let total = _mm_add_ps(_mm_add_ps(cols[0], cols[2]), _mm_add_ps(cols[1], cols[3]));
    let mut out = [0.0f32; 4];
    _mm_storeu_ps(out.as_mut_ptr(), total);
    for (k, o) in out.iter_mut().enumerate() {
        for j in from..n {
            *o += *rows[k].add(j) * *x.add(j);
        }
    }
    out
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY (all loads): i + 16 <= n, resp. i + 8 <= n, bounds both slices.
    while i + 16 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 8)),
            _mm256_loadu_ps(pb.add(i + 8)),
            acc1,
        );
        i += 16;
    }
    if i + 8 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        i += 8;
    }
    let acc = _mm256_add_ps(acc0, acc1);
    let quad = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    let single = _mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1));
    let mut sum = _mm_cvtss_f32(single);
    while i < n {
        sum += a[i] * b[i];
        i += 1;
    }
    sum
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let (px, py) = (x.as_ptr(), y.as_mut_ptr());
    let va = _mm256_set1_ps(a);
    let mut i = 0;
    // SAFETY: i + 8 <= n bounds both slices.
    while i + 8 <= n {
        let v = _mm256_fmadd_ps(va, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
        _mm256_storeu_ps(py.add(i), v);
        i += 8;
    }
    while i < n {
        y[i] += a * x[i];
        i += 1;
    }
}

/// [`super::layer_norm`] compiled for this level.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn layer_norm(x: &mut [f32], dim: usize, weight: &[f32], bias: &[f32], eps: f32) {
    super::layer_norm_rows(x, dim, weight, bias, eps);
}

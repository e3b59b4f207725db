// Over 400 lines because every public kernel has its level dispatch and portable twin here
// (the SIMD builds live in `linalg/x86.rs` and `linalg/avx512.rs`, the tests in `linalg/tests.rs`).
//! The few dense operations inference needs, on row-major `f32` slices.
//!
//! Weights follow PyTorch's `nn.Linear` layout (`out × in`, `y = x Wᵀ + b`); [`Linear`] keeps
//! `Wᵀ` as well, which is what [`gemm`] streams.
//!
//! # Kernel levels
//!
//! The wheel targets baseline x86-64, so the hot kernels come in three builds chosen once per
//! process ([`level`]): AVX-512 (`avx512f` + AVX2 + FMA), AVX2 + FMA, and portable Rust. A
//! machine always computes the same result for the same inputs, and the two SIMD levels give
//! the same bits as each other: [`gemm`] adds `bias + Σ_i x_i w_i` one fused multiply-add at a
//! time in `i` order at both, and [`dot`] / [`gemv`] run the AVX2 kernel at both (the exact
//! scan and the graph walk must score alike). The portable level differs in the last bits
//! (no fused multiply-add), within the parity bound.
//!
//! [`KERNELS_ENV`] (`DPR_KERNELS=portable|avx2|avx512`), read once at the first kernel call,
//! caps the level below what the CPU has: the tests run every level on one machine with it.

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

use std::sync::OnceLock;

/// The environment variable that caps the kernel level (see the module docs).
pub const KERNELS_ENV: &str = "DPR_KERNELS";

/// A build of the hot kernels, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Portable,
    Avx2,
    Avx512,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Portable, Level::Avx2, Level::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    fn parse(name: &str) -> Option<Level> {
        Level::ALL
            .into_iter()
            .find(|l| l.name() == name.trim().to_ascii_lowercase())
    }
}

/// The best level this CPU runs.
pub fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") {
            return if has!("avx512f") {
                Level::Avx512
            } else {
                Level::Avx2
            };
        }
    }
    Level::Portable
}

/// The level `requested` (a [`KERNELS_ENV`] value) gives on a CPU that runs up to `best`, and
/// a warning when the request cannot be honoured as written.
fn capped(best: Level, requested: Option<&str>) -> (Level, Option<String>) {
    let Some(requested) = requested.filter(|r| !r.trim().is_empty()) else {
        return (best, None);
    };
    match Level::parse(requested) {
        Some(level) if level <= best => (level, None),
        Some(_) => (
            best,
            Some(format!(
                "{KERNELS_ENV}={requested}: this CPU runs up to {}, using that",
                best.name()
            )),
        ),
        None => (
            best,
            Some(format!(
                "{KERNELS_ENV}={requested:?} is not one of portable, avx2, avx512; using {}",
                best.name()
            )),
        ),
    }
}

/// The kernel level of this process: [`detected`], capped by [`KERNELS_ENV`]; chosen once.
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let requested = std::env::var(KERNELS_ENV).ok();
        let (level, warning) = capped(detected(), requested.as_deref());
        if let Some(warning) = warning {
            eprintln!("dpr: {warning}");
        }
        level
    })
}

/// A fully connected layer, `y = x Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `out × in`, row-major.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub in_dim: usize,
    pub out_dim: usize,
    /// `Wᵀ` (`in × out`, row-major): each input value scales one contiguous weight row.
    transposed: Vec<f32>,
}

impl Linear {
    /// Builds a layer from PyTorch-layout parts; `None` if the sizes disagree.
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, out_dim: usize, in_dim: usize) -> Option<Self> {
        if weight.len() != out_dim * in_dim || bias.len() != out_dim {
            return None;
        }
        let mut transposed = vec![0.0f32; weight.len()];
        for (o, row) in weight.chunks_exact(in_dim.max(1)).enumerate() {
            for (i, &w) in row.iter().enumerate() {
                transposed[i * out_dim + o] = w;
            }
        }
        Some(Linear {
            weight,
            bias,
            in_dim,
            out_dim,
            transposed,
        })
    }

    /// `out = W x + b` for one input row.
    #[inline]
    pub fn apply_row(&self, x: &[f32], out: &mut [f32]) {
        self.apply(x, 1, out);
    }

    /// `out (rows × out_dim) = x (rows × in_dim) Wᵀ + b`.
    pub fn apply(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        self.apply_columns(x, self.in_dim, rows, 0..self.out_dim, out, self.out_dim);
    }

    /// [`Linear::apply`] for an `x` of mostly zeros (a ReLU's output): the same values, without
    /// the products of inputs that are zero in every row of a register tile
    /// ([`Product::skip_zeros`]).
    pub fn apply_sparse(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        self.apply_sparse_at(level(), x, rows, out);
    }

    fn apply_sparse_at(&self, level: Level, x: &[f32], rows: usize, out: &mut [f32]) {
        let product = Product {
            x: Operand::new(x, self.in_dim),
            w: Operand::new(&self.transposed, self.out_dim),
            bias: Some(&self.bias),
            shape: Shape {
                rows,
                depth: self.in_dim,
                cols: self.out_dim,
            },
            skip_zeros: true,
        };
        checked_gemm_at(level, &product, out, self.out_dim);
    }

    /// Output columns `columns` only, for `rows` input rows `x_stride` floats apart, into rows
    /// `out_stride` floats apart: the part of the layer that writes those columns.
    pub fn apply_columns(
        &self,
        x: &[f32],
        x_stride: usize,
        rows: usize,
        columns: std::ops::Range<usize>,
        out: &mut [f32],
        out_stride: usize,
    ) {
        assert!(columns.end <= self.out_dim, "Linear: columns out of range");
        gemm(
            Operand::new(x, x_stride),
            Operand::new(&self.transposed[columns.start..], self.out_dim),
            Some(&self.bias[columns.clone()]),
            Shape {
                rows,
                depth: self.in_dim,
                cols: columns.len(),
            },
            out,
            out_stride,
        );
    }
}

/// A row-major matrix operand: row `r` starts at `data[r · stride]`.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    pub data: &'a [f32],
    pub stride: usize,
}

impl<'a> Operand<'a> {
    pub fn new(data: &'a [f32], stride: usize) -> Self {
        Operand { data, stride }
    }
}

/// The sizes of a product: `rows × depth` times `depth × cols`.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub rows: usize,
    pub depth: usize,
    pub cols: usize,
}

/// What the SIMD kernels read: the operands of [`gemm`] as checked pointers.
#[derive(Clone, Copy)]
pub(crate) struct GemmArgs {
    x: *const f32,
    xs: usize,
    w: *const f32,
    ws: usize,
    /// `cols` floats, or null for a zero start.
    bias: *const f32,
    out: *mut f32,
    os: usize,
    rows: usize,
    depth: usize,
    cols: usize,
    /// [`Product::skip_zeros`].
    skip_zeros: bool,
}

/// `out[r·out_stride + c] = bias[c] + Σ_i x[r][i] · w[i][c]` for `r < rows`, `c < cols`,
/// `i < depth` (a missing bias starts at zero). Each output adds its products in `i` order.
///
/// # Panics
/// If an operand is too short for `shape`.
pub fn gemm(
    x: Operand<'_>,
    w: Operand<'_>,
    bias: Option<&[f32]>,
    shape: Shape,
    out: &mut [f32],
    out_stride: usize,
) {
    let product = Product {
        x,
        w,
        bias,
        shape,
        skip_zeros: false,
    };
    checked_gemm_at(level(), &product, out, out_stride);
}

/// [`gemm_at`] after checking that every operand holds what `p.shape` reads.
fn checked_gemm_at(level: Level, p: &Product<'_>, out: &mut [f32], out_stride: usize) {
    let Product {
        x, w, bias, shape, ..
    } = *p;
    let Shape { rows, depth, cols } = shape;
    if rows == 0 || cols == 0 {
        return;
    }
    let fits = |len: usize, count: usize, stride: usize, width: usize| {
        count == 0 || (count - 1) * stride + width <= len
    };
    assert!(
        fits(x.data.len(), rows, x.stride, depth),
        "gemm: x too short"
    );
    assert!(
        fits(w.data.len(), depth, w.stride, cols),
        "gemm: w too short"
    );
    assert!(
        fits(out.len(), rows, out_stride, cols),
        "gemm: out too short"
    );
    assert!(bias.is_none_or(|b| b.len() >= cols), "gemm: bias too short");
    gemm_at(level, p, out, out_stride);
}

/// The operands of one [`gemm`] call.
#[derive(Clone, Copy)]
struct Product<'a> {
    x: Operand<'a>,
    w: Operand<'a>,
    bias: Option<&'a [f32]>,
    shape: Shape,
    /// Leave out the products of an input `i` that is zero (±0) in every row the kernel
    /// computes together (a register tile; one row at the portable level). Each output is
    /// still `bias + Σ x_i w_i` in order, and a zero `x_i` adds nothing to it for finite
    /// weights (at most a zero's sign changes), so the values are the dense product's: worth it
    /// for a ReLU's output, mostly zeros.
    skip_zeros: bool,
}

/// [`gemm`] at `level` (capped at what the CPU runs), its operands checked by the caller.
fn gemm_at(level: Level, p: &Product<'_>, out: &mut [f32], out_stride: usize) {
    let level = level.min(detected());
    let Product {
        x,
        w,
        bias,
        shape,
        skip_zeros,
    } = *p;
    let Shape { rows, depth, cols } = shape;
    #[cfg(target_arch = "x86_64")]
    if level >= Level::Avx2 {
        let args = GemmArgs {
            x: x.data.as_ptr(),
            xs: x.stride,
            w: w.data.as_ptr(),
            ws: w.stride,
            bias: bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
            out: out.as_mut_ptr(),
            os: out_stride,
            rows,
            depth,
            cols,
            skip_zeros,
        };
        // SAFETY: the CPU has the level's features; the caller's asserts bound every operand
        // for `shape`, which is all the kernels read or write.
        return unsafe {
            if level == Level::Avx512 {
                avx512::gemm(&args)
            } else {
                x86::gemm(&args)
            }
        };
    }
    gemm_portable(p, out, out_stride);
}

/// A SIMD tile's walk over the inputs `0..depth`: `step(i)` for each in order, or, when
/// `live` is given, only for the inputs it marks, `width` at a time (`live(from)` has bit `l`
/// set when input `from + l` is non-zero in some row of the tile).
#[inline(always)]
#[cfg(target_arch = "x86_64")]
fn walk_inputs(
    depth: usize,
    width: usize,
    live: Option<impl FnMut(usize) -> u32>,
    mut step: impl FnMut(usize),
) {
    let Some(mut live) = live else {
        (0..depth).for_each(step);
        return;
    };
    for from in (0..depth).step_by(width) {
        let mut bits = live(from);
        while bits != 0 {
            step(from + bits.trailing_zeros() as usize);
            bits &= bits - 1;
        }
    }
}

fn gemm_portable(p: &Product<'_>, out: &mut [f32], out_stride: usize) {
    let Product {
        x,
        w,
        bias,
        shape,
        skip_zeros,
    } = *p;
    let Shape { rows, depth, cols } = shape;
    for r in 0..rows {
        let o = &mut out[r * out_stride..r * out_stride + cols];
        match bias {
            Some(b) => o.copy_from_slice(&b[..cols]),
            None => o.fill(0.0),
        }
        let xr = &x.data[r * x.stride..r * x.stride + depth];
        for (i, &xv) in xr.iter().enumerate() {
            if skip_zeros && xv == 0.0 {
                continue;
            }
            let wr = &w.data[i * w.stride..i * w.stride + cols];
            for (ov, wv) in o.iter_mut().zip(wr) {
                *ov += xv * wv;
            }
        }
    }
}

/// Layer normalisation over each row of `x` (`rows × dim`), in place: biased variance.
/// The SIMD levels run the same code compiled for their registers: the same bits.
pub fn layer_norm(x: &mut [f32], dim: usize, weight: &[f32], bias: &[f32], eps: f32) {
    layer_norm_at(level(), x, dim, weight, bias, eps);
}

fn layer_norm_at(level: Level, x: &mut [f32], dim: usize, weight: &[f32], bias: &[f32], eps: f32) {
    #[cfg(target_arch = "x86_64")]
    match level.min(detected()) {
        // SAFETY: the CPU has the level's features.
        Level::Avx512 => return unsafe { avx512::layer_norm(x, dim, weight, bias, eps) },
        Level::Avx2 => return unsafe { x86::layer_norm(x, dim, weight, bias, eps) },
        Level::Portable => {}
    }
    layer_norm_rows(x, dim, weight, bias, eps);
}

#[inline(always)]
fn layer_norm_rows(x: &mut [f32], dim: usize, weight: &[f32], bias: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(dim) {
        let mean = lane_sum(row, |v| v) / dim as f32;
        let var = lane_sum(row, |v| (v - mean) * (v - mean)) / dim as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

/// `Σ f(x_i)` over [`SUM_LANES`] interleaved partial sums, which the compiler keeps in SIMD
/// lanes (a plain left-to-right float sum cannot be vectorised, and fewer lanes make a longer
/// chain of dependent additions), totalled by [`lanes_total`].
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; SUM_LANES];
    for chunk in x.chunks(SUM_LANES) {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    lanes_total(lanes)
}

#[inline]
pub fn relu(x: &mut [f32]) {
    for v in x {
        *v = v.max(0.0);
    }
}

/// Softmax in place, shifted by the maximum for stability (the C library's `exp`).
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x {
        *v *= inv;
    }
}

/// `softmax(scale · x)` in place, for attention rows: at the SIMD levels `exp` is a
/// polynomial (relative error under 2·10⁻⁷) evaluated on whole vectors, where [`softmax`]
/// calls the C library once per value.
pub fn scaled_softmax(x: &mut [f32], scale: f32) {
    scaled_softmax_at(level(), x, scale);
}

fn scaled_softmax_at(level: Level, x: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    match level.min(detected()) {
        // SAFETY: the CPU has the level's features.
        Level::Avx512 => return unsafe { avx512::scaled_softmax(x, scale) },
        Level::Avx2 => return unsafe { x86::scaled_softmax(x, scale) },
        Level::Portable => {}
    }
    x.iter_mut().for_each(|v| *v *= scale);
    softmax(x);
}

/// The body of the SIMD levels' [`scaled_softmax`], compiled once per level.
#[inline(always)]
fn scaled_softmax_poly(x: &mut [f32], scale: f32) {
    // Sixteen running maxima, so that the loop vectorises (one running maximum is a serial
    // chain); the maximum is the same whatever the order.
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact_mut(16);
    for chunk in &mut chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *v *= scale;
            *lane = lane.max(*v);
        }
    }
    for v in chunks.into_remainder() {
        *v *= scale;
        lanes[0] = lanes[0].max(*v);
    }
    let max = lanes.into_iter().fold(f32::NEG_INFINITY, f32::max);
    for v in x.iter_mut() {
        *v = exp_poly(*v - max);
    }
    let inv = 1.0 / lane_sum(x, |v| v);
    for v in x {
        *v *= inv;
    }
}

/// [`lane_sum`]'s partial sums: value `i` goes to lane `i % SUM_LANES`, in order (the AVX-512
/// softmax keeps them in one register, the other kernels in an array).
pub(super) const SUM_LANES: usize = 16;

/// The total of [`lane_sum`]'s lanes, halving the width each step (one fixed order, so every
/// kernel level gives the same bits).
#[inline(always)]
pub(super) fn lanes_total(mut lanes: [f32; SUM_LANES]) -> f32 {
    let mut width = SUM_LANES / 2;
    while width > 0 {
        for j in 0..width {
            lanes[j] += lanes[j + width];
        }
        width /= 2;
    }
    lanes[0]
}

/// `ln 2` split in two for `exp_poly`'s argument reduction.
pub(super) const LN2_HI: f32 = 0.693_359_4;
pub(super) const LN2_LO: f32 = -2.121_944_4e-4;
/// `exp_poly`'s polynomial: the leading coefficient, then the rest in Horner order.
pub(super) const EXP_LEADING: f32 = 1.987_569_1e-4;
pub(super) const EXP_COEFFICIENTS: [f32; 5] = [
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// `eˣ` for `x ≤ 0` (Cephes' `expf`: `x = n ln 2 + r`, a degree-6 polynomial in `r`), in
/// operations that vectorise; below −87 it returns about 2⁻¹²⁶ instead of less. The AVX-512
/// kernel (`avx512::exp_poly`) runs the same operations on sixteen lanes.
#[inline(always)]
fn exp_poly(x: f32) -> f32 {
    let x = x.max(-87.0);
    // In [-126, 0] for the x ≤ 0 the callers pass; the clamp keeps the cast below exact (and
    // vectorisable: `as` would add a saturating, NaN-checking conversion per lane).
    let n = (x * std::f32::consts::LOG2_E + 0.5)
        .floor()
        .clamp(-126.0, 127.0);
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = EXP_LEADING;
    for c in EXP_COEFFICIENTS {
        p = p.mul_add(r, c);
    }
    let y = p.mul_add(r * r, r) + 1.0;
    // SAFETY: `n` is a whole number in [-126, 127] (clamped above; NaN cannot reach it, as
    // `max(-87)` maps NaN to -87).
    let exponent = unsafe { n.to_int_unchecked::<i32>() };
    y * f32::from_bits(((exponent + 127) << 23) as u32)
}

#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `a · b` over the common length.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { x86::dot(a, b) };
    }
    dot_portable(a, b)
}

/// `y += a * x` over the common length.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2_fma() {
        // SAFETY: as in `dot`.
        return unsafe { x86::axpy(a, x, y) };
    }
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// `out[r] = rows[r·stride ..][..x.len()] · x` for every `r < out.len()`: a matrix-vector
/// product over rows that sit `stride` floats apart (a column block of a wider matrix).
///
/// # Panics
/// If `rows` is too short for `out.len()` rows.
#[inline]
pub fn gemv(rows: &[f32], stride: usize, x: &[f32], out: &mut [f32]) {
    if let Some(last) = out.len().checked_sub(1) {
        assert!(
            last * stride + x.len() <= rows.len(),
            "gemv: matrix too short"
        );
    }
    gemv_at(level(), rows, stride, x, out);
}

/// [`gemv`] at `level` (capped at what the CPU runs); AVX2 and AVX-512 give the same bits.
fn gemv_at(level: Level, rows: &[f32], stride: usize, x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match level.min(detected()) {
        // SAFETY: the CPU has the level's features; the caller checked the bound.
        Level::Avx512 => return unsafe { avx512::gemv(rows, stride, x, out) },
        Level::Avx2 => return unsafe { x86::gemv(rows, stride, x, out) },
        Level::Portable => {}
    }
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot_portable(&rows[r * stride..r * stride + x.len()], x);
    }
}

/// `out += Σ_j weights[j] · rows[j·stride ..][..out.len()]`: the transposed product.
///
/// # Panics
/// If `rows` is too short for `weights.len()` rows.
#[inline]
pub fn gemv_transposed(weights: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    if let Some(last) = weights.len().checked_sub(1) {
        assert!(
            last * stride + out.len() <= rows.len(),
            "gemv_transposed: matrix too short"
        );
    }
    let width = out.len();
    for (j, &w) in weights.iter().enumerate() {
        axpy(w, &rows[j * stride..j * stride + width], out);
    }
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (xa, xb) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(xa).zip(xb) {
            *s += x * y;
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(test)]
mod tests;

// Over 400 lines because each product has AVX-512, AVX2 and portable kernels, and tests.
//! A fully connected layer whose weights are packed once, at load, for a register-blocked
//! matrix product over a few rows (the tokens of a prompt): `y = x Wᵀ + b`.
//!
//! Layout: `Wᵀ` cut into panels of [`NR`] output columns; a panel holds, for each input
//! index `k`, its `NR` weights side by side, so the kernel streams each panel once per block
//! of rows and keeps a `rows × NR` tile of sums in registers. The weights stay float16 when
//! they were stored so (the bundle's format): converting them to float32 in the kernel is
//! exact and halves the bytes streamed per prompt (MiniLM: 21 MB instead of 42).
//!
//! Kernels follow the process's kernel level ([`Isa::detect`], from [`linalg::level`], which
//! `DPR_KERNELS` caps): AVX-512F, AVX2 + FMA (+ F16C for
//! float16 panels), or portable Rust for baseline x86-64 and other targets. Every output is
//! `(Σ_k x_k w_k, in k order) + b`, whatever the block it was computed in, so a row's result
//! does not depend on the other rows of the call (a batch agrees with single prompts bit
//! for bit); the two FMA kernels even agree with each other.

use half::f16;

use crate::nn::linalg::{self, Level};

/// Output columns per panel.
pub const NR: usize = 32;
/// Rows per register tile: AVX-512 (2 × 16 lanes per row) and AVX2 (2 × 8 lanes, half a
/// panel at a time).
const MR_512: usize = 12;
const MR_256: usize = 6;
/// Rows per pass over the weights: their inputs stay in L2 while every panel streams by.
const ROW_CHUNK: usize = 96;

/// The instruction set the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    /// The set of this process: the kernel level [`linalg::level`] chose (the CPU's best,
    /// capped by `DPR_KERNELS`), dropped to portable on a CPU without F16C (cached: the choice
    /// is made once per process).
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("f16c") {
                return match linalg::level() {
                    Level::Avx512 => Isa::Avx512,
                    Level::Avx2 => Isa::Avx2,
                    Level::Portable => Isa::Portable,
                };
            }
            Isa::Portable
        })
    }

    /// Every set this CPU can run, best first (tests run each).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Isa> {
        let all = [Isa::Avx512, Isa::Avx2, Isa::Portable];
        let best = all
            .iter()
            .position(|&isa| isa == Isa::detect())
            .unwrap_or(2);
        all[best..].to_vec()
    }
}

/// Packed weights: float32, or float16 converted in the kernel.
#[derive(Debug, Clone)]
enum Panels {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

/// `y = x Wᵀ + b` over packed weights (see the module docs).
#[derive(Debug, Clone)]
pub struct PackedLinear {
    in_dim: usize,
    out_dim: usize,
    panels: Panels,
    /// `out_dim` rounded up to a whole panel, zero-padded.
    bias: Vec<f32>,
    isa: Isa,
}

/// Weights as stored, in PyTorch's `out × in` layout.
#[derive(Debug, Clone, Copy)]
pub enum Weights<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl Weights<'_> {
    fn len(&self) -> usize {
        match self {
            Weights::F32(w) => w.len(),
            Weights::F16(w) => w.len(),
        }
    }
}

fn pack<T: Copy + Default>(weight: &[T], out_dim: usize, in_dim: usize) -> Vec<T> {
    let panels = out_dim.div_ceil(NR);
    let mut packed = vec![T::default(); panels * in_dim * NR];
    for (o, row) in weight.chunks_exact(in_dim).enumerate() {
        let (panel, lane) = (o / NR, o % NR);
        let base = panel * in_dim * NR + lane;
        for (k, &w) in row.iter().enumerate() {
            packed[base + k * NR] = w;
        }
    }
    packed
}

impl PackedLinear {
    /// Packs `weight` (`out_dim × in_dim`) and `bias` for the kernels of `Isa::detect()`;
    /// `None` if the sizes disagree.
    pub fn new(weight: Weights, bias: &[f32], out_dim: usize, in_dim: usize) -> Option<Self> {
        Self::for_isa(weight, bias, out_dim, in_dim, Isa::detect())
    }

    /// As [`PackedLinear::new`], for the kernels of `isa` (which the CPU must have).
    pub(crate) fn for_isa(
        weight: Weights,
        bias: &[f32],
        out_dim: usize,
        in_dim: usize,
        isa: Isa,
    ) -> Option<Self> {
        if in_dim == 0 || out_dim == 0 || weight.len() != out_dim * in_dim || bias.len() != out_dim
        {
            return None;
        }
        let panels = match (weight, isa) {
            (Weights::F16(w), Isa::Avx512 | Isa::Avx2) => Panels::F16(pack(w, out_dim, in_dim)),
            (Weights::F16(w), Isa::Portable) => {
                let w: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
                Panels::F32(pack(&w, out_dim, in_dim))
            }
            (Weights::F32(w), _) => Panels::F32(pack(w, out_dim, in_dim)),
        };
        let mut padded = bias.to_vec();
        padded.resize(out_dim.div_ceil(NR) * NR, 0.0);
        Some(Self {
            in_dim,
            out_dim,
            panels,
            bias: padded,
            isa,
        })
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// `out = x Wᵀ + b` for `rows` rows: `x` is `rows × in_dim`, `out` `rows × out_dim`.
    ///
    /// # Panics
    /// If `x` or `out` is shorter than that.
    pub fn apply(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        assert!(
            x.len() >= rows * self.in_dim && out.len() >= rows * self.out_dim,
            "PackedLinear::apply: buffers too short"
        );
        for start in (0..rows).step_by(ROW_CHUNK) {
            let n = ROW_CHUNK.min(rows - start);
            let x = &x[start * self.in_dim..(start + n) * self.in_dim];
            let out = &mut out[start * self.out_dim..(start + n) * self.out_dim];
            match (self.isa, &self.panels) {
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, panels) => {
                    // SAFETY: `Isa::Avx512` is only chosen (or passed to `for_isa`, by tests
                    // that check first) when the CPU has AVX-512F, FMA and F16C; the buffer
                    // lengths were checked above and the panels match `in_dim`/`out_dim`.
                    unsafe { x86::apply_512(self, panels, x, n, out) }
                }
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx2, panels) => {
                    // SAFETY: as above, for AVX2, FMA and F16C.
                    unsafe { x86::apply_256(self, panels, x, n, out) }
                }
                (_, Panels::F32(p)) => self.apply_portable(p, x, n, out),
                (_, Panels::F16(_)) => unreachable!("float16 panels are only packed for SIMD"),
            }
        }
    }

    fn apply_portable(&self, panels: &[f32], x: &[f32], rows: usize, out: &mut [f32]) {
        let k_dim = self.in_dim;
        for (p, panel) in panels.chunks_exact(k_dim * NR).enumerate() {
            let cols = NR.min(self.out_dim - p * NR);
            for r in 0..rows {
                let mut acc = [0.0f32; NR];
                for (k, w) in panel.chunks_exact(NR).enumerate() {
                    let a = x[r * k_dim + k];
                    for (s, w) in acc.iter_mut().zip(w) {
                        *s += a * w;
                    }
                }
                let dst = &mut out[r * self.out_dim + p * NR..][..cols];
                for ((d, s), b) in dst.iter_mut().zip(acc).zip(&self.bias[p * NR..]) {
                    *d = s + b;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PackedLinear, Panels, MR_256, MR_512, NR};
    use half::f16;
    use std::arch::x86_64::*;

    /// Loads 16 (AVX-512) or 8 (AVX2) weights of a panel as float32.
    trait Load512 {
        unsafe fn load16(p: *const Self) -> __m512;
    }
    trait Load256 {
        unsafe fn load8(p: *const Self) -> __m256;
    }
    impl Load512 for f32 {
        #[inline(always)]
        unsafe fn load16(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
    }
    impl Load512 for f16 {
        #[inline(always)]
        unsafe fn load16(p: *const f16) -> __m512 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
        }
    }
    impl Load256 for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
    }
    impl Load256 for f16 {
        #[inline(always)]
        unsafe fn load8(p: *const f16) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        }
    }

    /// Runs `kernel!(MR)` for the row count `$mr` (1..=`$max`), each a const-generic copy.
    macro_rules! by_rows {
        ($mr:expr, $call:ident, $($arg:expr),*) => {
            match $mr {
                1 => $call::<1, _>($($arg),*),
                2 => $call::<2, _>($($arg),*),
                3 => $call::<3, _>($($arg),*),
                4 => $call::<4, _>($($arg),*),
                5 => $call::<5, _>($($arg),*),
                6 => $call::<6, _>($($arg),*),
                7 => $call::<7, _>($($arg),*),
                8 => $call::<8, _>($($arg),*),
                9 => $call::<9, _>($($arg),*),
                10 => $call::<10, _>($($arg),*),
                11 => $call::<11, _>($($arg),*),
                12 => $call::<12, _>($($arg),*),
                _ => unreachable!("row tiles hold at most 12 rows"),
            }
        };
    }

    /// Defines `$tile::<MR, W>`: one tile of `MR` rows and two vectors of columns — rows
    /// `x[0..MR]` (stride `k_dim`) times the columns of a panel that start at `panel`, plus
    /// bias, stored by `$store` to the first `cols` columns of `out` (stride `out_stride`).
    macro_rules! tile {
        ($tile:ident, $features:literal, $load:ident :: $load_fn:ident, $lanes:expr,
         $zero:ident, $set1:ident, $fmadd:ident, $add:ident, $bias_load:ident, $store:ident) => {
            #[target_feature(enable = $features)]
            unsafe fn $tile<const MR: usize, W: $load>(
                x: *const f32,
                k_dim: usize,
                panel: *const W,
                bias: *const f32,
                out: *mut f32,
                out_stride: usize,
                cols: usize,
            ) {
                let mut acc = [[$zero(); 2]; MR];
                for k in 0..k_dim {
                    let w0 = W::$load_fn(panel.add(k * NR));
                    let w1 = W::$load_fn(panel.add(k * NR + $lanes));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let a = $set1(*x.add(r * k_dim + k));
                        acc[0] = $fmadd(a, w0, acc[0]);
                        acc[1] = $fmadd(a, w1, acc[1]);
                    }
                }
                let b0 = $bias_load(bias);
                let b1 = $bias_load(bias.add($lanes));
                for (r, acc) in acc.iter().enumerate() {
                    let row = [$add(acc[0], b0), $add(acc[1], b1)];
                    $store(out.add(r * out_stride), row, cols);
                }
            }
        };
    }

    tile!(
        tile_512,
        "avx512f,fma,f16c",
        Load512::load16,
        16,
        _mm512_setzero_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        _mm512_loadu_ps,
        store_512
    );
    tile!(
        tile_256,
        "avx2,fma,f16c",
        Load256::load8,
        8,
        _mm256_setzero_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        _mm256_loadu_ps,
        store_256
    );

    /// Stores the first `cols` of the 32 floats `row` at `dst`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn store_512(dst: *mut f32, row: [__m512; 2], cols: usize) {
        let mask = |n: usize| -> __mmask16 { (((1u32 << n.min(16)) - 1) & 0xffff) as u16 };
        _mm512_mask_storeu_ps(dst, mask(cols), row[0]);
        _mm512_mask_storeu_ps(dst.add(16), mask(cols.saturating_sub(16)), row[1]);
    }

    /// Stores the first `cols` of the 16 floats `row` at `dst`.
    #[target_feature(enable = "avx")]
    #[inline]
    unsafe fn store_256(dst: *mut f32, row: [__m256; 2], cols: usize) {
        if cols >= 16 {
            _mm256_storeu_ps(dst, row[0]);
            _mm256_storeu_ps(dst.add(8), row[1]);
        } else {
            let mut all = [0.0f32; 16];
            _mm256_storeu_ps(all.as_mut_ptr(), row[0]);
            _mm256_storeu_ps(all.as_mut_ptr().add(8), row[1]);
            std::ptr::copy_nonoverlapping(all.as_ptr(), dst, cols);
        }
    }

    /// Defines `$apply`, the product over all tiles `$width` columns wide and at most `$mr`
    /// rows high, each computed by `$tile`, for float32 or float16 panels.
    macro_rules! driver {
        ($apply:ident, $run:ident, $load:ident, $tile:ident, $mr:expr, $width:expr, $features:literal) => {
            /// # Safety
            /// The CPU has the kernel's features; `x` holds `rows × in_dim` floats and `out`
            /// `rows × out_dim`.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $apply(
                layer: &PackedLinear,
                panels: &Panels,
                x: &[f32],
                rows: usize,
                out: &mut [f32],
            ) {
                match panels {
                    Panels::F32(p) => $run(layer, p, x, rows, out),
                    Panels::F16(p) => $run(layer, p, x, rows, out),
                }
            }

            #[target_feature(enable = $features)]
            unsafe fn $run<W: $load>(
                layer: &PackedLinear,
                panels: &[W],
                x: &[f32],
                rows: usize,
                out: &mut [f32],
            ) {
                let (k_dim, n_dim) = (layer.in_dim, layer.out_dim);
                let width: usize = $width;
                for (p, panel) in panels.chunks_exact(k_dim * NR).enumerate() {
                    for first in (p * NR..(p + 1) * NR).step_by(width) {
                        if first >= n_dim {
                            break;
                        }
                        let cols = width.min(n_dim - first);
                        let bias = layer.bias.as_ptr().add(first);
                        let columns = panel.as_ptr().add(first - p * NR);
                        for r in (0..rows).step_by($mr) {
                            let mr = ($mr).min(rows - r);
                            let xr = x.as_ptr().add(r * k_dim);
                            let dst = out.as_mut_ptr().add(r * n_dim + first);
                            by_rows!(mr, $tile, xr, k_dim, columns, bias, dst, n_dim, cols);
                        }
                    }
                }
            }
        };
    }

    driver!(
        apply_512,
        run_512,
        Load512,
        tile_512,
        MR_512,
        NR,
        "avx512f,fma,f16c"
    );
    driver!(
        apply_256,
        run_256,
        Load256,
        tile_256,
        MR_256,
        16,
        "avx2,fma,f16c"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(n: usize, k: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32) * k).sin()).collect()
    }

    /// `x Wᵀ + b` in float64, the reference.
    fn reference(w: &[f32], b: &[f32], x: &[f32], rows: usize, out_dim: usize) -> Vec<f32> {
        let in_dim = w.len() / out_dim;
        let mut y = vec![0.0f32; rows * out_dim];
        for r in 0..rows {
            for o in 0..out_dim {
                let s: f64 = (0..in_dim)
                    .map(|k| f64::from(x[r * in_dim + k]) * f64::from(w[o * in_dim + k]))
                    .sum();
                y[r * out_dim + o] = (s + f64::from(b[o])) as f32;
            }
        }
        y
    }

    #[test]
    fn packed_matches_the_reference_for_every_shape_and_isa() {
        // Odd sizes exercise partial panels, half panels and every row-tile remainder.
        for (out_dim, in_dim) in [(1, 1), (7, 3), (33, 17), (64, 40), (100, 384)] {
            let w = wave(out_dim * in_dim, 0.37);
            let b = wave(out_dim, 1.1);
            for rows in [1, 5, 6, 7, 12, 13, 30, 97, 200] {
                let x = wave(rows * in_dim, 0.61);
                let want = reference(&w, &b, &x, rows, out_dim);
                for isa in Isa::available() {
                    let layer =
                        PackedLinear::for_isa(Weights::F32(&w), &b, out_dim, in_dim, isa).unwrap();
                    let mut got = vec![f32::NAN; rows * out_dim];
                    layer.apply(&x, rows, &mut got);
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                            "{isa:?} {out_dim}x{in_dim} rows {rows} [{i}]: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn packed_rows_do_not_depend_on_their_batch() {
        let (out_dim, in_dim) = (70, 50);
        let w = wave(out_dim * in_dim, 0.23);
        let b = wave(out_dim, 0.9);
        let x = wave(40 * in_dim, 0.71);
        for isa in Isa::available() {
            let layer = PackedLinear::for_isa(Weights::F32(&w), &b, out_dim, in_dim, isa).unwrap();
            let mut all = vec![0.0; 40 * out_dim];
            layer.apply(&x, 40, &mut all);
            for r in [0, 5, 11, 12, 39] {
                let mut one = vec![0.0; out_dim];
                layer.apply(&x[r * in_dim..(r + 1) * in_dim], 1, &mut one);
                assert_eq!(
                    &one[..],
                    &all[r * out_dim..(r + 1) * out_dim],
                    "{isa:?} {r}"
                );
            }
        }
    }

    #[test]
    fn packed_float16_weights_equal_their_float32_values() {
        let (out_dim, in_dim) = (45, 29);
        let w16: Vec<f16> = wave(out_dim * in_dim, 0.5)
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        let w32: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
        let b = wave(out_dim, 0.3);
        let x = wave(9 * in_dim, 0.8);
        for isa in Isa::available() {
            let half = PackedLinear::for_isa(Weights::F16(&w16), &b, out_dim, in_dim, isa).unwrap();
            let full = PackedLinear::for_isa(Weights::F32(&w32), &b, out_dim, in_dim, isa).unwrap();
            let (mut a, mut c) = (vec![0.0; 9 * out_dim], vec![0.0; 9 * out_dim]);
            half.apply(&x, 9, &mut a);
            full.apply(&x, 9, &mut c);
            assert_eq!(a, c, "{isa:?}");
        }
    }

    #[test]
    fn packed_rejects_mismatched_sizes() {
        let w = vec![0.0f32; 6];
        assert!(PackedLinear::new(Weights::F32(&w), &[0.0; 2], 2, 3).is_some());
        assert!(PackedLinear::new(Weights::F32(&w), &[0.0; 3], 2, 3).is_none());
        assert!(PackedLinear::new(Weights::F32(&w), &[0.0; 2], 3, 3).is_none());
        assert!(PackedLinear::new(Weights::F32(&[]), &[], 0, 0).is_none());
    }
}

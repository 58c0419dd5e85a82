//! Direct convolution (no im2col) for convolutions with 16 or 32 output channels and stride
//! 1, on x86-64 with AVX-512 or AVX2 + FMA: at width 16, the ResNet stem and the first two
//! stages' stride-1 layers, and their input gradients (transposed convolutions of the same
//! shapes).
//!
//! Layouts: one image at a time, zero-padded to `padded [h + 2·pad, w + 2·pad, cin]` (NHWC);
//! the kernel transposed to `wt [patch, cout]` (patch index `(ky·k + kx)·cin + ci`, the order
//! of [`kernels::conv::im2col_row`]); output `[oh, ow, cout]`.
//!
//! Why: the `gemm` crate runs a product with 16 output channels on a kernel of six
//! accumulators (`x1x6` on AVX-512), which waits on the FMA latency, after im2col has written
//! nine copies of the input; here a block of output pixels of one row keeps its accumulators
//! (16 pixels × one zmm for 16 channels, 12 × two for 32) and reads the padded image in
//! place. `cargo bench --bench kernels` (batch 64, 2 threads, AVX-512, 2026-12-01, four
//! runs), against im2col + GEMM: the 16→16 forward at 32×32 1.5–2.2× faster, forward +
//! backward 1.3–1.6× (the weight gradient stays a GEMM); 32→32 at 16×16 1.4× and 1.2×; the
//! stem's forward 4.2–6.9×.
//!
//! The values are bit for bit those of im2col + GEMM: each output channel sums its patch in
//! patch order, one fused multiply-add per tap starting from zero (padding taps included, as
//! zeros), then adds onto the destination when accumulating, which is what the `gemm` crate's
//! microkernels do for a patch within one depth block (512 values or more, by the machine's
//! L1). `tests/layers.rs` checks the bits on the ResNets' shapes, on each instruction set.

use kernels::conv::ConvGeometry;

/// f32 lanes of one accumulator: an output pixel's channels go 16 at a time.
pub const LANES: usize = 16;

/// Whether the direct convolution runs convolutions with `cout` output channels on `isa`:
/// 16 (one accumulator per pixel), and 32 (two) on AVX-512. On AVX2 a block of 32 channels
/// has room for 3 pixels only: one thread, 32→32 at 16×16, it ran at 50 GFLOP/s where the
/// AVX-512 GEMM ran at 105 and the AVX-512 block at 150 (not timed against the AVX2 GEMM).
/// Deeper layers have patches beyond the `gemm` crate's depth block, where bit-equality with
/// it ends, and keep its full kernels.
pub fn runs(isa: Isa, cout: usize) -> bool {
    cout == LANES || (cout == 2 * LANES && isa == Isa::Avx512)
}

/// Which instruction set the direct convolution runs with on this machine, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
}

impl Isa {
    /// Whether this machine has the instruction set (detected once, then cached by `std`).
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return match self {
            Isa::Avx512 => std::is_x86_feature_detected!("avx512f"),
            Isa::Avx2 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
        };
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}

/// The best instruction set this machine offers for the direct convolution.
pub fn isa() -> Option<Isa> {
    [Isa::Avx512, Isa::Avx2]
        .into_iter()
        .find(|isa| isa.available())
}

/// Length of the zero-padded copy of one image.
pub fn padded_len(g: ConvGeometry) -> usize {
    (g.h + 2 * g.pad) * (g.w + 2 * g.pad) * g.cin
}

/// `wt [patch, cout]` from the OHWI kernel `weight [cout, patch]`.
pub fn transpose_weight(weight: &[f32], patch: usize, cout: usize, wt: &mut [f32]) {
    for (t, row) in wt[..patch * cout].chunks_exact_mut(cout).enumerate() {
        row.iter_mut()
            .enumerate()
            .for_each(|(co, v)| *v = weight[co * patch + t]);
    }
}

/// `padded [h + 2·pad, w + 2·pad, cin]` ← image `x [h, w, cin]` with `pad` zeros on every
/// side.
pub fn pad_image(g: ConvGeometry, x: &[f32], padded: &mut [f32]) {
    let (pw, row) = (g.w + 2 * g.pad, g.w * g.cin);
    let padded = &mut padded[..padded_len(g)];
    padded.fill(0.0);
    for (y, src) in x[..g.h * row].chunks_exact(row).enumerate() {
        padded[((y + g.pad) * pw + g.pad) * g.cin..][..row].copy_from_slice(src);
    }
}

/// `out [oh, ow, cout] (+)= conv(padded)` for one image, with the instruction set `isa`,
/// which the machine must have. The convolution must have stride 1 and [`runs`]`(isa, cout)`.
pub fn conv_image(
    isa: Isa,
    g: ConvGeometry,
    cout: usize,
    padded: &[f32],
    wt: &[f32],
    out: &mut [f32],
    accumulate: bool,
) {
    assert!(
        isa.available(),
        "direct convolution: this machine has no {isa:?}"
    );
    assert!(
        g.stride == 1 && runs(isa, cout),
        "direct convolution: {g:?}, {cout} outputs"
    );
    assert!(padded.len() >= padded_len(g) && wt.len() >= g.patch() * cout);
    assert!(out.len() >= g.out_h() * g.out_w() * cout);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the machine has `isa`'s instructions, and the padded image, the kernel and the
    // output are as long as the blocks read and write (asserted above).
    unsafe {
        // Blocks of as many pixels as 16 or 24 of the 32 zmm, or 12 of the 16 ymm, hold.
        match (isa, cout / LANES) {
            (Isa::Avx512, 1) => x86::conv_image_avx512::<1, 16>(g, padded, wt, out, accumulate),
            (Isa::Avx512, _) => x86::conv_image_avx512::<2, 12>(g, padded, wt, out, accumulate),
            (Isa::Avx2, _) => x86::conv_image_avx2::<1, 6>(g, padded, wt, out, accumulate),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("{isa:?} exists on x86-64 only");
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::LANES;
    use core::arch::x86_64::*;
    use kernels::conv::ConvGeometry;

    /// 16 lanes of f32 on one instruction set.
    trait Lanes: Copy {
        unsafe fn zero() -> Self;
        unsafe fn load(p: *const f32) -> Self;
        unsafe fn store(self, p: *mut f32);
        unsafe fn add(self, other: Self) -> Self;
        /// `self + x·w`, rounded once per lane.
        unsafe fn fma(self, x: f32, w: Self) -> Self;
    }

    impl Lanes for __m512 {
        #[inline(always)]
        unsafe fn zero() -> Self {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self)
        }
        #[inline(always)]
        unsafe fn add(self, other: Self) -> Self {
            _mm512_add_ps(self, other)
        }
        #[inline(always)]
        unsafe fn fma(self, x: f32, w: Self) -> Self {
            _mm512_fmadd_ps(_mm512_set1_ps(x), w, self)
        }
    }

    impl Lanes for [__m256; 2] {
        #[inline(always)]
        unsafe fn zero() -> Self {
            [_mm256_setzero_ps(); 2]
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))]
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self[0]);
            _mm256_storeu_ps(p.add(8), self[1]);
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            [_mm256_add_ps(self[0], o[0]), _mm256_add_ps(self[1], o[1])]
        }
        #[inline(always)]
        unsafe fn fma(self, x: f32, w: Self) -> Self {
            let x = _mm256_set1_ps(x);
            [
                _mm256_fmadd_ps(x, w[0], self[0]),
                _mm256_fmadd_ps(x, w[1], self[1]),
            ]
        }
    }

    /// `P` output pixels of one row, `V` accumulators (16·V channels) each: `src` is the padded
    /// image at the first pixel's top-left tap, `row` the padded row's length in floats, `dst`
    /// the first pixel's output.
    /// `CIN` is the input's channel count when known at compile time (0: `g.cin`), so that
    /// the pixels' offsets become constants of the instructions.
    #[inline(always)]
    unsafe fn block<L: Lanes, const V: usize, const P: usize, const CIN: usize>(
        g: ConvGeometry,
        src: *const f32,
        row: usize,
        wt: *const f32,
        dst: *mut f32,
        accumulate: bool,
    ) {
        let cin = if CIN > 0 { CIN } else { g.cin };
        let mut acc = [[L::zero(); V]; P];
        let mut w = wt;
        for ky in 0..g.k {
            for kx in 0..g.k {
                let tap = src.add(ky * row + kx * cin);
                for ci in 0..cin {
                    let wv: [L; V] = core::array::from_fn(|v| L::load(w.add(v * LANES)));
                    w = w.add(V * LANES);
                    for (j, a) in acc.iter_mut().enumerate() {
                        let x = *tap.add(j * cin + ci);
                        for (a, &wv) in a.iter_mut().zip(&wv) {
                            *a = a.fma(x, wv);
                        }
                    }
                }
            }
        }
        for (j, a) in acc.into_iter().enumerate() {
            for (v, a) in a.into_iter().enumerate() {
                let d = dst.add((j * V + v) * LANES);
                let sum = if accumulate { L::load(d).add(a) } else { a };
                sum.store(d);
            }
        }
    }

    /// One image, each output row in blocks of `P` pixels, the rest in halving blocks.
    #[inline(always)]
    unsafe fn conv_image<L: Lanes, const V: usize, const P: usize>(
        g: ConvGeometry,
        padded: &[f32],
        wt: &[f32],
        out: &mut [f32],
        accumulate: bool,
    ) {
        // The input channel counts of the width-16 ResNets' convolutions it runs: 16 and 32,
        // and the stem's 3 (colour) or 1 (grey).
        match g.cin {
            32 => rows::<L, V, P, 32>(g, padded, wt, out, accumulate),
            16 => rows::<L, V, P, 16>(g, padded, wt, out, accumulate),
            3 => rows::<L, V, P, 3>(g, padded, wt, out, accumulate),
            1 => rows::<L, V, P, 1>(g, padded, wt, out, accumulate),
            _ => rows::<L, V, P, 0>(g, padded, wt, out, accumulate),
        }
    }

    #[inline(always)]
    unsafe fn rows<L: Lanes, const V: usize, const P: usize, const CIN: usize>(
        g: ConvGeometry,
        padded: &[f32],
        wt: &[f32],
        out: &mut [f32],
        accumulate: bool,
    ) {
        let (oh, ow, row) = (g.out_h(), g.out_w(), (g.w + 2 * g.pad) * g.cin);
        let (src, wt, dst) = (padded.as_ptr(), wt.as_ptr(), out.as_mut_ptr());
        for oy in 0..oh {
            let mut ox = 0;
            while ox < ow {
                let (s, d) = (
                    src.add(oy * row + ox * g.cin),
                    dst.add((oy * ow + ox) * V * LANES),
                );
                let left = ow - ox;
                ox += if left >= P {
                    block::<L, V, P, CIN>(g, s, row, wt, d, accumulate);
                    P
                } else if P > 8 && left >= 8 {
                    block::<L, V, 8, CIN>(g, s, row, wt, d, accumulate);
                    8
                } else if P > 4 && left >= 4 {
                    block::<L, V, 4, CIN>(g, s, row, wt, d, accumulate);
                    4
                } else if left >= 2 {
                    block::<L, V, 2, CIN>(g, s, row, wt, d, accumulate);
                    2
                } else {
                    block::<L, V, 1, CIN>(g, s, row, wt, d, accumulate);
                    1
                };
            }
        }
    }

    /// `P` pixels a block, `V` zmm accumulators each.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn conv_image_avx512<const V: usize, const P: usize>(
        g: ConvGeometry,
        padded: &[f32],
        wt: &[f32],
        out: &mut [f32],
        accumulate: bool,
    ) {
        conv_image::<__m512, V, P>(g, padded, wt, out, accumulate)
    }

    /// `P` pixels a block, `V` pairs of ymm accumulators each.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn conv_image_avx2<const V: usize, const P: usize>(
        g: ConvGeometry,
        padded: &[f32],
        wt: &[f32],
        out: &mut [f32],
        accumulate: bool,
    ) {
        conv_image::<[__m256; 2], V, P>(g, padded, wt, out, accumulate)
    }
}

//! Conv2d on the CPU, NHWC, no bias (every ResNet convolution is followed by a BatchNorm).
//!
//! Shapes: input `x [n, h, w, cin]`, output `[n, oh, ow, cout]`, weight `[cout, k, k, cin]`
//! (OHWI; PyTorch's OIHW is produced at the boundary, see [`crate::nn::registry`]).
//!
//! A 1×1 stride-1 convolution is one multithreaded GEMM over the `[n·h·w, cin]` matrix.
//! Others lower to im2col + GEMM: the batch is split into one contiguous range of images per
//! thread ("part"), and each part runs its own im2col and single-threaded GEMMs over chunks
//! of whole images, in a column buffer of its own near [`CHUNK_FLOATS`] and of at least
//! [`CHUNK_MIN_ROWS`] rows. One GEMM per thread beats one GEMM on all threads for these
//! shapes (2 threads, ResNet-18 at 32×32: forward 326 vs 288 GFLOP/s; weight gradient, a
//! small output with a long inner dimension, 254 vs 127). Weight gradients go to one partial
//! sum per part, reduced in part order, so results depend on the thread count (and on the
//! chunk size) but never on scheduling. Backward recomputes the columns.
//!
//! The input gradient goes one of two ways. Through gradient columns (`dout · W`, inner
//! dimension cout, a k·k times larger buffer) then a gather into the image; or, for a
//! stride-1 convolution with fewer than [`TRANSPOSED_BELOW_COUT`] output channels, as a
//! convolution of the output gradient with the kernel flipped and its channels transposed
//! (inner dimension k·k·cout, small output), which measured 7% faster at 64 and 128 channels
//! and slower from 256 on.
//!
//! A stride-1 convolution with 16 output channels, or 32 with AVX-512 (and so the input
//! gradient of a convolution with that many input channels), skips im2col and the GEMM on
//! x86-64 machines with AVX2 or AVX-512: see [`crate::cpu::direct_conv`], which gives the same
//! values bit for bit.

use crate::cpu::direct_conv::{self, Isa};
use crate::cpu::gemm::{matmul, matmul_serial};
use crate::cpu::TilePtr;
use kernels::conv::{col2im_pixel, im2col_row, ConvGeometry};
use rayon::prelude::*;

/// Stride-1 convolutions with fewer output channels take their input gradient as a
/// transposed convolution.
pub const TRANSPOSED_BELOW_COUT: usize = 256;

/// Column-buffer size (f32) a chunk aims for, per thread: 1 MiB, so that the columns im2col
/// has just written are still in cache when the GEMM reads them. Against the 8 MiB chunks
/// before (batch 64, ResNet-18 width 16 at 32×32, each convolution timed alternately with
/// both, on one thread and on two): the 16-channel 32×32 layers ran 1.3–1.7× faster, the
/// 32- and 64-channel ones 1.15–1.4×, and the default run's BYOL step 1.1–1.3× (`cargo
/// bench --bench byol -- --no-torch --width 16 --batch 64 --mlp 1024`, old and new back to
/// back). 2 MiB and 512 KiB read within a few percent of 1 MiB; 256 KiB lost up to 15% on
/// the deepest layers.
pub const CHUNK_FLOATS: usize = 1 << 18;

/// Fewest column rows a chunk holds (unless the part has fewer): the GEMM packs the weight
/// once per call, so a layer with a long patch needs many rows to repay it. At width 64,
/// 512 channels at 4×4, 1 MiB alone is 3 images (48 rows) and ran 1.3–1.5× slower than
/// 8 MiB; with at least 256 rows it runs level with it.
pub const CHUNK_MIN_ROWS: usize = 256;

/// A convolution's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2d {
    pub const fn new(cin: usize, cout: usize, k: usize, stride: usize, pad: usize) -> Self {
        Conv2d {
            cin,
            cout,
            k,
            stride,
            pad,
        }
    }
    pub fn geometry(&self, h: usize, w: usize) -> ConvGeometry {
        ConvGeometry {
            h,
            w,
            cin: self.cin,
            k: self.k,
            stride: self.stride,
            pad: self.pad,
        }
    }
    pub fn weight_len(&self) -> usize {
        self.cout * self.k * self.k * self.cin
    }
    /// Whether the convolution is a plain matrix product over pixels.
    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
    /// Column floats one part needs for `n` images of `h × w`, forward and backward (0 for a
    /// pointwise convolution).
    fn col_len(&self, n: usize, h: usize, w: usize) -> usize {
        if self.is_pointwise() {
            return 0;
        }
        let g = self.geometry(h, w);
        // Per image of a chunk: the forward's columns (a row per output pixel), or those of
        // the backward's transposed convolution, which runs over the same chunks of images
        // (a row per input pixel), whichever is larger.
        let forward = g.out_h() * g.out_w() * g.patch();
        let transposed = self
            .transposed()
            .map_or(0, |t| h * w * t.geometry(g.out_h(), g.out_w()).patch());
        images_per_chunk(g, n) * forward.max(transposed)
    }

    /// The convolution that maps ∂L/∂out to ∂L/∂x, where the backward uses it: stride 1,
    /// `pad < k`, fewer than [`TRANSPOSED_BELOW_COUT`] output channels.
    fn transposed(&self) -> Option<Conv2d> {
        let fits = self.stride == 1 && !self.is_pointwise() && self.pad < self.k;
        (fits && self.cout < TRANSPOSED_BELOW_COUT).then_some(Conv2d {
            cin: self.cout,
            cout: self.cin,
            k: self.k,
            stride: 1,
            pad: self.k - 1 - self.pad,
        })
    }
}

/// Images of a part that go through im2col and the GEMMs together: about [`CHUNK_FLOATS`]
/// of columns and at least [`CHUNK_MIN_ROWS`] rows, at least one image, at most `n`.
pub fn images_per_chunk(g: ConvGeometry, n: usize) -> usize {
    let rows = (CHUNK_FLOATS / g.patch()).max(CHUNK_MIN_ROWS);
    (rows / (g.out_h() * g.out_w()).max(1)).clamp(1, n.max(1))
}

/// Scratch of the convolutions, allocated once and reused: per part, a column buffer, a
/// partial weight gradient and a padded image for the direct convolution; the flipped kernel
/// of a transposed convolution, and the direct convolution's transposed kernel.
#[derive(Default)]
pub struct ConvScratch {
    parts: usize,
    col_per_part: usize,
    weight_per_part: usize,
    padded_per_part: usize,
    col: Vec<f32>,
    partials: Vec<f32>,
    flipped: Vec<f32>,
    padded: Vec<f32>,
    direct_weight: Vec<f32>,
    /// The direct convolution's instruction set; `None` runs every convolution as im2col +
    /// GEMM.
    direct: Option<Isa>,
}

impl ConvScratch {
    /// Big enough for every convolution in `convs` on inputs `(n, h, w)`, with one part per
    /// thread of the current rayon pool.
    pub fn for_convs<'a>(
        convs: impl IntoIterator<Item = (&'a Conv2d, usize, usize, usize)>,
    ) -> Self {
        let parts = rayon::current_num_threads().max(1);
        let (mut col, mut weight, mut flipped, mut padded) = (0, 0, 0, 0);
        for (c, n, h, w) in convs {
            col = col.max(c.col_len(n, h, w));
            if !c.is_pointwise() {
                weight = weight.max(c.weight_len());
            }
            if let Some(t) = c.transposed() {
                flipped = flipped.max(c.weight_len());
                let g = c.geometry(h, w);
                padded = padded.max(direct_conv::padded_len(t.geometry(g.out_h(), g.out_w())));
            }
            padded = padded.max(direct_conv::padded_len(c.geometry(h, w)));
        }
        ConvScratch {
            parts,
            col_per_part: col,
            weight_per_part: weight,
            padded_per_part: padded,
            col: vec![0.0; parts * col],
            partials: vec![0.0; parts * weight],
            flipped: vec![0.0; flipped],
            padded: vec![0.0; parts * padded],
            direct_weight: vec![0.0; weight.max(flipped)],
            direct: direct_conv::isa(),
        }
    }

    /// The same scratch with the direct convolution on another instruction set, or off
    /// (`None`: im2col + GEMM everywhere), for tests and benches that compare the two.
    pub fn with_direct(mut self, isa: Option<Isa>) -> Self {
        self.direct = isa;
        self
    }

    /// The instruction set of the direct convolution for `c`, when it runs directly.
    fn direct_for(&self, c: &Conv2d) -> Option<Isa> {
        self.direct
            .filter(|&isa| direct_conv::runs(isa, c.cout) && c.stride == 1 && !c.is_pointwise())
    }
}

/// Fills `col [rows, patch]` with the column rows of images `[n0, n0 + rows/(oh·ow))`.
fn im2col(g: ConvGeometry, x: &[f32], n0: usize, col: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    for (r, row) in col.chunks_mut(g.patch()).enumerate() {
        let (n, p) = (n0 + r / (oh * ow), r % (oh * ow));
        im2col_row(g, x, n, p / ow, p % ow, row)
    }
}

/// How `n ≥ 1` images split into at most `parts` contiguous parts: (images per part, parts).
fn partition(parts: usize, n: usize) -> (usize, usize) {
    let per_part = n.div_ceil(parts.clamp(1, n));
    (per_part, n.div_ceil(per_part))
}

/// Runs `f(part, first image, image count)` for each part of `n` images, in parallel.
fn par_parts(parts: usize, n: usize, f: impl Fn(usize, usize, usize) + Sync) {
    let (per_part, count) = partition(parts, n);
    (0..count).into_par_iter().for_each(|p| {
        let first = p * per_part;
        f(p, first, per_part.min(n - first))
    });
}

/// `out [n, oh, ow, cout] = conv(x [n, h, w, cin])`.
#[allow(clippy::too_many_arguments)]
pub fn conv_forward(
    c: &Conv2d,
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    weight: &[f32],
    out: &mut [f32],
    scratch: &mut ConvScratch,
) {
    conv_into(c, x, n, h, w, weight, out, scratch, false)
}

/// `out (+)= conv(x)`: the forward, optionally accumulating into `out`.
#[allow(clippy::too_many_arguments)]
fn conv_into(
    c: &Conv2d,
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    weight: &[f32],
    out: &mut [f32],
    scratch: &mut ConvScratch,
    accumulate: bool,
) {
    let g = c.geometry(h, w);
    if c.is_pointwise() {
        return matmul(
            out,
            n * h * w,
            c.cout,
            c.cin,
            x,
            false,
            weight,
            true,
            accumulate,
        );
    }
    if let Some(isa) = scratch.direct_for(c) {
        return direct(isa, g, c.cout, x, n, weight, out, scratch, accumulate);
    }
    let (ohw, patch, step) = (g.out_h() * g.out_w(), g.patch(), images_per_chunk(g, n));
    let (out_ptr, col_ptr, col_len) = (
        TilePtr::new(out),
        TilePtr::new(&mut scratch.col),
        scratch.col_per_part,
    );
    // SAFETY: parts write disjoint image ranges of `out` and their own column buffer.
    par_parts(scratch.parts, n, |p, first, images| unsafe {
        let col = col_ptr.slice(p * col_len, col_len);
        for i0 in (0..images).step_by(step) {
            let rows = (images - i0).min(step) * ohw;
            im2col(g, x, first + i0, &mut col[..rows * patch]);
            let dst = out_ptr.slice((first + i0) * ohw * c.cout, rows * c.cout);
            matmul_serial(
                dst,
                rows,
                c.cout,
                patch,
                &col[..rows * patch],
                false,
                weight,
                true,
                accumulate,
            );
        }
    });
}

/// [`conv_into`] without im2col: each part pads its images one at a time and runs them
/// through [`direct_conv::conv_image`].
#[allow(clippy::too_many_arguments)]
fn direct(
    isa: Isa,
    g: ConvGeometry,
    cout: usize,
    x: &[f32],
    n: usize,
    weight: &[f32],
    out: &mut [f32],
    scratch: &mut ConvScratch,
    accumulate: bool,
) {
    let wt = &mut scratch.direct_weight[..g.patch() * cout];
    direct_conv::transpose_weight(weight, g.patch(), cout, wt);
    let (image, out_image) = (g.h * g.w * g.cin, g.out_h() * g.out_w() * cout);
    let (out_ptr, padded_ptr, padded_len) = (
        TilePtr::new(out),
        TilePtr::new(&mut scratch.padded),
        scratch.padded_per_part,
    );
    let wt = &*wt;
    // SAFETY: parts write disjoint image ranges of `out` and their own padded image.
    par_parts(scratch.parts, n, |p, first, images| unsafe {
        let padded = padded_ptr.slice(p * padded_len, padded_len);
        for i in first..first + images {
            direct_conv::pad_image(g, &x[i * image..][..image], padded);
            let out = out_ptr.slice(i * out_image, out_image);
            direct_conv::conv_image(isa, g, cout, padded, wt, out, accumulate);
        }
    });
}

/// `flipped[ci, ky, kx, co] = weight[co, k−1−ky, k−1−kx, ci]`: the kernel of the transposed
/// convolution, OHWI like every kernel here.
fn flip_kernel(c: &Conv2d, weight: &[f32], flipped: &mut [f32]) {
    let k = c.k;
    for ci in 0..c.cin {
        for ky in 0..k {
            for kx in 0..k {
                let src =
                    |co: usize| weight[((co * k + (k - 1 - ky)) * k + (k - 1 - kx)) * c.cin + ci];
                let dst = &mut flipped[((ci * k + ky) * k + kx) * c.cout..][..c.cout];
                dst.iter_mut().enumerate().for_each(|(co, d)| *d = src(co));
            }
        }
    }
}

/// Backward: `dweight += ∂L/∂weight`; with `dx`, the input gradient is written (or added,
/// when `accumulate`) into it. `dout [n, oh, ow, cout]`.
#[allow(clippy::too_many_arguments)]
pub fn conv_backward(
    c: &Conv2d,
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    weight: &[f32],
    dout: &[f32],
    dweight: &mut [f32],
    dx: Option<(&mut [f32], bool)>,
    scratch: &mut ConvScratch,
) {
    let g = c.geometry(h, w);
    if c.is_pointwise() {
        let rows = n * h * w;
        matmul(dweight, c.cout, c.cin, rows, dout, true, x, false, true);
        if let Some((dx, accumulate)) = dx {
            matmul(
                dx, rows, c.cin, c.cout, dout, false, weight, false, accumulate,
            );
        }
        return;
    }
    let transposed = c.transposed();
    if transposed.is_some() && dx.is_some() {
        flip_kernel(c, weight, &mut scratch.flipped[..c.weight_len()]);
    }
    // The transposed convolution runs directly when it has 16 (or, on AVX-512, 32) outputs,
    // the forward's input channels.
    let direct_dx = transposed.and_then(|t| Some((t, scratch.direct_for(&t)?)));
    if let (Some((t, _)), Some(_)) = (direct_dx, &dx) {
        let patch = t.geometry(g.out_h(), g.out_w()).patch();
        direct_conv::transpose_weight(
            &scratch.flipped[..c.weight_len()],
            patch,
            c.cin,
            &mut scratch.direct_weight[..c.weight_len()],
        );
    }
    let (oh, ow) = (g.out_h(), g.out_w());
    let (ohw, patch, step) = (oh * ow, g.patch(), images_per_chunk(g, n));
    let wl = c.weight_len();
    let (col_ptr, col_len) = (TilePtr::new(&mut scratch.col), scratch.col_per_part);
    let (partial_ptr, partial_len) = (TilePtr::new(&mut scratch.partials), scratch.weight_per_part);
    let accumulate = dx.as_ref().is_some_and(|d| d.1);
    let dx_ptr = dx.map(|(d, _)| TilePtr::new(d));
    let flipped = &scratch.flipped[..if transposed.is_some() { wl } else { 0 }];
    let direct_weight = &scratch.direct_weight[..if direct_dx.is_some() { wl } else { 0 }];
    let (padded_ptr, padded_len) = (TilePtr::new(&mut scratch.padded), scratch.padded_per_part);
    let image = h * w * c.cin;
    let parts = scratch.parts;
    // SAFETY: parts touch disjoint image ranges of `dx` and their own column buffer, padded
    // image and partial weight gradient.
    par_parts(parts, n, |p, first, images| unsafe {
        let col = col_ptr.slice(p * col_len, col_len);
        let partial = partial_ptr.slice(p * partial_len, wl);
        partial.fill(0.0);
        for i0 in (0..images).step_by(step) {
            let (m, n0) = ((images - i0).min(step), first + i0);
            let rows = m * ohw;
            let dout = &dout[n0 * ohw * c.cout..][..rows * c.cout];
            im2col(g, x, n0, &mut col[..rows * patch]);
            matmul_serial(
                partial,
                c.cout,
                patch,
                rows,
                dout,
                true,
                &col[..rows * patch],
                false,
                true,
            );
            let Some(dx) = dx_ptr else { continue };
            let dx = dx.slice(n0 * image, m * image);
            match (transposed, direct_dx) {
                (_, Some((t, isa))) => {
                    let tg = t.geometry(oh, ow);
                    let padded = padded_ptr.slice(p * padded_len, padded_len);
                    for (dout, dx) in dout
                        .chunks_exact(ohw * c.cout)
                        .zip(dx.chunks_exact_mut(image))
                    {
                        direct_conv::pad_image(tg, dout, padded);
                        direct_conv::conv_image(
                            isa,
                            tg,
                            c.cin,
                            padded,
                            direct_weight,
                            dx,
                            accumulate,
                        );
                    }
                }
                (Some(t), None) => {
                    let tg = t.geometry(oh, ow);
                    let tcol = &mut col[..m * h * w * tg.patch()];
                    im2col(tg, dout, 0, tcol);
                    matmul_serial(
                        dx,
                        m * h * w,
                        c.cin,
                        tg.patch(),
                        tcol,
                        false,
                        flipped,
                        true,
                        accumulate,
                    );
                }
                (None, _) => {
                    // ∂L/∂columns, then each input pixel gathers what it was copied to.
                    let dcol = &mut col[..rows * patch];
                    matmul_serial(dcol, rows, patch, c.cout, dout, false, weight, false, false);
                    for (i, pixel) in dx.chunks_mut(c.cin).enumerate() {
                        let (img, px) = (i / (h * w), i % (h * w));
                        if !accumulate {
                            pixel.fill(0.0);
                        }
                        col2im_pixel(
                            g,
                            &dcol[img * ohw * patch..][..ohw * patch],
                            px / w,
                            px % w,
                            pixel,
                        )
                    }
                }
            }
        }
    });
    // Partial sums in part order: the same result whatever thread ran which part.
    for p in 0..partition(parts, n).1 {
        let partial = &scratch.partials[p * partial_len..][..wl];
        dweight.iter_mut().zip(partial).for_each(|(d, &s)| *d += s);
    }
}

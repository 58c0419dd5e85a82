//! Conv2d on the CPU, NHWC, no bias (every ResNet convolution is followed by a BatchNorm).
//!
//! Shapes: input `x [n, h, w, cin]`, output `[n, oh, ow, cout]`, weight `[cout, k, k, cin]`
//! (OHWI; PyTorch's OIHW is produced at the boundary, see [`super::registry`]).
//! A 1×1 stride-1 convolution is one GEMM over the `[n·h·w, cin]` matrix. Others lower to
//! im2col + GEMM in chunks of whole images, so the column buffer stays near
//! [`CHUNK_FLOATS`] whatever the batch; backward recomputes the columns instead of keeping them.

use crate::cpu::gemm::matmul;
use kernels::conv::{col2im_pixel, im2col_row, ConvGeometry};
use rayon::prelude::*;

/// Column-buffer size (f32) a chunk aims for: 8 MiB.
pub const CHUNK_FLOATS: usize = 1 << 21;

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
    /// Column floats needed for `n` images of `h × w` (0 for a pointwise convolution).
    pub fn col_len(&self, n: usize, h: usize, w: usize) -> usize {
        let g = self.geometry(h, w);
        if self.is_pointwise() {
            0
        } else {
            images_per_chunk(g, n) * g.out_h() * g.out_w() * g.patch()
        }
    }
}

fn images_per_chunk(g: ConvGeometry, n: usize) -> usize {
    (CHUNK_FLOATS / g.patch() / (g.out_h() * g.out_w()).max(1)).clamp(1, n.max(1))
}

/// Fills `col [rows, patch]` with the column rows of images `[n0, n0 + rows/(oh·ow))`.
fn im2col(g: ConvGeometry, x: &[f32], n0: usize, col: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    col.par_chunks_mut(g.patch())
        .enumerate()
        .for_each(|(r, row)| {
            let (n, p) = (n0 + r / (oh * ow), r % (oh * ow));
            im2col_row(g, x, n, p / ow, p % ow, row)
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
    col: &mut [f32],
) {
    let g = c.geometry(h, w);
    if c.is_pointwise() {
        return matmul(out, n * h * w, c.cout, c.cin, x, false, weight, true, false);
    }
    let (ohw, patch, step) = (g.out_h() * g.out_w(), g.patch(), images_per_chunk(g, n));
    for n0 in (0..n).step_by(step) {
        let rows = (n - n0).min(step) * ohw;
        let col = &mut col[..rows * patch];
        im2col(g, x, n0, col);
        matmul(
            &mut out[n0 * ohw * c.cout..][..rows * c.cout],
            rows,
            c.cout,
            patch,
            col,
            false,
            weight,
            true,
            false,
        );
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
    col: &mut [f32],
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
    let (ohw, patch, step) = (g.out_h() * g.out_w(), g.patch(), images_per_chunk(g, n));
    let mut dx = dx;
    for n0 in (0..n).step_by(step) {
        let images = (n - n0).min(step);
        let rows = images * ohw;
        let col = &mut col[..rows * patch];
        let dout = &dout[n0 * ohw * c.cout..][..rows * c.cout];
        im2col(g, x, n0, col);
        matmul(dweight, c.cout, patch, rows, dout, true, col, false, true);
        if let Some((dx, accumulate)) = dx.as_mut() {
            // The columns are spent: reuse their buffer for ∂L/∂columns.
            matmul(col, rows, patch, c.cout, dout, false, weight, false, false);
            let dcol = &*col;
            let image = h * w * c.cin;
            dx[n0 * image..][..images * image]
                .par_chunks_mut(c.cin)
                .enumerate()
                .for_each(|(i, pixel)| {
                    let (m, p) = (i / (h * w), i % (h * w));
                    if !*accumulate {
                        pixel.fill(0.0);
                    }
                    col2im_pixel(
                        g,
                        &dcol[m * ohw * patch..][..ohw * patch],
                        p / w,
                        p % w,
                        pixel,
                    )
                });
        }
    }
}

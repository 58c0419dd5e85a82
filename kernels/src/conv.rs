//! Convolution lowering: im2col and its adjoint, one output (or input) pixel at a time.
//!
//! Layouts: images NHWC (`[n, h, w, c]`, row-major); a column row for output pixel
//! `(n, oy, ox)` holds the receptive field in `(ky, kx, c)` order, `k·k·cin` values, so that
//! it multiplies a weight stored `[cout, ky, kx, cin]` (OHWI). Out-of-image taps are zero.

/// Geometry of a 2-D convolution (or pooling window) over NHWC images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvGeometry {
    /// Output height; zero when the window does not fit.
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad)
            .checked_sub(self.k)
            .map_or(0, |v| v / self.stride + 1)
    }
    /// Output width; zero when the window does not fit.
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad)
            .checked_sub(self.k)
            .map_or(0, |v| v / self.stride + 1)
    }
    /// Values in one column row: `k·k·cin`.
    pub fn patch(&self) -> usize {
        self.k * self.k * self.cin
    }
    /// Input coordinate of output coordinate `o` at tap `t`, if it lies inside `0..size`.
    #[inline(always)]
    fn tap(&self, o: usize, t: usize, size: usize) -> Option<usize> {
        (o * self.stride + t)
            .checked_sub(self.pad)
            .filter(|&i| i < size)
    }
}

/// Column row of output pixel `(n, oy, ox)`: `col[(ky·k + kx)·cin + c] = x[n, iy, ix, c]`.
#[inline(always)]
pub fn im2col_row(g: ConvGeometry, x: &[f32], n: usize, oy: usize, ox: usize, col: &mut [f32]) {
    let image = &x[n * g.h * g.w * g.cin..][..g.h * g.w * g.cin];
    for ky in 0..g.k {
        for kx in 0..g.k {
            let dst = &mut col[(ky * g.k + kx) * g.cin..][..g.cin];
            match (g.tap(oy, ky, g.h), g.tap(ox, kx, g.w)) {
                (Some(iy), Some(ix)) => {
                    dst.copy_from_slice(&image[(iy * g.w + ix) * g.cin..][..g.cin])
                }
                _ => dst.fill(0.0),
            }
        }
    }
}

/// The adjoint of [`im2col_row`] at input pixel `(n, iy, ix)`: adds to `dx_pixel [cin]` every
/// column-gradient entry that `x[n, iy, ix, ·]` was copied to. `dcol` holds the column rows
/// of image `n`'s output pixels (`out_h·out_w` rows, row `oy·out_w + ox`). Gathering per input
/// pixel, rather than scattering per output pixel, lets input pixels run in parallel.
#[inline(always)]
pub fn col2im_pixel(g: ConvGeometry, dcol: &[f32], iy: usize, ix: usize, dx_pixel: &mut [f32]) {
    let (oh, ow, patch) = (g.out_h(), g.out_w(), g.patch());
    for ky in 0..g.k {
        let Some(oy) = output_of(iy, ky, g.stride, g.pad, oh) else {
            continue;
        };
        for kx in 0..g.k {
            let Some(ox) = output_of(ix, kx, g.stride, g.pad, ow) else {
                continue;
            };
            let src = &dcol[(oy * ow + ox) * patch + (ky * g.k + kx) * g.cin..][..g.cin];
            dx_pixel.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
        }
    }
}

/// The output coordinate whose tap `t` reads input coordinate `i`, if there is one.
#[inline(always)]
fn output_of(i: usize, t: usize, stride: usize, pad: usize, out: usize) -> Option<usize> {
    let shifted = (i + pad).checked_sub(t)?;
    (shifted % stride == 0 && shifted / stride < out).then_some(shifted / stride)
}

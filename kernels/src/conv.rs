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
/// The `k` taps of a kernel row read neighbouring pixels, which NHWC stores as one run of
/// `k·cin` values, so a row inside the image is one copy rather than `k` short ones: at the
/// default run's width (16 channels, 64-byte copies per tap) the BYOL step ran 1.10× faster
/// (`cargo bench --bench byol -- --width 16 --batch 64`, one thread, side by side with the
/// copy per tap, twice); at width 64 it is level.
#[inline(always)]
pub fn im2col_row(g: ConvGeometry, x: &[f32], n: usize, oy: usize, ox: usize, col: &mut [f32]) {
    let image = &x[n * g.h * g.w * g.cin..][..g.h * g.w * g.cin];
    let run = g.k * g.cin;
    // The first tap's column when every tap of a kernel row lies inside the image.
    let inside = (ox * g.stride)
        .checked_sub(g.pad)
        .filter(|&ix| ix + g.k <= g.w);
    for ky in 0..g.k {
        let dst = &mut col[ky * run..][..run];
        match (g.tap(oy, ky, g.h), inside) {
            (None, _) => dst.fill(0.0),
            (Some(iy), Some(ix)) => dst.copy_from_slice(&image[(iy * g.w + ix) * g.cin..][..run]),
            (Some(iy), None) => {
                for (kx, tap) in dst.chunks_exact_mut(g.cin).enumerate() {
                    match g.tap(ox, kx, g.w) {
                        Some(ix) => tap.copy_from_slice(&image[(iy * g.w + ix) * g.cin..][..g.cin]),
                        None => tap.fill(0.0),
                    }
                }
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

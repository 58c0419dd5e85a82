//! Pooling over NHWC images, one output pixel (max) or one image (average) at a time.

use crate::conv::ConvGeometry;

/// Max over the window of output pixel `(n, oy, ox)`, per channel; writes the values to `out`
/// and the flat input index of each maximum (within the image) to `argmax`. Out-of-image taps
/// are ignored (PyTorch pads with −∞). Ties keep the first maximum in (ky, kx) order.
#[inline(always)]
pub fn maxpool_pixel(
    g: ConvGeometry,
    x: &[f32],
    n: usize,
    oy: usize,
    ox: usize,
    out: &mut [f32],
    argmax: &mut [u32],
) {
    let image = &x[n * g.h * g.w * g.cin..][..g.h * g.w * g.cin];
    out.fill(f32::NEG_INFINITY);
    for ky in 0..g.k {
        let Some(iy) = (oy * g.stride + ky).checked_sub(g.pad).filter(|&i| i < g.h) else {
            continue;
        };
        for kx in 0..g.k {
            let Some(ix) = (ox * g.stride + kx).checked_sub(g.pad).filter(|&i| i < g.w) else {
                continue;
            };
            let at = (iy * g.w + ix) * g.cin;
            for (c, (o, am)) in out.iter_mut().zip(argmax.iter_mut()).enumerate() {
                let v = image[at + c];
                if v > *o {
                    *o = v;
                    *am = (at + c) as u32;
                }
            }
        }
    }
}

/// Mean over the `hw` pixels of one image `x [hw, c]` into `out [c]`.
#[inline(always)]
pub fn avgpool_image(x: &[f32], hw: usize, out: &mut [f32]) {
    out.fill(0.0);
    for pixel in x.chunks_exact(out.len()).take(hw) {
        out.iter_mut().zip(pixel).for_each(|(o, &v)| *o += v);
    }
    let inv = 1.0 / hw as f32;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// Backward of [`avgpool_image`]: every pixel of `dx [hw, c]` gets `dout / hw`.
#[inline(always)]
pub fn avgpool_image_backward(dout: &[f32], hw: usize, dx: &mut [f32]) {
    let inv = 1.0 / hw as f32;
    for pixel in dx.chunks_exact_mut(dout.len()).take(hw) {
        pixel.iter_mut().zip(dout).for_each(|(d, &g)| *d = g * inv);
    }
}

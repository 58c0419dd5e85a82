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

/// The gradient of input value `(iy, ix, c)` of one image: the sum of the output gradients
/// whose window's maximum it was, gathered in increasing output-pixel order (the order a
/// sequential scatter over the outputs adds them in). `dout` and `argmax` are the image's
/// `[oh, ow, c]`. Gathering per input value lets every value run in parallel without atomics.
#[inline(always)]
pub fn maxpool_input_gradient(
    g: ConvGeometry,
    dout: &[f32],
    argmax: &[u32],
    iy: usize,
    ix: usize,
    c: usize,
) -> f32 {
    let (oh, ow, channels) = (g.out_h(), g.out_w(), g.cin);
    let index = ((iy * g.w + ix) * channels + c) as u32;
    let mut sum = 0.0f32;
    // Output rows (columns) whose window covers iy (ix): o·stride ≤ i + pad < o·stride + k.
    let first = |i: usize| (i + g.pad + 1).saturating_sub(g.k).div_ceil(g.stride);
    let (oy0, oy1) = (first(iy), ((iy + g.pad) / g.stride + 1).min(oh));
    let (ox0, ox1) = (first(ix), ((ix + g.pad) / g.stride + 1).min(ow));
    for oy in oy0..oy1 {
        for ox in ox0..ox1 {
            let at = (oy * ow + ox) * channels + c;
            if argmax[at] == index {
                sum += dout[at];
            }
        }
    }
    sum
}

/// Mean over the `hw` pixels of channel `c` of one image `x [hw, channels]`: the value
/// [`avgpool_image`] writes for that channel, bit for bit (same order, same scaling).
#[inline(always)]
pub fn avgpool_channel(x: &[f32], hw: usize, channels: usize, c: usize) -> f32 {
    let mut sum = 0.0f32;
    for p in 0..hw {
        sum += x[p * channels + c];
    }
    sum * (1.0 / hw as f32)
}

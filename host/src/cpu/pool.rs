//! Max-pooling and global average pooling on the CPU, NHWC; one image per rayon task.

use kernels::conv::ConvGeometry;
use kernels::pool::{avgpool_image, avgpool_image_backward, maxpool_input_gradient, maxpool_pixel};
use rayon::prelude::*;

/// `out [n, oh, ow, c]` = max over each window of `x [n, h, w, c]`; `argmax` (same length as
/// `out`) records, per output value, the flat index of its maximum within its image.
pub fn maxpool_forward(g: ConvGeometry, x: &[f32], n: usize, out: &mut [f32], argmax: &mut [u32]) {
    let (oh, ow, c) = (g.out_h(), g.out_w(), g.cin);
    out.par_chunks_mut(c)
        .zip(argmax.par_chunks_mut(c))
        .enumerate()
        .take(n * oh * ow)
        .for_each(|(i, (o, am))| {
            let (m, p) = (i / (oh * ow), i % (oh * ow));
            maxpool_pixel(g, x, m, p / ow, p % ow, o, am)
        });
}

/// `dx [n, h, w, c]` (overwritten) from `dout [n, oh, ow, c]`: each gradient goes to its
/// window's maximum; overlapping windows add.
pub fn maxpool_backward(g: ConvGeometry, dout: &[f32], argmax: &[u32], n: usize, dx: &mut [f32]) {
    let (image_in, image_out) = (g.h * g.w * g.cin, g.out_h() * g.out_w() * g.cin);
    dx[..n * image_in]
        .par_chunks_mut(image_in)
        .enumerate()
        .for_each(|(m, dx)| {
            let (d, am) = (
                &dout[m * image_out..][..image_out],
                &argmax[m * image_out..][..image_out],
            );
            for (i, v) in dx.iter_mut().enumerate() {
                let (pixel, c) = (i / g.cin, i % g.cin);
                *v = maxpool_input_gradient(g, d, am, pixel / g.w, pixel % g.w, c);
            }
        });
}

/// `out [n, c]` = mean over the `hw` pixels of each image of `x [n, hw, c]`.
pub fn avgpool_forward(x: &[f32], n: usize, hw: usize, c: usize, out: &mut [f32]) {
    out[..n * c]
        .par_chunks_mut(c)
        .zip(x.par_chunks(hw * c))
        .for_each(|(o, img)| avgpool_image(img, hw, o));
}

/// `dx [n, hw, c]` (overwritten) from `dout [n, c]`.
pub fn avgpool_backward(dout: &[f32], n: usize, hw: usize, c: usize, dx: &mut [f32]) {
    dx[..n * hw * c]
        .par_chunks_mut(hw * c)
        .zip(dout.par_chunks(c))
        .for_each(|(d, g)| avgpool_image_backward(g, hw, d));
}

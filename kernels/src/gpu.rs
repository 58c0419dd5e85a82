//! PTX entry points (built only for `nvptx64`). Each computes which unit of work its thread
//! owns and calls the shared function the CPU path calls too; nothing else lives here.
//!
//! Launch shapes (the host's `cuda` backend follows them): element kernels one thread per
//! element, row kernels one thread per row, column kernels one thread per column, and the
//! `grid` kernels the thread counts `grid` states; 1-D grids. Flags are passed as `usize`.

use crate::augment::ViewParams;
use crate::batchnorm::Tile;
use crate::conv::ConvGeometry;
use crate::grid::{self, TensorRow};
use crate::{ema, linear, loss, simplicial};
use core::arch::nvptx::{_block_dim_x, _block_idx_x, _thread_idx_x};
use core::slice::{from_raw_parts, from_raw_parts_mut};

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[inline(always)]
fn thread_index() -> usize {
    unsafe { (_block_idx_x() as usize) * (_block_dim_x() as usize) + _thread_idx_x() as usize }
}

/// Column `c` of a `[rows, cols]` matrix, every row.
#[inline(always)]
fn column(rows: usize, cols: usize, c: usize) -> Tile {
    Tile {
        cols,
        r0: 0,
        r1: rows,
        c0: c,
        width: 1,
    }
}

#[no_mangle]
pub unsafe extern "ptx-kernel" fn ema_update(
    target: *mut f32,
    online: *const f32,
    tau: f32,
    n: usize,
) {
    let i = thread_index();
    if i < n {
        *target.add(i) = ema::ema_element(*target.add(i), *online.add(i), tau);
    }
}

#[no_mangle]
pub unsafe extern "ptx-kernel" fn nmse_forward(
    p: *const f32,
    z: *const f32,
    loss_rows: *mut f32,
    rows: usize,
    dim: usize,
) {
    let r = thread_index();
    if r < rows {
        let at = r * dim;
        *loss_rows.add(r) = loss::nmse_row_forward(
            from_raw_parts(p.add(at), dim),
            from_raw_parts(z.add(at), dim),
        );
    }
}

#[no_mangle]
pub unsafe extern "ptx-kernel" fn nmse_backward(
    p: *const f32,
    z: *const f32,
    grad_p: *mut f32,
    rows: usize,
    dim: usize,
    scale: f32,
) {
    let r = thread_index();
    if r < rows {
        let at = r * dim;
        loss::nmse_row_backward(
            from_raw_parts(p.add(at), dim),
            from_raw_parts(z.add(at), dim),
            scale,
            from_raw_parts_mut(grad_p.add(at), dim),
        );
    }
}

/// The body of an entry point whose threads each own one unit of `grid`: `i` is the thread's
/// index, guarded against the unit count.
macro_rules! grid_entry {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) threads($threads:expr) => $body:expr;)*) => {$(
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $name($($arg: $ty),*) {
            let i = thread_index();
            if i < $threads {
                $body(i)
            }
        }
    )*};
}

fn geometry(h: usize, w: usize, cin: usize, k: usize, stride: usize, pad: usize) -> ConvGeometry {
    ConvGeometry {
        h,
        w,
        cin,
        k,
        stride,
        pad,
    }
}

grid_entry! {
    fn bn_sums_partial(h: *const f32, rows: usize, cols: usize, partial: *mut f32)
        threads(grid::row_blocks(rows) * cols)
        => |i| grid::bn_sums_partial(i, h, rows, cols, partial);
    fn reduce_blocks(partial: *const f32, k: usize, blocks: usize, cols: usize, out: *mut f32)
        threads(k * blocks.div_ceil(grid::GPU_REDUCE_GROUP) * cols)
        => |i| grid::reduce_blocks(i, partial, blocks, cols, out);
    fn bn_finish(cols: usize, count: usize, sums: *const f32, gamma: *const f32, beta: *const f32, running_mean: *mut f32, running_var: *mut f32, stats: *mut f32, fold: *mut f32)
        threads(cols)
        => |c| grid::bn_finish(c, cols, count, sums, gamma, beta, running_mean, running_var, stats, fold);
    fn bn_fold_eval(cols: usize, gamma: *const f32, beta: *const f32, running_mean: *const f32, running_var: *const f32, fold: *mut f32)
        threads(cols)
        => |c| grid::bn_fold_eval(c, cols, gamma, beta, running_mean, running_var, fold);
    fn bn_normalise(rows: usize, cols: usize, h: *const f32, residual: *const f32, relu: usize, fold: *const f32, a: *mut f32)
        threads(rows * cols)
        => |i| grid::bn_normalise(i, cols, h, residual, relu != 0, fold, a);
    fn bn_backward_partial(rows: usize, cols: usize, h: *const f32, a: *const f32, grad: *const f32, relu: usize, stats: *const f32, partial: *mut f32, residual_grad: *mut f32)
        threads(grid::row_blocks(rows) * cols)
        => |i| grid::bn_backward_partial(i, rows, cols, h, a, grad, relu != 0, stats, partial, residual_grad);
    fn bn_backward_apply(rows: usize, cols: usize, count: usize, h: *const f32, a: *const f32, grad: *mut f32, relu: usize, gamma: *const f32, stats: *const f32, sums: *const f32, partial_dh: *mut f32)
        threads(grid::row_blocks(rows) * cols)
        => |i| grid::bn_backward_apply(i, rows, cols, count, h, a, grad, relu != 0, gamma, stats, sums, partial_dh);
    fn bn_finish_grads(cols: usize, local: *const f32, sum_dh: *const f32, grad_gamma: *mut f32, grad_beta: *mut f32, grad_bias: *mut f32)
        threads(cols)
        => |c| grid::bn_finish_grads(c, cols, local, sum_dh, grad_gamma, grad_beta, grad_bias);
    fn maxpool_forward(n: usize, h: usize, w: usize, cin: usize, k: usize, stride: usize, pad: usize, x: *const f32, out: *mut f32, argmax: *mut u32)
        threads({ let g = geometry(h, w, cin, k, stride, pad); n * g.out_h() * g.out_w() })
        => |i| grid::maxpool_forward(i, geometry(h, w, cin, k, stride, pad), n, x, out, argmax);
    fn maxpool_backward(n: usize, h: usize, w: usize, cin: usize, k: usize, stride: usize, pad: usize, dout: *const f32, argmax: *const u32, dx: *mut f32)
        threads(n * h * w * cin)
        => |i| grid::maxpool_backward(i, geometry(h, w, cin, k, stride, pad), dout, argmax, dx);
    fn avgpool_forward(n: usize, hw: usize, c: usize, x: *const f32, out: *mut f32)
        threads(n * c)
        => |i| grid::avgpool_forward(i, hw, c, x, out);
    fn avgpool_backward(n: usize, hw: usize, c: usize, dout: *const f32, dx: *mut f32)
        threads(n * hw * c)
        => |i| grid::avgpool_backward(i, hw, c, dout, dx);
    fn simplicial_forward(groups: usize, group: usize, inv_temperature: f32, z: *const f32, s: *mut f32)
        threads(groups)
        => |i| grid::simplicial_group(i, group, inv_temperature, z, s, simplicial::softmax_group_forward);
    fn simplicial_backward(groups: usize, group: usize, inv_temperature: f32, s: *const f32, grad: *mut f32)
        threads(groups)
        => |i| grid::simplicial_group(i, group, inv_temperature, s, grad, simplicial::softmax_group_backward);
    fn lars_square_sums(chunks: usize, chunk_tensor: *const u32, table: *const TensorRow, params: *const f32, grads: *const f32, partial: *mut f64)
        threads(chunks)
        => |i| grid::lars_square_sums(i, chunks, chunk_tensor, table, params, grads, partial);
    fn lars_trust(tensors: usize, table: *mut TensorRow, chunks: usize, partial: *const f64, eta: f32, clip: usize)
        threads(tensors)
        => |t| grid::lars_trust(t, table, chunks, partial, eta, clip != 0);
    fn augment_resize(n: usize, params: *const ViewParams, images: *const u8, index: *const u32, h: usize, w: usize, size: usize, out: *mut f32)
        threads(n * size * size * 3)
        => |i| grid::augment_resize(i, params, images, index, h, w, size, out);
    fn augment_mean_gray(n: usize, params: *const ViewParams, stage: usize, size: usize, out: *const f32, means: *mut f32)
        threads(n)
        => |m| grid::augment_mean_gray(m, params, stage, size, out, means);
    fn augment_jitter(n: usize, params: *const ViewParams, stage: usize, size: usize, means: *const f32, out: *mut f32)
        threads(n * size * size)
        => |i| grid::augment_jitter(i, params, stage, size, means, out);
    fn augment_grayscale(n: usize, params: *const ViewParams, size: usize, out: *mut f32)
        threads(n * size * size)
        => |i| grid::augment_grayscale(i, params, size, out);
    fn augment_blur(n: usize, params: *const ViewParams, size: usize, src: *const f32, dst: *mut f32, horizontal: usize)
        threads(n * size * size * 3)
        => |i| grid::augment_blur(i, params, size, src, dst, horizontal != 0);
    fn augment_finish(n: usize, params: *const ViewParams, size: usize, m0: f32, m1: f32, m2: f32, s0: f32, s1: f32, s2: f32, out: *mut f32)
        threads(n * size * size * 3)
        => |i| grid::augment_finish(i, params, size, [m0, m1, m2], [s0, s1, s2], out);
    fn convert_to_bf16(n: usize, src: *const f32, dst: *mut u16)
        threads(n)
        => |i| grid::convert_to_bf16(i, src, dst);
    fn convert_from_bf16(n: usize, src: *const u16, dst: *mut f32, accumulate: usize)
        threads(n)
        => |i| grid::convert_from_bf16(i, src, dst, accumulate != 0);
    fn optimizer_update(n_params: usize, table: *const TensorRow, tensors: usize, params: *mut f32, grads: *const f32, momentum: *mut f32, second_moment: *mut f32, mu: f32, adam_bc2_sqrt: f32, adam: usize)
        threads(n_params)
        => |i| grid::optimizer_update(i, table, tensors, params, grads, momentum, second_moment, mu, adam_bc2_sqrt, adam != 0);
}

#[no_mangle]
pub unsafe extern "ptx-kernel" fn bias_fill(
    dst: *mut f32,
    rows: usize,
    cols: usize,
    bias: *const f32,
) {
    let c = thread_index();
    if c < cols {
        linear::bias_fill(column(rows, cols, c), dst, from_raw_parts(bias.add(c), 1));
    }
}

#[no_mangle]
pub unsafe extern "ptx-kernel" fn column_sum(
    x: *const f32,
    rows: usize,
    cols: usize,
    out: *mut f32,
) {
    let c = thread_index();
    if c < cols {
        linear::column_sum::<1>(column(rows, cols, c), x, from_raw_parts_mut(out.add(c), 1));
    }
}

//! PTX entry points (built only for `nvptx64`). Each computes which unit of work its thread
//! owns and calls the shared function the CPU path calls too; nothing else lives here.
//!
//! Launch shapes (the host's `cuda` backend follows them): element kernels one thread per
//! element, row kernels one thread per row, column kernels one thread per column; 1-D grids.

use crate::batchnorm::{self, Activation, Affine, BatchStats, BnGrads, Running, ScaleOffset, Tile};
use crate::{ema, linear, loss};
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

const RELU: Activation = Activation {
    residual: core::ptr::null(),
    relu: true,
};

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

#[no_mangle]
pub unsafe extern "ptx-kernel" fn bn_relu_forward_train(
    h: *const f32,
    a: *mut f32,
    rows: usize,
    cols: usize,
    gamma: *const f32,
    beta: *const f32,
    mean: *mut f32,
    invstd: *mut f32,
    running_mean: *mut f32,
    running_var: *mut f32,
) {
    let c = thread_index();
    if c < cols {
        batchnorm::forward_train_columns::<1>(
            column(rows, cols, c),
            h,
            a,
            Affine {
                gamma: from_raw_parts(gamma.add(c), 1),
                beta: from_raw_parts(beta.add(c), 1),
            },
            BatchStats {
                mean: from_raw_parts_mut(mean.add(c), 1),
                invstd: from_raw_parts_mut(invstd.add(c), 1),
            },
            Running {
                mean: from_raw_parts_mut(running_mean.add(c), 1),
                var: from_raw_parts_mut(running_var.add(c), 1),
            },
            RELU,
        );
    }
}

#[no_mangle]
pub unsafe extern "ptx-kernel" fn bn_relu_forward_eval(
    h: *const f32,
    a: *mut f32,
    rows: usize,
    cols: usize,
    gamma: *const f32,
    beta: *const f32,
    running_mean: *const f32,
    running_var: *const f32,
) {
    let c = thread_index();
    if c < cols {
        let (mut scale, mut offset) = ([0.0f32], [0.0f32]);
        batchnorm::eval_scale_offset(
            Affine {
                gamma: from_raw_parts(gamma.add(c), 1),
                beta: from_raw_parts(beta.add(c), 1),
            },
            from_raw_parts(running_mean.add(c), 1),
            from_raw_parts(running_var.add(c), 1),
            ScaleOffset {
                scale: &mut scale,
                offset: &mut offset,
            },
        );
        batchnorm::normalise::<1>(column(rows, cols, c), h, a, &scale, &offset, RELU);
    }
}

#[no_mangle]
pub unsafe extern "ptx-kernel" fn bn_relu_backward(
    h: *const f32,
    a: *const f32,
    grad: *mut f32,
    rows: usize,
    cols: usize,
    gamma: *const f32,
    mean: *const f32,
    invstd: *const f32,
    grad_gamma: *mut f32,
    grad_beta: *mut f32,
    grad_linear_bias: *mut f32,
) {
    let c = thread_index();
    if c < cols {
        batchnorm::backward_columns::<1>(
            column(rows, cols, c),
            h,
            a,
            grad,
            true,
            from_raw_parts(gamma.add(c), 1),
            (
                from_raw_parts(mean.add(c), 1),
                from_raw_parts(invstd.add(c), 1),
            ),
            BnGrads {
                gamma: from_raw_parts_mut(grad_gamma.add(c), 1),
                beta: from_raw_parts_mut(grad_beta.add(c), 1),
                linear_bias: from_raw_parts_mut(grad_linear_bias.add(c), 1),
            },
        );
    }
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

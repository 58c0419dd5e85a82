//! The simplicial embedding on the CPU: `kernels::simplicial` on each group of each row of a
//! row-major `[rows, cols]` matrix, one row per rayon task (a row is 256 values in
//! byol-pytorch's 32 groups of 8: too little work to split further).

use crate::backend::Simplicial;
use kernels::simplicial::{softmax_group_backward, softmax_group_forward};
use rayon::prelude::*;

/// `s [rows, cols] = softmax(z / T)` over each group of `op.group` features.
pub fn simplicial_forward(op: &Simplicial, z: &[f32], s: &mut [f32]) {
    over_groups(op, z, s, softmax_group_forward);
}

/// `grad [rows, cols]` from ∂L/∂s to ∂L/∂z in place, given the forward's `s`.
pub fn simplicial_backward(op: &Simplicial, s: &[f32], grad: &mut [f32]) {
    over_groups(op, s, grad, softmax_group_backward);
}

/// `kernel(read group, 1/T, written group)` on every group, rows in parallel.
fn over_groups(
    op: &Simplicial,
    read: &[f32],
    written: &mut [f32],
    kernel: fn(&[f32], f32, &mut [f32]),
) {
    let inv_temperature = 1.0 / op.temperature;
    written
        .par_chunks_mut(op.cols)
        .zip(read.par_chunks(op.cols))
        .for_each(|(w, r)| {
            for (w, r) in w.chunks_mut(op.group).zip(r.chunks(op.group)) {
                kernel(r, inv_temperature, w);
            }
        });
}

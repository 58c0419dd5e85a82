//! The simplicial embedding on the CPU: `kernels::simplicial` on each group of each row of a
//! row-major `[rows, cols]` matrix, one row per rayon task (a row is 256 values in
//! byol-pytorch's 32 groups of 8: too little work to split further).

use crate::backend::Simplicial;
use kernels::simplicial::{softmax_group_backward, softmax_group_forward};
use rayon::prelude::*;

/// `s [rows, cols] = softmax(z / T)` over each group of `op.group` features.
pub fn simplicial_forward(op: &Simplicial, z: &[f32], s: &mut [f32]) {
    let inv_temperature = 1.0 / op.temperature;
    s.par_chunks_mut(op.cols)
        .zip(z.par_chunks(op.cols))
        .for_each(|(s, z)| {
            for (s, z) in s.chunks_mut(op.group).zip(z.chunks(op.group)) {
                softmax_group_forward(z, inv_temperature, s);
            }
        });
}

/// `grad [rows, cols]` from ∂L/∂s to ∂L/∂z in place, given the forward's `s`.
pub fn simplicial_backward(op: &Simplicial, s: &[f32], grad: &mut [f32]) {
    let inv_temperature = 1.0 / op.temperature;
    grad.par_chunks_mut(op.cols)
        .zip(s.par_chunks(op.cols))
        .for_each(|(g, s)| {
            for (g, s) in g.chunks_mut(op.group).zip(s.chunks(op.group)) {
                softmax_group_backward(s, inv_temperature, g);
            }
        });
}

//! The simplicial embedding on the CPU: `kernels::simplicial` on each group of each row of a
//! row-major `[rows, cols]` matrix, one row per rayon task (a row is 256 values in
//! byol-pytorch's 32 groups of 8: too little work to split further).

use crate::error::{Error, Result};
use kernels::simplicial::{softmax_group_backward, softmax_group_forward};
use rayon::prelude::*;

/// A simplicial embedding of the rows of `[rows, cols]`: a softmax at `temperature` over each
/// group of `group` consecutive features (`cols` a multiple of `group`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Simplicial {
    pub rows: usize,
    pub cols: usize,
    pub group: usize,
    pub temperature: f32,
}

impl Simplicial {
    /// Groups in the whole matrix (the kernels' units of work).
    pub fn groups(&self) -> usize {
        self.rows * self.cols / self.group
    }

    /// A valid shape and temperature, and buffers of `a_len` and `b_len` values long enough
    /// for it (the two an op reads and writes: `z` and `s` forward, `s` and the gradient
    /// backward).
    pub fn check(&self, a_len: usize, b_len: usize) -> Result<()> {
        if self.group == 0 || !self.cols.is_multiple_of(self.group) {
            return Err(Error::InvalidArgument(format!(
                "simplicial embedding: {} features do not split into groups of {}",
                self.cols, self.group
            )));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "simplicial embedding: the temperature must be positive, got {}",
                self.temperature
            )));
        }
        let len = self.rows * self.cols;
        for (what, got) in [
            ("simplicial embedding input [rows, cols]", a_len),
            ("simplicial embedding output [rows, cols]", b_len),
        ] {
            if got < len {
                return Err(Error::Length {
                    what,
                    expected: len,
                    got,
                });
            }
        }
        Ok(())
    }
}

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

//! Linear layers on the CPU: `y [rows, n] = x [rows, k] · wᵀ + bias`, `w [n, k]` as PyTorch
//! stores it, and the backward. The bias parts are the kernel crate's; products are GEMMs.

use super::gemm::{gemm, Gemm};
use super::{par_tiles, part, TilePtr, ROW_BLOCK};
use kernels::linear;

/// `out [rows, n] = x [rows, k] · wᵀ (+ bias)`; an empty `bias` means none.
pub fn linear_forward(
    out: &mut [f32],
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    rows: usize,
    k: usize,
    n: usize,
) {
    let has_bias = !bias.is_empty();
    if has_bias {
        let dst = TilePtr::new(out);
        // SAFETY: tiles are disjoint; `out` holds rows·n values.
        par_tiles(rows, n, ROW_BLOCK, |_, t| unsafe {
            linear::bias_fill(t, dst.ptr(), part(bias, t))
        });
    }
    gemm(Gemm::linear_forward(rows, k, n, has_bias), out, x, w);
}

/// `db [n] += Σ_rows dy [rows, n]`, reduced in a fixed order (one pass over every row per
/// column tile).
pub fn bias_backward(db: &mut [f32], dy: &[f32], rows: usize, n: usize) {
    let out = TilePtr::new(db);
    // SAFETY: one row block (`rows` rows per tile) makes tiles disjoint in `db`'s columns.
    par_tiles(rows, n, rows, |_, t| unsafe {
        linear::column_sum::<{ super::TILE }>(t, dy.as_ptr(), out.slice(t.c0, t.width))
    });
}

/// Backward: `dw [n, k] += dyᵀ · x`, `db += Σ dy` (when `db` is not empty), and
/// `dx [rows, k] = dy · w` (overwritten) when `dx` is given.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    dw: &mut [f32],
    db: &mut [f32],
    dx: Option<&mut [f32]>,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    rows: usize,
    k: usize,
    n: usize,
) {
    if !db.is_empty() {
        bias_backward(db, dy, rows, n);
    }
    gemm(Gemm::linear_weight_grad(rows, k, n), dw, dy, x);
    if let Some(dx) = dx {
        gemm(Gemm::linear_input_grad(rows, k, n), dx, dy, w);
    }
}

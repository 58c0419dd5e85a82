//! The bias parts of a Linear layer around the GEMM: filling the output with the bias before
//! the GEMM accumulates into it, and the bias gradient as a column sum. Row-major
//! `[rows = batch, cols = features]`, worked on in the same column tiles as [`crate::bn_relu`].

use crate::bn_relu::ColumnTile;

/// `dst[r, c] = bias[c]` for the tile's columns; `bias` is the tile's `width` values.
///
/// # Safety
/// `dst` points to `rows·cols` f32; no other thread writes the tile's columns meanwhile.
#[inline(always)]
pub unsafe fn bias_fill_tile(t: ColumnTile, dst: *mut f32, bias: &[f32]) {
    for r in 0..t.rows {
        let row = dst.add(r * t.cols + t.c0);
        for (k, &b) in bias.iter().enumerate().take(t.width) {
            *row.add(k) = b;
        }
    }
}

/// `out[k] += Σ_r x[r, c0 + k]`: the bias gradient of a Linear whose output gradient is `x`.
///
/// # Safety
/// `x` points to `rows·cols` f32; `out` is `width ≤ W` long.
#[inline(always)]
pub unsafe fn column_sum_tile<const W: usize>(t: ColumnTile, x: *const f32, out: &mut [f32]) {
    let mut sum = [0.0f32; W];
    for r in 0..t.rows {
        let row = x.add(r * t.cols + t.c0);
        for (k, s) in sum.iter_mut().enumerate().take(t.width) {
            *s += *row.add(k);
        }
    }
    for k in 0..t.width {
        out[k] += sum[k];
    }
}

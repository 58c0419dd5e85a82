//! The bias parts of a Linear layer around the GEMM: filling the output with the bias before
//! the GEMM accumulates into it, and the bias gradient as a column sum. Row-major
//! `[rows = batch, cols = features]`, worked on in the same tiles as [`crate::batchnorm`].

use crate::batchnorm::Tile;

/// `dst[r, c] = bias[c]` over the tile; `bias` holds the tile's `width` values.
///
/// # Safety
/// `dst` points to the matrix; no other thread writes the tile meanwhile.
#[inline(always)]
pub unsafe fn bias_fill(t: Tile, dst: *mut f32, bias: &[f32]) {
    for r in t.r0..t.r1 {
        core::slice::from_raw_parts_mut(dst.add(r * t.cols + t.c0), t.width)
            .copy_from_slice(&bias[..t.width]);
    }
}

/// `out[k] += Σ_r x[r, c0 + k]` over the tile's rows: the bias gradient of a Linear whose
/// output gradient is `x`.
///
/// # Safety
/// `x` points to the matrix; `out` is `width ≤ W` long.
#[inline(always)]
pub unsafe fn column_sum<const W: usize>(t: Tile, x: *const f32, out: &mut [f32]) {
    let mut sum = [0.0f32; W];
    for r in t.r0..t.r1 {
        let row = core::slice::from_raw_parts(x.add(r * t.cols + t.c0), t.width);
        sum.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
    }
    out.iter_mut().zip(sum).for_each(|(o, s)| *o += s);
}

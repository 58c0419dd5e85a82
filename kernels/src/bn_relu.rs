//! The fused epilogue of the projector/predictor MLP: BatchNorm1d → ReLU, forward and backward.
//!
//! Input `h` is the first Linear's output, row-major `[rows = batch, cols = hidden]`.
//! The unit of work is a tile of adjacent columns: the CPU takes 16 columns (one cache
//! line per row, so a tile stays in L1 from the statistics pass to the normalising pass),
//! each GPU thread takes one column (neighbouring threads read neighbouring addresses).
//!
//! Forward (training) reads `h` for the statistics, then writes `a = relu(γ·x̂ + β)` in one
//! more pass over the same tile; it keeps only what backward needs: per-column `mean` and
//! `invstd` (`h` is kept anyway as the GEMM output and `a` is the next GEMM's input).
//! `x̂` and `y = γ·x̂ + β` are never stored: backward recomputes `x̂` from `h`, and the
//! ReLU mask is `a > 0`. Statistics follow PyTorch: biased variance to normalise, unbiased
//! variance into the running estimate, `running ← (1 − momentum)·running + momentum·batch`.

/// BatchNorm ε (PyTorch's default; the official BYOL code uses the same).
pub const BN_EPS: f32 = 1e-5;
/// Running-statistics momentum (PyTorch's 0.1 = Haiku's decay 0.9).
pub const BN_MOMENTUM: f32 = 0.1;

/// Columns `[c0, c0 + width)` of a row-major `[rows, cols]` matrix.
#[derive(Clone, Copy, Debug)]
pub struct ColumnTile {
    pub rows: usize,
    pub cols: usize,
    pub c0: usize,
    pub width: usize,
}

/// γ and β of the tile's columns (each `width` long).
pub struct Affine<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
}

/// Per-column batch statistics of the tile, written by the training forward and read by
/// the backward: the mean and `1/√(var + ε)`.
pub struct BatchStats<'a> {
    pub mean: &'a mut [f32],
    pub invstd: &'a mut [f32],
}

/// Running estimates of the tile's columns, updated in place by the training forward.
pub struct Running<'a> {
    pub mean: &'a mut [f32],
    pub var: &'a mut [f32],
}

/// Parameter gradients of the tile's columns, accumulated (`+=`) so that the two views of a
/// BYOL step add up in the same buffers: γ, β and the bias of the Linear before the BN.
pub struct BnGrads<'a> {
    pub gamma: &'a mut [f32],
    pub beta: &'a mut [f32],
    pub linear_bias: &'a mut [f32],
}

#[inline(always)]
fn relu(x: f32) -> f32 {
    if x > 0.0 {
        x
    } else {
        0.0
    }
}

/// Row `r` of the tile, as a slice.
///
/// # Safety
/// `m` points to a `[rows, cols]` matrix and `r < rows`.
#[inline(always)]
unsafe fn row<'a>(t: ColumnTile, m: *const f32, r: usize) -> &'a [f32] {
    core::slice::from_raw_parts(m.add(r * t.cols + t.c0), t.width)
}

/// Row `r` of the tile, mutable.
///
/// # Safety
/// As [`row`], and no other reference covers this part of the row.
#[inline(always)]
unsafe fn row_mut<'a>(t: ColumnTile, m: *mut f32, r: usize) -> &'a mut [f32] {
    core::slice::from_raw_parts_mut(m.add(r * t.cols + t.c0), t.width)
}

/// The tile's first `width` entries of a per-column vector, copied into a register-sized
/// local array (so inner loops run over fixed-size arrays, without bounds checks).
#[inline(always)]
fn local<const W: usize>(v: &[f32]) -> [f32; W] {
    let mut out = [0.0f32; W];
    out.iter_mut().zip(v).for_each(|(o, &x)| *o = x);
    out
}

/// Training-mode forward of one tile: statistics, running update, normalise, affine, ReLU.
/// Statistics use sums shifted by the first row (one pass, without the cancellation of a
/// plain Σx² − (Σx)²/n when the mean is large against the spread).
///
/// # Safety
/// `h` and `a` point to `rows·cols` f32 and do not overlap; `rows ≥ 2`; `width ≤ W`; every
/// slice is `width` long; no other thread touches columns `[c0, c0 + width)` of `a` meanwhile.
#[inline(always)]
pub unsafe fn forward_train_tile<const W: usize>(
    t: ColumnTile,
    h: *const f32,
    a: *mut f32,
    affine: Affine<'_>,
    stats: BatchStats<'_>,
    running: Running<'_>,
) {
    let n = t.rows as f32;
    let shift: [f32; W] = local(row(t, h, 0));
    let mut s1 = [0.0f32; W];
    let mut s2 = [0.0f32; W];
    for r in 0..t.rows {
        for (((x, &k), s1), s2) in row(t, h, r).iter().zip(&shift).zip(&mut s1).zip(&mut s2) {
            let d = x - k;
            *s1 += d;
            *s2 += d * d;
        }
    }
    let mut scale = [0.0f32; W];
    let mut offset = [0.0f32; W];
    for k in 0..t.width {
        let mean_shifted = s1[k] / n;
        let var = relu(s2[k] / n - mean_shifted * mean_shifted);
        let mean = shift[k] + mean_shifted;
        let invstd = 1.0 / crate::math::sqrt(var + BN_EPS);
        stats.mean[k] = mean;
        stats.invstd[k] = invstd;
        running.mean[k] = (1.0 - BN_MOMENTUM) * running.mean[k] + BN_MOMENTUM * mean;
        running.var[k] = (1.0 - BN_MOMENTUM) * running.var[k] + BN_MOMENTUM * var * n / (n - 1.0);
        scale[k] = affine.gamma[k] * invstd;
        offset[k] = affine.beta[k] - mean * scale[k];
    }
    normalise_relu::<W>(t, h, a, &scale, &offset);
}

/// Evaluation-mode forward of one tile: the running statistics replace the batch's.
///
/// # Safety
/// As [`forward_train_tile`] (any `rows ≥ 1`).
#[inline(always)]
pub unsafe fn forward_eval_tile<const W: usize>(
    t: ColumnTile,
    h: *const f32,
    a: *mut f32,
    affine: Affine<'_>,
    running_mean: &[f32],
    running_var: &[f32],
) {
    let mut scale = [0.0f32; W];
    let mut offset = [0.0f32; W];
    for k in 0..t.width {
        scale[k] = affine.gamma[k] / crate::math::sqrt(running_var[k] + BN_EPS);
        offset[k] = affine.beta[k] - running_mean[k] * scale[k];
    }
    normalise_relu::<W>(t, h, a, &scale, &offset);
}

/// `a = relu(h·scale + offset)`, the affine folded into one multiply-add per element.
#[inline(always)]
unsafe fn normalise_relu<const W: usize>(
    t: ColumnTile,
    h: *const f32,
    a: *mut f32,
    scale: &[f32; W],
    offset: &[f32; W],
) {
    for r in 0..t.rows {
        for (((y, &x), &s), &o) in row_mut(t, a, r)
            .iter_mut()
            .zip(row(t, h, r))
            .zip(scale)
            .zip(offset)
        {
            *y = relu(x * s + o);
        }
    }
}

/// Backward of one tile. On entry `grad` holds ∂L/∂a; on return it holds ∂L/∂h. With
/// `dy = ∂L/∂a · [a > 0]` and `x̂ = (h − mean)·invstd`:
/// `∂L/∂β = Σ dy`, `∂L/∂γ = Σ dy·x̂`, `∂L/∂h = γ·invstd/n · (n·dy − Σ dy − x̂·Σ dy·x̂)`,
/// and the Linear bias before the BN gets `Σ ∂L/∂h` (zero up to rounding, since BN removes
/// any constant shift; computed rather than assumed).
///
/// # Safety
/// `h`, `a`, `grad` point to `rows·cols` f32 and do not overlap; `width ≤ W`; every slice is
/// `width` long; no other thread touches columns `[c0, c0 + width)` of `grad` meanwhile.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // mirrors the PTX entry point, one argument per tensor
pub unsafe fn backward_tile<const W: usize>(
    t: ColumnTile,
    h: *const f32,
    a: *const f32,
    grad: *mut f32,
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
    grads: BnGrads<'_>,
) {
    let n = t.rows as f32;
    let (mean, invstd): ([f32; W], [f32; W]) = (local(mean), local(invstd));
    let mut sum_dy = [0.0f32; W];
    let mut sum_dy_xhat = [0.0f32; W];
    for r in 0..t.rows {
        let cols = row(t, h, r)
            .iter()
            .zip(row(t, a, r))
            .zip(row(t, grad, r))
            .zip(mean.iter().zip(&invstd));
        for ((((&x, &y), &g), (&m, &is)), (sd, sdx)) in
            cols.zip(sum_dy.iter_mut().zip(&mut sum_dy_xhat))
        {
            let dy = if y > 0.0 { g } else { 0.0 };
            *sd += dy;
            *sdx += dy * (x - m) * is;
        }
    }
    let mut coef = [0.0f32; W];
    for ((c, &g), &is) in coef.iter_mut().zip(gamma).zip(&invstd) {
        *c = g * is / n;
    }
    let mut sum_dh = [0.0f32; W];
    for r in 0..t.rows {
        let per_column = mean
            .iter()
            .zip(&invstd)
            .zip(&coef)
            .zip(sum_dy.iter().zip(&sum_dy_xhat));
        let cols = row(t, h, r)
            .iter()
            .zip(row(t, a, r))
            .zip(row_mut(t, grad, r))
            .zip(per_column);
        for ((((&x, &y), g), (((&m, &is), &c), (&sd, &sdx))), acc) in cols.zip(&mut sum_dh) {
            let dy = if y > 0.0 { *g } else { 0.0 };
            let dh = c * (n * dy - sd - (x - m) * is * sdx);
            *g = dh;
            *acc += dh;
        }
    }
    for k in 0..t.width {
        grads.gamma[k] += sum_dy_xhat[k];
        grads.beta[k] += sum_dy[k];
        grads.linear_bias[k] += sum_dh[k];
    }
}

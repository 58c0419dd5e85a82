//! BatchNorm over the rows of a row-major `[rows, cols]` matrix, with an optional ReLU and an
//! optional residual added before it: `a = act(γ·x̂ + β (+ residual))`, `x̂ = (h − mean)·invstd`.
//!
//! BatchNorm1d of the MLP is `[batch, features]`; BatchNorm2d of the ResNet, in NHWC, is the
//! same thing on `[N·H·W, C]`. The unit of work is a [`Tile`]: a block of rows × columns.
//! The statistics are sums over all rows, so they come in pieces: [`stats_partial`] per tile
//! (sums shifted by row 0, so tiles' partial sums add exactly), then [`finish_stats`] per
//! column, then [`normalise`] per tile; backward likewise ([`backward_sums`],
//! [`backward_apply`], [`finish_grads`]). The one-pass forms for a tile holding every row
//! ([`forward_train_columns`], [`backward_columns`]) are what a GPU thread (one column) and
//! the MLP's CPU path (256-column tiles) run.
//!
//! Only `h`, `a` and per-column `mean`, `invstd` are kept for backward: `x̂` is recomputed
//! from `h`, and the ReLU mask is `a > 0`. Statistics follow PyTorch: biased variance to
//! normalise, unbiased variance into the running estimate,
//! `running ← (1 − momentum)·running + momentum·batch`.

/// BatchNorm ε (PyTorch's default; the official BYOL code uses the same).
pub const BN_EPS: f32 = 1e-5;
/// Running-statistics momentum (PyTorch's 0.1 = Haiku's decay 0.9).
pub const BN_MOMENTUM: f32 = 0.1;

/// Rows `[r0, r1)` × columns `[c0, c0 + width)` of a row-major matrix `cols` wide.
#[derive(Clone, Copy, Debug)]
pub struct Tile {
    pub cols: usize,
    pub r0: usize,
    pub r1: usize,
    pub c0: usize,
    pub width: usize,
}

/// γ and β of the tile's columns (each `width` long).
pub struct Affine<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
}

/// Per-column batch statistics, written by the training forward and read by the backward:
/// the mean and `1/√(var + ε)`.
pub struct BatchStats<'a> {
    pub mean: &'a mut [f32],
    pub invstd: &'a mut [f32],
}

/// Running estimates of the tile's columns, updated in place by the training forward.
pub struct Running<'a> {
    pub mean: &'a mut [f32],
    pub var: &'a mut [f32],
}

/// The per-column `a = h·scale + offset` that BatchNorm and its affine fold into.
pub struct ScaleOffset<'a> {
    pub scale: &'a mut [f32],
    pub offset: &'a mut [f32],
}

/// What follows the affine: an optional residual (added first) and an optional ReLU.
#[derive(Clone, Copy)]
pub struct Activation {
    /// `[rows, cols]` added before the ReLU, or null.
    pub residual: *const f32,
    pub relu: bool,
}

// SAFETY: the residual is only read, and its owner outlives the kernels that read it.
unsafe impl Send for Activation {}
unsafe impl Sync for Activation {}

/// Parameter gradients of the tile's columns, accumulated (`+=`) so that several uses of a
/// layer (the two views of a BYOL step) add up: γ, β, and the bias of a Linear before the BN
/// (empty where there is none, as in the ResNet's bias-free convolutions).
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
/// `m` points to a matrix holding row `r`, `cols` wide.
#[inline(always)]
unsafe fn row<'a>(t: Tile, m: *const f32, r: usize) -> &'a [f32] {
    core::slice::from_raw_parts(m.add(r * t.cols + t.c0), t.width)
}

/// Row `r` of the tile, mutable.
///
/// # Safety
/// As [`row`], and no other reference covers this part of the row.
#[inline(always)]
unsafe fn row_mut<'a>(t: Tile, m: *mut f32, r: usize) -> &'a mut [f32] {
    core::slice::from_raw_parts_mut(m.add(r * t.cols + t.c0), t.width)
}

/// The first `width` entries of a per-column vector in a fixed-size local array, so inner
/// loops run over arrays of known length, without bounds checks, and vectorise.
#[inline(always)]
fn local<const W: usize>(v: &[f32]) -> [f32; W] {
    let mut out = [0.0f32; W];
    out.iter_mut().zip(v).for_each(|(o, &x)| *o = x);
    out
}

/// `s1 += Σ (h − shift)`, `s2 += Σ (h − shift)²` over the tile's rows. Shifting every tile by
/// the same value (row 0 of the matrix) keeps one-pass sums free of the cancellation of a plain
/// Σh² − (Σh)²/n when the mean is large against the spread, and lets tiles' sums add.
///
/// # Safety
/// `h` points to the matrix; `width ≤ W`; the slices are `width` long.
#[inline(always)]
pub unsafe fn stats_partial<const W: usize>(
    t: Tile,
    h: *const f32,
    shift: &[f32],
    s1: &mut [f32],
    s2: &mut [f32],
) {
    let shift: [f32; W] = local(shift);
    let (mut p1, mut p2) = ([0.0f32; W], [0.0f32; W]);
    for r in t.r0..t.r1 {
        for (((x, &k), p1), p2) in row(t, h, r).iter().zip(&shift).zip(&mut p1).zip(&mut p2) {
            let d = x - k;
            *p1 += d;
            *p2 += d * d;
        }
    }
    for k in 0..t.width {
        s1[k] += p1[k];
        s2[k] += p2[k];
    }
}

/// Per column, from the shifted sums over all `n ≥ 2` rows: batch statistics, running update,
/// and the folded `scale = γ·invstd`, `offset = β − mean·scale`.
#[inline(always)]
pub fn finish_stats(
    n: usize,
    sums: (&[f32], &[f32], &[f32]),
    affine: Affine<'_>,
    stats: BatchStats<'_>,
    running: Running<'_>,
    fold: ScaleOffset<'_>,
) {
    let (shift, s1, s2) = sums;
    let n = n as f32;
    for k in 0..shift.len() {
        let mean_shifted = s1[k] / n;
        let var = relu(s2[k] / n - mean_shifted * mean_shifted);
        let mean = shift[k] + mean_shifted;
        let invstd = 1.0 / crate::math::sqrt(var + BN_EPS);
        stats.mean[k] = mean;
        stats.invstd[k] = invstd;
        running.mean[k] = (1.0 - BN_MOMENTUM) * running.mean[k] + BN_MOMENTUM * mean;
        running.var[k] = (1.0 - BN_MOMENTUM) * running.var[k] + BN_MOMENTUM * var * n / (n - 1.0);
        fold.scale[k] = affine.gamma[k] * invstd;
        fold.offset[k] = affine.beta[k] - mean * fold.scale[k];
    }
}

/// Per column, evaluation mode: the folded scale and offset from the running statistics.
#[inline(always)]
pub fn eval_scale_offset(
    affine: Affine<'_>,
    running_mean: &[f32],
    running_var: &[f32],
    fold: ScaleOffset<'_>,
) {
    for k in 0..running_mean.len() {
        fold.scale[k] = affine.gamma[k] / crate::math::sqrt(running_var[k] + BN_EPS);
        fold.offset[k] = affine.beta[k] - running_mean[k] * fold.scale[k];
    }
}

/// `a = act(h·scale + offset)` over the tile.
///
/// # Safety
/// `h`, `a` (and a non-null `act.residual`) point to the matrix and `a` overlaps neither;
/// `width ≤ W`; no other thread touches the tile of `a` meanwhile.
#[inline(always)]
pub unsafe fn normalise<const W: usize>(
    t: Tile,
    h: *const f32,
    a: *mut f32,
    scale: &[f32],
    offset: &[f32],
    act: Activation,
) {
    let (scale, offset): ([f32; W], [f32; W]) = (local(scale), local(offset));
    for r in t.r0..t.r1 {
        let out = row_mut(t, a, r);
        for (((y, &x), &s), &o) in out.iter_mut().zip(row(t, h, r)).zip(&scale).zip(&offset) {
            *y = x * s + o;
        }
        if !act.residual.is_null() {
            for (y, &z) in out.iter_mut().zip(row(t, act.residual, r)) {
                *y += z;
            }
        }
        if act.relu {
            out.iter_mut().for_each(|y| *y = relu(*y));
        }
    }
}

/// Backward, first pass over the tile: with `dy = ∂L/∂a · [a > 0 or no ReLU]`, accumulates
/// `sum_dy += Σ dy`, `sum_dy_xhat += Σ dy·x̂`, and writes `dy` (the residual's gradient) to
/// `residual_grad` unless it is null.
///
/// # Safety
/// `h`, `a`, `grad` (and a non-null `residual_grad`) point to the matrix; `residual_grad`
/// overlaps nothing else and no other thread writes its tile; `width ≤ W`.
#[allow(clippy::too_many_arguments)] // one argument per tensor, as the PTX entry points
#[inline(always)]
pub unsafe fn backward_sums<const W: usize>(
    t: Tile,
    h: *const f32,
    a: *const f32,
    grad: *const f32,
    relu: bool,
    normalised: (&[f32], &[f32]),
    sums: (&mut [f32], &mut [f32]),
    residual_grad: *mut f32,
) {
    let (mean, invstd): ([f32; W], [f32; W]) = (local(normalised.0), local(normalised.1));
    let (mut sum_dy, mut sum_dy_xhat) = ([0.0f32; W], [0.0f32; W]);
    for r in t.r0..t.r1 {
        let cols = row(t, h, r)
            .iter()
            .zip(row(t, a, r))
            .zip(row(t, grad, r))
            .zip(mean.iter().zip(&invstd));
        for ((((&x, &y), &g), (&m, &is)), (sd, sdx)) in
            cols.zip(sum_dy.iter_mut().zip(&mut sum_dy_xhat))
        {
            let dy = if !relu || y > 0.0 { g } else { 0.0 };
            *sd += dy;
            *sdx += dy * (x - m) * is;
        }
        if !residual_grad.is_null() {
            for ((d, &y), &g) in row_mut(t, residual_grad, r)
                .iter_mut()
                .zip(row(t, a, r))
                .zip(row(t, grad, r))
            {
                *d = if !relu || y > 0.0 { g } else { 0.0 };
            }
        }
    }
    for k in 0..t.width {
        sums.0[k] += sum_dy[k];
        sums.1[k] += sum_dy_xhat[k];
    }
}

/// Backward, second pass over the tile, with the sums over all `n` rows: `grad` goes from
/// ∂L/∂a to `∂L/∂h = γ·invstd/n · (n·dy − Σ dy − x̂·Σ dy·x̂)`, and `sum_dh += Σ ∂L/∂h`.
///
/// # Safety
/// As [`backward_sums`]; no other thread touches the tile of `grad` meanwhile.
#[allow(clippy::too_many_arguments)] // one argument per tensor, as the PTX entry points
#[inline(always)]
pub unsafe fn backward_apply<const W: usize>(
    t: Tile,
    n: usize,
    h: *const f32,
    a: *const f32,
    grad: *mut f32,
    relu: bool,
    gamma: &[f32],
    normalised: (&[f32], &[f32]),
    sums: (&[f32], &[f32]),
    sum_dh: &mut [f32],
) {
    let n = n as f32;
    let (mean, invstd): ([f32; W], [f32; W]) = (local(normalised.0), local(normalised.1));
    let (sum_dy, sum_dy_xhat): ([f32; W], [f32; W]) = (local(sums.0), local(sums.1));
    let mut coef = [0.0f32; W];
    for ((c, &g), &is) in coef.iter_mut().zip(gamma).zip(&invstd) {
        *c = g * is / n;
    }
    let mut acc = [0.0f32; W];
    for r in t.r0..t.r1 {
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
        for ((((&x, &y), g), (((&m, &is), &c), (&sd, &sdx))), acc) in cols.zip(&mut acc) {
            let dy = if !relu || y > 0.0 { *g } else { 0.0 };
            let dh = c * (n * dy - sd - (x - m) * is * sdx);
            *g = dh;
            *acc += dh;
        }
    }
    for k in 0..t.width {
        sum_dh[k] += acc[k];
    }
}

/// Per column: adds the tile's sums into the parameter gradients. `∂L/∂β = Σ dy`,
/// `∂L/∂γ = Σ dy·x̂`, and a Linear bias before the BN gets `Σ ∂L/∂h` (zero up to rounding,
/// since BN removes any constant shift; computed rather than assumed).
#[inline(always)]
pub fn finish_grads(sum_dy: &[f32], sum_dy_xhat: &[f32], sum_dh: &[f32], grads: BnGrads<'_>) {
    for k in 0..sum_dy.len() {
        grads.gamma[k] += sum_dy_xhat[k];
        grads.beta[k] += sum_dy[k];
        if let Some(b) = grads.linear_bias.get_mut(k) {
            *b += sum_dh[k];
        }
    }
}

/// Training forward of a tile holding every row (`r0 = 0`, `r1 = rows ≥ 2`), in one call.
///
/// # Safety
/// As [`stats_partial`] and [`normalise`].
#[inline(always)]
pub unsafe fn forward_train_columns<const W: usize>(
    t: Tile,
    h: *const f32,
    a: *mut f32,
    affine: Affine<'_>,
    stats: BatchStats<'_>,
    running: Running<'_>,
    act: Activation,
) {
    let shift: [f32; W] = local(row(t, h, 0));
    let (mut s1, mut s2) = ([0.0f32; W], [0.0f32; W]);
    let w = t.width;
    stats_partial::<W>(t, h, &shift[..w], &mut s1[..w], &mut s2[..w]);
    let (mut scale, mut offset) = ([0.0f32; W], [0.0f32; W]);
    let fold = ScaleOffset {
        scale: &mut scale[..w],
        offset: &mut offset[..w],
    };
    finish_stats(
        t.r1,
        (&shift[..w], &s1[..w], &s2[..w]),
        affine,
        stats,
        running,
        fold,
    );
    normalise::<W>(t, h, a, &scale[..w], &offset[..w], act);
}

/// Backward of a tile holding every row, in one call: `grad` goes from ∂L/∂a to ∂L/∂h and the
/// parameter gradients accumulate.
///
/// # Safety
/// As [`backward_sums`] and [`backward_apply`].
#[allow(clippy::too_many_arguments)] // one argument per tensor, as the PTX entry points
#[inline(always)]
pub unsafe fn backward_columns<const W: usize>(
    t: Tile,
    h: *const f32,
    a: *const f32,
    grad: *mut f32,
    relu: bool,
    gamma: &[f32],
    normalised: (&[f32], &[f32]),
    grads: BnGrads<'_>,
) {
    let w = t.width;
    let (mut sum_dy, mut sum_dy_xhat, mut sum_dh) = ([0.0f32; W], [0.0f32; W], [0.0f32; W]);
    let sums = (&mut sum_dy[..w], &mut sum_dy_xhat[..w]);
    backward_sums::<W>(t, h, a, grad, relu, normalised, sums, core::ptr::null_mut());
    let sums = (&sum_dy[..w], &sum_dy_xhat[..w]);
    backward_apply::<W>(
        t,
        t.r1,
        h,
        a,
        grad,
        relu,
        gamma,
        normalised,
        sums,
        &mut sum_dh[..w],
    );
    finish_grads(&sum_dy[..w], &sum_dy_xhat[..w], &sum_dh[..w], grads);
}

//! BatchNorm over the rows of `[rows, cols]` on the CPU, with an optional residual and ReLU
//! after it: BatchNorm1d of the MLP (`[batch, features]`) and BatchNorm2d of the ResNet in
//! NHWC (`[N·H·W, C]`).
//!
//! With at most [`ROW_BLOCK`] rows a tile holds whole columns and runs in one pass while it
//! sits in L2 (the MLP's case). Taller matrices go in two passes over row blocks: partial sums
//! per block, reduced in block order, then the per-tile normalise.

use super::{par_tiles, part, TilePtr, ROW_BLOCK, TILE};
use kernels::batchnorm::{
    self as bn, Activation, Affine, BatchStats, BnGrads, Running, ScaleOffset,
};

/// Training mode (batch statistics, running update) or evaluation mode (running statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnMode {
    Train,
    Eval,
}

/// The parameters and buffers of one BatchNorm layer, each `[cols]`: γ and β; the running
/// mean and variance (updated in training mode); and the batch mean and `1/√(var + ε)`
/// (written in training mode, read by the backward).
pub struct BnLayer<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub running_mean: &'a mut [f32],
    pub running_var: &'a mut [f32],
    pub mean: &'a mut [f32],
    pub invstd: &'a mut [f32],
}

/// Sums `[blocks, cols]` partials over the blocks, in block order.
fn reduce_blocks(partials: &[f32], cols: usize) -> Vec<f32> {
    let mut total = vec![0.0f32; cols];
    for block in partials.chunks(cols) {
        total.iter_mut().zip(block).for_each(|(t, &p)| *t += p);
    }
    total
}

/// `a = act(BN(h) (+ residual))` for `h, a [rows, cols]`. Training mode needs `rows ≥ 2`
/// (the callers check it). A training forward is [`batchnorm_sums`] then [`batchnorm_finish`]
/// over `rows`, fused into one pass per tile when the tile holds every row.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward(
    h: &[f32],
    a: &mut [f32],
    rows: usize,
    cols: usize,
    mode: BnMode,
    layer: BnLayer<'_>,
    residual: Option<&[f32]>,
    relu: bool,
) {
    debug_assert!(h.len() == rows * cols && a.len() == rows * cols);
    match mode {
        BnMode::Train if rows <= ROW_BLOCK => {
            let act = activation(residual, relu);
            let (hp, out) = (h.as_ptr() as usize, TilePtr::new(a));
            let (gamma, beta) = (layer.gamma, layer.beta);
            let (rm, rv) = (
                TilePtr::new(layer.running_mean),
                TilePtr::new(layer.running_var),
            );
            let (mean, invstd) = (TilePtr::new(layer.mean), TilePtr::new(layer.invstd));
            // SAFETY: one row block, so tiles are disjoint column ranges of every buffer.
            par_tiles(rows, cols, rows, |_, t| unsafe {
                bn::forward_train_columns::<TILE>(
                    t,
                    hp as *const f32,
                    out.ptr(),
                    Affine {
                        gamma: part(gamma, t),
                        beta: part(beta, t),
                    },
                    BatchStats {
                        mean: mean.slice(t.c0, t.width),
                        invstd: invstd.slice(t.c0, t.width),
                    },
                    Running {
                        mean: rm.slice(t.c0, t.width),
                        var: rv.slice(t.c0, t.width),
                    },
                    act,
                )
            });
        }
        BnMode::Train => {
            let mut sums = vec![0.0f32; 3 * cols];
            batchnorm_sums(h, rows, cols, &mut sums);
            batchnorm_finish(h, a, rows, cols, rows, &sums, layer, residual, relu);
        }
        BnMode::Eval => {
            let (mut scale, mut offset) = (vec![0.0f32; cols], vec![0.0f32; cols]);
            let affine = Affine {
                gamma: layer.gamma,
                beta: layer.beta,
            };
            let fold = ScaleOffset {
                scale: &mut scale,
                offset: &mut offset,
            };
            bn::eval_scale_offset(affine, layer.running_mean, layer.running_var, fold);
            normalise(
                h,
                a,
                rows,
                cols,
                &scale,
                &offset,
                activation(residual, relu),
            );
        }
    }
}

fn activation(residual: Option<&[f32]>, relu: bool) -> Activation {
    Activation {
        residual: residual.map_or(std::ptr::null(), |r| r.as_ptr()),
        relu,
    }
}

/// `sums [3·cols]`: per column the shift (row 0), `Σ(h − shift)` and `Σ(h − shift)²` over the
/// rows of `h [rows, cols]`, as partial sums per row block reduced in block order.
pub fn batchnorm_sums(h: &[f32], rows: usize, cols: usize, sums: &mut [f32]) {
    let blocks = rows.div_ceil(ROW_BLOCK);
    let (mut s1, mut s2) = (vec![0.0f32; blocks * cols], vec![0.0f32; blocks * cols]);
    let (hp, shift) = (h.as_ptr() as usize, &h[..cols]);
    let (p1, p2) = (TilePtr::new(&mut s1), TilePtr::new(&mut s2));
    // SAFETY: each (block, tile) writes its own slots of the partials.
    par_tiles(rows, cols, ROW_BLOCK, |b, t| unsafe {
        let at = b * cols + t.c0;
        bn::stats_partial::<TILE>(
            t,
            hp as *const f32,
            part(shift, t),
            p1.slice(at, t.width),
            p2.slice(at, t.width),
        )
    });
    sums[..cols].copy_from_slice(shift);
    sums[cols..2 * cols].copy_from_slice(&reduce_blocks(&s1, cols));
    sums[2 * cols..3 * cols].copy_from_slice(&reduce_blocks(&s2, cols));
}

/// From `sums` ([`batchnorm_sums`], possibly added over replicas) over `count` rows: the
/// batch statistics, the running update and `a = act(BN(h) (+ residual))`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_finish(
    h: &[f32],
    a: &mut [f32],
    rows: usize,
    cols: usize,
    count: usize,
    sums: &[f32],
    layer: BnLayer<'_>,
    residual: Option<&[f32]>,
    relu: bool,
) {
    let (mut scale, mut offset) = (vec![0.0f32; cols], vec![0.0f32; cols]);
    let (shift, rest) = sums.split_at(cols);
    let (t1, t2) = rest.split_at(cols);
    bn::finish_stats(
        count,
        (shift, t1, &t2[..cols]),
        Affine {
            gamma: layer.gamma,
            beta: layer.beta,
        },
        BatchStats {
            mean: layer.mean,
            invstd: layer.invstd,
        },
        Running {
            mean: layer.running_mean,
            var: layer.running_var,
        },
        ScaleOffset {
            scale: &mut scale,
            offset: &mut offset,
        },
    );
    normalise(
        h,
        a,
        rows,
        cols,
        &scale,
        &offset,
        activation(residual, relu),
    );
}

/// `a = act(h·scale + offset)` per column, tile by tile.
fn normalise(
    h: &[f32],
    a: &mut [f32],
    rows: usize,
    cols: usize,
    scale: &[f32],
    offset: &[f32],
    act: Activation,
) {
    let (hp, out) = (h.as_ptr() as usize, TilePtr::new(a));
    // SAFETY: tiles are disjoint; `a` overlaps neither `h` nor the residual.
    par_tiles(rows, cols, ROW_BLOCK, |_, t| unsafe {
        bn::normalise::<TILE>(
            t,
            hp as *const f32,
            out.ptr(),
            part(scale, t),
            part(offset, t),
            act,
        )
    });
}

/// Backward of [`batchnorm_forward`] in training mode: `grad` goes from ∂L/∂a to ∂L/∂h in
/// place; γ, β (and a preceding Linear's bias, when `grads.linear_bias` is not empty)
/// accumulate; with a residual, its gradient is written to `residual_grad`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward(
    h: &[f32],
    a: &[f32],
    grad: &mut [f32],
    rows: usize,
    cols: usize,
    relu: bool,
    gamma: &[f32],
    normalised: (&[f32], &[f32]),
    grads: BnGrads<'_>,
    residual_grad: Option<&mut [f32]>,
) {
    let (hp, ap, g) = (h.as_ptr() as usize, a.as_ptr() as usize, TilePtr::new(grad));
    let (mean, invstd) = normalised;
    if rows <= ROW_BLOCK && residual_grad.is_none() {
        let (dg, db, dl) = (
            TilePtr::new(grads.gamma),
            TilePtr::new(grads.beta),
            TilePtr::new(grads.linear_bias),
        );
        let has_bias = !grads.linear_bias.is_empty();
        // SAFETY: one row block, so tiles are disjoint column ranges of every buffer.
        par_tiles(rows, cols, rows, |_, t| unsafe {
            bn::backward_columns::<TILE>(
                t,
                hp as *const f32,
                ap as *const f32,
                g.ptr(),
                relu,
                part(gamma, t),
                (part(mean, t), part(invstd, t)),
                BnGrads {
                    gamma: dg.slice(t.c0, t.width),
                    beta: db.slice(t.c0, t.width),
                    linear_bias: if has_bias {
                        dl.slice(t.c0, t.width)
                    } else {
                        &mut []
                    },
                },
            )
        });
        return;
    }
    let mut sums = vec![0.0f32; 2 * cols];
    batchnorm_backward_sums(
        h,
        a,
        grad,
        rows,
        cols,
        relu,
        normalised,
        &mut sums,
        residual_grad,
    );
    let sums = &sums;
    batchnorm_backward_finish(
        h,
        a,
        grad,
        rows,
        cols,
        rows,
        relu,
        gamma,
        normalised,
        (sums, sums),
        grads,
    );
}

/// Backward, first half: `sums [2·cols] = Σ dy, Σ dy·x̂` per column over the rows (`dy` is
/// ∂L/∂a through the ReLU), as partial sums per row block reduced in block order; with a
/// residual, its gradient `dy` is written to `residual_grad`. These are the sums a
/// data-parallel run adds across replicas before finishing.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward_sums(
    h: &[f32],
    a: &[f32],
    grad: &[f32],
    rows: usize,
    cols: usize,
    relu: bool,
    normalised: (&[f32], &[f32]),
    sums: &mut [f32],
    residual_grad: Option<&mut [f32]>,
) {
    let (hp, ap, gp) = (
        h.as_ptr() as usize,
        a.as_ptr() as usize,
        grad.as_ptr() as usize,
    );
    let (mean, invstd) = normalised;
    let blocks = rows.div_ceil(ROW_BLOCK);
    let rg = residual_grad.map_or(TilePtr::null(), TilePtr::new);
    let (mut sdy, mut sdx) = (vec![0.0f32; blocks * cols], vec![0.0f32; blocks * cols]);
    let (p1, p2) = (TilePtr::new(&mut sdy), TilePtr::new(&mut sdx));
    // SAFETY: each (block, tile) writes its own slots of the partials and its own tile of the
    // residual gradient.
    par_tiles(rows, cols, ROW_BLOCK, |b, t| unsafe {
        let at = b * cols + t.c0;
        let partial = (p1.slice(at, t.width), p2.slice(at, t.width));
        let (m, s) = (part(mean, t), part(invstd, t));
        bn::backward_sums::<TILE>(
            t,
            hp as *const f32,
            ap as *const f32,
            gp as *const f32,
            relu,
            (m, s),
            partial,
            rg.ptr(),
        )
    });
    sums[..cols].copy_from_slice(&reduce_blocks(&sdy, cols));
    sums[cols..2 * cols].copy_from_slice(&reduce_blocks(&sdx, cols));
}

/// Backward, second half, with `sums = (local, global)` from [`batchnorm_backward_sums`]:
/// `grad` goes from ∂L/∂a to ∂L/∂h with the `global` sums over `count` rows (all replicas'
/// rows in a data-parallel run); γ and β accumulate this replica's `local` sums, and a
/// preceding Linear's bias its `Σ ∂L/∂h` (each replica's part, added when gradients are).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward_finish(
    h: &[f32],
    a: &[f32],
    grad: &mut [f32],
    rows: usize,
    cols: usize,
    count: usize,
    relu: bool,
    gamma: &[f32],
    normalised: (&[f32], &[f32]),
    sums: (&[f32], &[f32]),
    grads: BnGrads<'_>,
) {
    let (hp, ap, g) = (h.as_ptr() as usize, a.as_ptr() as usize, TilePtr::new(grad));
    let (mean, invstd) = normalised;
    let (local, global) = sums;
    let (sum_dy, sum_dy_xhat) = global[..2 * cols].split_at(cols);
    let blocks = rows.div_ceil(ROW_BLOCK);
    let mut sdh = vec![0.0f32; blocks * cols];
    let p3 = TilePtr::new(&mut sdh);
    // SAFETY: tiles are disjoint in `grad`; each (block, tile) writes its own partial slots.
    par_tiles(rows, cols, ROW_BLOCK, |b, t| unsafe {
        let sums = (part(sum_dy, t), part(sum_dy_xhat, t));
        let normalised = (part(mean, t), part(invstd, t));
        let gm = part(gamma, t);
        let out = p3.slice(b * cols + t.c0, t.width);
        bn::backward_apply::<TILE>(
            t,
            count,
            hp as *const f32,
            ap as *const f32,
            g.ptr(),
            relu,
            gm,
            normalised,
            sums,
            out,
        )
    });
    let (local_dy, local_dy_xhat) = local[..2 * cols].split_at(cols);
    bn::finish_grads(local_dy, local_dy_xhat, &reduce_blocks(&sdh, cols), grads);
}

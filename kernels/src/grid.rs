//! What one GPU thread does, for every PTX entry point that works on more than one element:
//! each function takes its thread's index `i` in a 1-D grid and the entry point's arguments,
//! finds its unit of work and calls the shared arithmetic. `gpu` only adds `i`; the tests run
//! these functions on the CPU over every `i`, so the index arithmetic is checked here too.
//!
//! Layouts: matrices `[rows, cols]` row-major (NHWC activations are `[N·H·W, C]`); per-block
//! partial sums `[k, blocks, cols]` (k sums, each `[blocks, cols]`); a per-column vector
//! `[cols]`. Thread counts are stated per function; an entry point guards `i` against them.
//!
//! Sums over rows come in row blocks of [`GPU_ROW_BLOCK`] rows (one thread per block and
//! column), then [`reduce_blocks`] adds [`GPU_REDUCE_GROUP`] blocks at a time, in block order,
//! until one is left: fixed order, no atomics, so a GPU run repeats bit for bit.

use crate::augment::{self, ViewParams};
use crate::batchnorm::{self as bn, Activation, Affine, BatchStats, Running, ScaleOffset, Tile};
use crate::conv::ConvGeometry;
use crate::optimizer::{self as opt, AdamFactors};
use crate::pool;
use core::slice::{from_raw_parts, from_raw_parts_mut};

/// Rows per thread of the row sums. Short blocks keep enough threads in flight for a
/// memory-bound pass (rows = N·H·W = 524,288 at batch 512, 32 px gives 8,192 blocks); not yet
/// tuned on a GPU.
pub const GPU_ROW_BLOCK: usize = 64;
/// Partial sums one thread of [`reduce_blocks`] adds.
pub const GPU_REDUCE_GROUP: usize = 64;

/// Number of row blocks of `rows` rows.
pub fn row_blocks(rows: usize) -> usize {
    rows.div_ceil(GPU_ROW_BLOCK)
}

/// Column `c` of row block `b`.
#[inline(always)]
fn block_tile(rows: usize, cols: usize, b: usize, c: usize) -> Tile {
    let r0 = b * GPU_ROW_BLOCK;
    Tile {
        cols,
        r0,
        r1: (r0 + GPU_ROW_BLOCK).min(rows),
        c0: c,
        width: 1,
    }
}

#[inline(always)]
unsafe fn one<'a>(p: *const f32, at: usize) -> &'a [f32] {
    from_raw_parts(p.add(at), 1)
}

#[inline(always)]
unsafe fn one_mut<'a>(p: *mut f32, at: usize) -> &'a mut [f32] {
    from_raw_parts_mut(p.add(at), 1)
}

/// Threads: `row_blocks(rows)·cols`. Writes block `b`'s `Σ(h − h[0])` and `Σ(h − h[0])²` of
/// column `c` to `partial [2, blocks, cols]`.
///
/// # Safety
/// `h` holds `[rows, cols]`, `partial` `2·blocks·cols` values.
#[inline(always)]
pub unsafe fn bn_sums_partial(
    i: usize,
    h: *const f32,
    rows: usize,
    cols: usize,
    partial: *mut f32,
) {
    let (b, c, blocks) = (i / cols, i % cols, row_blocks(rows));
    let (mut s1, mut s2) = ([0.0f32], [0.0f32]);
    bn::stats_partial::<1>(block_tile(rows, cols, b, c), h, one(h, c), &mut s1, &mut s2);
    *partial.add(b * cols + c) = s1[0];
    *partial.add((blocks + b) * cols + c) = s2[0];
}

/// Threads: `k·blocks.div_ceil(GPU_REDUCE_GROUP)·cols`. `out [k, groups, cols]`: each group of
/// [`GPU_REDUCE_GROUP`] consecutive blocks of `partial [k, blocks, cols]` summed in block order.
///
/// # Safety
/// The buffers hold those shapes and do not overlap.
#[inline(always)]
pub unsafe fn reduce_blocks(
    i: usize,
    partial: *const f32,
    blocks: usize,
    cols: usize,
    out: *mut f32,
) {
    let groups = blocks.div_ceil(GPU_REDUCE_GROUP);
    let (j, rest) = (i / (groups * cols), i % (groups * cols));
    let (g, c) = (rest / cols, rest % cols);
    let first = g * GPU_REDUCE_GROUP;
    let mut sum = 0.0f32;
    for b in first..(first + GPU_REDUCE_GROUP).min(blocks) {
        sum += *partial.add((j * blocks + b) * cols + c);
    }
    *out.add((j * groups + g) * cols + c) = sum;
}

/// Threads: `cols`. From `sums [3, cols]` (shift, Σ, Σ² over `count` rows): the batch
/// statistics `stats [2, cols]` (mean, invstd), the running update and the folded
/// `fold [2, cols]` (scale, offset).
///
/// # Safety
/// Every pointer holds the `[.., cols]` it is described as; `gamma`/`beta` and
/// `running_mean`/`running_var` point into parameter and running buffers.
#[allow(clippy::too_many_arguments)] // one argument per tensor, as the PTX entry point
#[inline(always)]
pub unsafe fn bn_finish(
    c: usize,
    cols: usize,
    count: usize,
    sums: *const f32,
    gamma: *const f32,
    beta: *const f32,
    running_mean: *mut f32,
    running_var: *mut f32,
    stats: *mut f32,
    fold: *mut f32,
) {
    bn::finish_stats(
        count,
        (one(sums, c), one(sums, cols + c), one(sums, 2 * cols + c)),
        Affine {
            gamma: one(gamma, c),
            beta: one(beta, c),
        },
        BatchStats {
            mean: one_mut(stats, c),
            invstd: one_mut(stats, cols + c),
        },
        Running {
            mean: one_mut(running_mean, c),
            var: one_mut(running_var, c),
        },
        ScaleOffset {
            scale: one_mut(fold, c),
            offset: one_mut(fold, cols + c),
        },
    );
}

/// Threads: `cols`. Evaluation mode's `fold [2, cols]` from the running statistics.
///
/// # Safety
/// As [`bn_finish`].
#[inline(always)]
pub unsafe fn bn_fold_eval(
    c: usize,
    cols: usize,
    gamma: *const f32,
    beta: *const f32,
    running_mean: *const f32,
    running_var: *const f32,
    fold: *mut f32,
) {
    bn::eval_scale_offset(
        Affine {
            gamma: one(gamma, c),
            beta: one(beta, c),
        },
        one(running_mean, c),
        one(running_var, c),
        ScaleOffset {
            scale: one_mut(fold, c),
            offset: one_mut(fold, cols + c),
        },
    );
}

/// Threads: `rows·cols`, one per element. `a = act(h·scale + offset (+ residual))` with
/// `fold [2, cols]`; `residual` may be null.
///
/// # Safety
/// `h`, `a` (and a non-null `residual`) hold `[rows, cols]`; `a` overlaps neither input.
#[inline(always)]
pub unsafe fn bn_normalise(
    i: usize,
    cols: usize,
    h: *const f32,
    residual: *const f32,
    relu: bool,
    fold: *const f32,
    a: *mut f32,
) {
    let (r, c) = (i / cols, i % cols);
    let t = Tile {
        cols,
        r0: r,
        r1: r + 1,
        c0: c,
        width: 1,
    };
    let act = Activation { residual, relu };
    bn::normalise::<1>(t, h, a, one(fold, c), one(fold, cols + c), act);
}

/// Threads: `row_blocks(rows)·cols`. Block `b`'s `Σ dy` and `Σ dy·x̂` of column `c` into
/// `partial [2, blocks, cols]`; with a non-null `residual_grad`, `dy` is written there.
///
/// # Safety
/// `h`, `a`, `grad` (and `residual_grad`) hold `[rows, cols]`; `stats [2, cols]`.
#[allow(clippy::too_many_arguments)] // one argument per tensor, as the PTX entry point
#[inline(always)]
pub unsafe fn bn_backward_partial(
    i: usize,
    rows: usize,
    cols: usize,
    h: *const f32,
    a: *const f32,
    grad: *const f32,
    relu: bool,
    stats: *const f32,
    partial: *mut f32,
    residual_grad: *mut f32,
) {
    let (b, c, blocks) = (i / cols, i % cols, row_blocks(rows));
    let (mut sd, mut sdx) = ([0.0f32], [0.0f32]);
    bn::backward_sums::<1>(
        block_tile(rows, cols, b, c),
        h,
        a,
        grad,
        relu,
        (one(stats, c), one(stats, cols + c)),
        (&mut sd, &mut sdx),
        residual_grad,
    );
    *partial.add(b * cols + c) = sd[0];
    *partial.add((blocks + b) * cols + c) = sdx[0];
}

/// Threads: `row_blocks(rows)·cols`. `grad` goes from ∂L/∂a to ∂L/∂h over block `b` of column
/// `c`, with `sums [2, cols]` (Σ dy, Σ dy·x̂ over all `count` rows); the block's `Σ ∂L/∂h` goes
/// to `partial_dh [1, blocks, cols]`.
///
/// # Safety
/// As [`bn_backward_partial`]; `gamma [cols]`.
#[allow(clippy::too_many_arguments)] // one argument per tensor, as the PTX entry point
#[inline(always)]
pub unsafe fn bn_backward_apply(
    i: usize,
    rows: usize,
    cols: usize,
    count: usize,
    h: *const f32,
    a: *const f32,
    grad: *mut f32,
    relu: bool,
    gamma: *const f32,
    stats: *const f32,
    sums: *const f32,
    partial_dh: *mut f32,
) {
    let (b, c) = (i / cols, i % cols);
    let mut dh = [0.0f32];
    bn::backward_apply::<1>(
        block_tile(rows, cols, b, c),
        count,
        h,
        a,
        grad,
        relu,
        one(gamma, c),
        (one(stats, c), one(stats, cols + c)),
        (one(sums, c), one(sums, cols + c)),
        &mut dh,
    );
    *partial_dh.add(b * cols + c) = dh[0];
}

/// Threads: `cols`. `∂γ += Σ dy·x̂`, `∂β += Σ dy` from this replica's `local [2, cols]`, and a
/// preceding Linear's bias (unless `grad_bias` is null) `+= Σ ∂L/∂h` from `sum_dh [cols]`.
///
/// # Safety
/// Each pointer holds `cols` values (`local` `2·cols`).
#[inline(always)]
pub unsafe fn bn_finish_grads(
    c: usize,
    cols: usize,
    local: *const f32,
    sum_dh: *const f32,
    grad_gamma: *mut f32,
    grad_beta: *mut f32,
    grad_bias: *mut f32,
) {
    let bias: &mut [f32] = if grad_bias.is_null() {
        &mut []
    } else {
        one_mut(grad_bias, c)
    };
    bn::finish_grads(
        one(local, c),
        one(local, cols + c),
        one(sum_dh, c),
        bn::BnGrads {
            gamma: one_mut(grad_gamma, c),
            beta: one_mut(grad_beta, c),
            linear_bias: bias,
        },
    );
}

/// Threads: `n·oh·ow`, one per output pixel (all its channels). See [`pool::maxpool_pixel`].
///
/// # Safety
/// `x` holds `[n, h, w, cin]`; `out` and `argmax` `[n, oh, ow, cin]`.
#[inline(always)]
pub unsafe fn maxpool_forward(
    i: usize,
    g: ConvGeometry,
    n: usize,
    x: *const f32,
    out: *mut f32,
    argmax: *mut u32,
) {
    let (oh, ow, c) = (g.out_h(), g.out_w(), g.cin);
    let (m, p) = (i / (oh * ow), i % (oh * ow));
    pool::maxpool_pixel(
        g,
        from_raw_parts(x, n * g.h * g.w * c),
        m,
        p / ow,
        p % ow,
        from_raw_parts_mut(out.add(i * c), c),
        from_raw_parts_mut(argmax.add(i * c), c),
    );
}

/// Threads: `n·h·w·cin`, one per input value; `dx` is overwritten.
///
/// # Safety
/// `dout`, `argmax` hold `[n, oh, ow, cin]`; `dx` `[n, h, w, cin]`.
#[inline(always)]
pub unsafe fn maxpool_backward(
    i: usize,
    g: ConvGeometry,
    dout: *const f32,
    argmax: *const u32,
    dx: *mut f32,
) {
    let (image_in, image_out) = (g.h * g.w * g.cin, g.out_h() * g.out_w() * g.cin);
    let (m, v) = (i / image_in, i % image_in);
    let (pixel, c) = (v / g.cin, v % g.cin);
    *dx.add(i) = pool::maxpool_input_gradient(
        g,
        from_raw_parts(dout.add(m * image_out), image_out),
        from_raw_parts(argmax.add(m * image_out), image_out),
        pixel / g.w,
        pixel % g.w,
        c,
    );
}

/// Threads: `n·c`. `out [n, c]` = mean over the `hw` pixels of `x [n, hw, c]`.
///
/// # Safety
/// The buffers hold those shapes.
#[inline(always)]
pub unsafe fn avgpool_forward(i: usize, hw: usize, c: usize, x: *const f32, out: *mut f32) {
    let m = i / c;
    *out.add(i) = pool::avgpool_channel(from_raw_parts(x.add(m * hw * c), hw * c), hw, c, i % c);
}

/// Threads: `n·hw·c`. `dx [n, hw, c]` (overwritten) from `dout [n, c]`.
///
/// # Safety
/// The buffers hold those shapes.
#[inline(always)]
pub unsafe fn avgpool_backward(i: usize, hw: usize, c: usize, dout: *const f32, dx: *mut f32) {
    let (m, k) = (i / (hw * c), i % c);
    let mut value = [0.0f32];
    pool::avgpool_image_backward(one(dout, m * c + k), hw, &mut value);
    *dx.add(i) = value[0];
}

/// Threads: one per group, `rows·cols / group`. The simplicial embedding's `kernel` on group
/// `i` of `read` and `written` (both `[rows, cols]`): `z` → `s` with
/// [`crate::simplicial::softmax_group_forward`], and `s`, ∂L/∂s → ∂L/∂z in place with
/// [`crate::simplicial::softmax_group_backward`].
///
/// # Safety
/// The buffers hold those shapes.
#[inline(always)]
pub unsafe fn simplicial_group(
    i: usize,
    group: usize,
    inv_temperature: f32,
    read: *const f32,
    written: *mut f32,
    kernel: fn(&[f32], f32, &mut [f32]),
) {
    kernel(
        from_raw_parts(read.add(i * group), group),
        inv_temperature,
        from_raw_parts_mut(written.add(i * group), group),
    );
}

/// One tensor of the optimiser's table, as the GPU reads it: its parameters `start..end`, its
/// chunks of [`lars_square_sums`] (`chunk_first..chunk_end`, empty without a trust ratio), its
/// learning rate (the schedule's times its multiplier), its weight decay (0 for biases and
/// BatchNorm parameters), its trust ratio (written by [`lars_trust`]; 1 for SGD and for
/// tensors without one) and AdamW's step size after bias correction. 40 bytes, as five u64.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct TensorRow {
    pub start: u64,
    pub end: u64,
    pub chunk_first: u32,
    pub chunk_end: u32,
    pub step: f32,
    pub weight_decay: f32,
    pub trust: f32,
    pub adam_step_size: f32,
}

/// Parameters per chunk of [`lars_square_sums`]: a tensor's norms are summed in chunks of
/// this many values, one thread each, then chunk by chunk in order.
pub const NORM_CHUNK: usize = 2048;

/// Threads: one per chunk. Chunk `i` of tensor `t` (the table's `chunk_first..chunk_end`)
/// writes its `(Σ w², Σ (∇ + wd·w)²)` to `partial [2, chunks]` (f64).
///
/// # Safety
/// `chunk_tensor [chunks]` names each chunk's tensor; the table and buffers are consistent.
#[inline(always)]
pub unsafe fn lars_square_sums(
    i: usize,
    chunks: usize,
    chunk_tensor: *const u32,
    table: *const TensorRow,
    params: *const f32,
    grads: *const f32,
    partial: *mut f64,
) {
    let row = *table.add(*chunk_tensor.add(i) as usize);
    let start = row.start as usize + (i - row.chunk_first as usize) * NORM_CHUNK;
    let end = (start + NORM_CHUNK).min(row.end as usize);
    let len = end - start;
    let (ww, gg) = opt::lars_square_sums(
        from_raw_parts(params.add(start), len),
        from_raw_parts(grads.add(start), len),
        row.weight_decay,
    );
    *partial.add(i) = ww;
    *partial.add(chunks + i) = gg;
}

/// Threads: one per tensor with chunks. Adds its chunks' sums in order and writes its trust
/// ratio into the table (`clip_lr` 0 for none; see [`opt::trust_ratio`]).
///
/// # Safety
/// As [`lars_square_sums`].
#[inline(always)]
pub unsafe fn lars_trust(
    t: usize,
    table: *mut TensorRow,
    chunks: usize,
    partial: *const f64,
    eta: f32,
    clip: bool,
) {
    let row = &mut *table.add(t);
    if row.chunk_first == row.chunk_end {
        return;
    }
    let (mut ww, mut gg) = (0.0f64, 0.0f64);
    for k in row.chunk_first as usize..row.chunk_end as usize {
        ww += *partial.add(k);
        gg += *partial.add(chunks + k);
    }
    row.trust = opt::trust_ratio(ww, gg, eta, if clip { row.step } else { 0.0 });
}

/// Threads: `n_params`. One parameter's update; its tensor is found by binary search over the
/// table's starts (`tensors` rows, ordered). `adam` selects AdamW over momentum SGD/LARS.
///
/// # Safety
/// Every buffer holds `n_params` values (`second_moment` only with `adam`).
#[allow(clippy::too_many_arguments)] // one argument per buffer, as the PTX entry point
#[inline(always)]
pub unsafe fn optimizer_update(
    i: usize,
    table: *const TensorRow,
    tensors: usize,
    params: *mut f32,
    grads: *const f32,
    momentum: *mut f32,
    second_moment: *mut f32,
    mu: f32,
    adam_bc2_sqrt: f32,
    adam: bool,
) {
    let (mut lo, mut hi) = (0usize, tensors);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if (*table.add(mid)).start as usize <= i {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let row = *table.add(lo);
    let (w, m, g) = (&mut *params.add(i), &mut *momentum.add(i), *grads.add(i));
    if adam {
        let f = AdamFactors {
            step_size: row.adam_step_size,
            bc2_sqrt: adam_bc2_sqrt,
        };
        let v = &mut *second_moment.add(i);
        opt::adamw_element(w, m, v, g, row.weight_decay, mu, row.step, f);
    } else {
        opt::momentum_element(w, m, g, row.weight_decay, row.trust, mu, row.step);
    }
}

/// Threads: `n`. `dst[i] = bf16(src[i])` (see `precision`).
///
/// # Safety
/// `src` holds `n` f32, `dst` `n` u16.
#[inline(always)]
pub unsafe fn convert_to_bf16(i: usize, src: *const f32, dst: *mut u16) {
    *dst.add(i) = crate::precision::f32_to_bf16(*src.add(i));
}

/// Threads: `n`. `dst[i] = f32(src[i])`, or `+=` with `accumulate`.
///
/// # Safety
/// `src` holds `n` u16, `dst` `n` f32.
#[inline(always)]
pub unsafe fn convert_from_bf16(i: usize, src: *const u16, dst: *mut f32, accumulate: bool) {
    let v = crate::precision::bf16_to_f32(*src.add(i));
    *dst.add(i) = if accumulate { *dst.add(i) + v } else { v };
}

// ---- Augmentation (`--augment-on gpu`). `params [n]` holds each batch row's drawn view,
// `index [n]` its image in `images [·, h, w, 3]` (u8); `out [n, size, size, 3]`.

/// Threads: `n·size·size·3`. The resized (and flipped) crop.
///
/// # Safety
/// The buffers hold the shapes above; `index` names images inside `images`.
#[allow(clippy::too_many_arguments)] // one argument per buffer, as the PTX entry point
#[inline(always)]
pub unsafe fn augment_resize(
    i: usize,
    params: *const ViewParams,
    images: *const u8,
    index: *const u32,
    h: usize,
    w: usize,
    size: usize,
    out: *mut f32,
) {
    let per_image = size * size * 3;
    let (m, v) = (i / per_image, i % per_image);
    let (pixel, c) = (v / 3, v % 3);
    let image = from_raw_parts(images.add(*index.add(m) as usize * h * w * 3), h * w * 3);
    *out.add(i) = augment::resize_channels::<1>(
        &*params.add(m),
        image,
        w,
        size,
        pixel / size,
        pixel % size,
        c,
    )[0];
}

/// Threads: `n`. Image `m`'s mean luma, where its jitter's operation number `stage` is
/// contrast (the only one that needs it).
///
/// # Safety
/// As [`augment_resize`]; `means [n]`.
#[inline(always)]
pub unsafe fn augment_mean_gray(
    m: usize,
    params: *const ViewParams,
    stage: usize,
    size: usize,
    out: *const f32,
    means: *mut f32,
) {
    let p = &*params.add(m);
    if p.jitter != 0 && p.order[stage] == augment::CONTRAST {
        let pixels = size * size;
        *means.add(m) =
            augment::mean_gray(from_raw_parts(out.add(m * pixels * 3), pixels * 3), pixels);
    }
}

/// Threads: `n·size·size`, one per pixel. Jitter operation number `stage` of the pixel's view.
///
/// # Safety
/// As [`augment_mean_gray`].
#[inline(always)]
pub unsafe fn augment_jitter(
    i: usize,
    params: *const ViewParams,
    stage: usize,
    size: usize,
    means: *const f32,
    out: *mut f32,
) {
    let m = i / (size * size);
    let p = &*params.add(m);
    if p.jitter != 0 {
        let px = from_raw_parts_mut(out.add(i * 3), 3);
        augment::jitter_pixel(p.order[stage], p.factors, *means.add(m), px);
    }
}

/// Threads: `n·size·size`. Grayscale where the pixel's view has it.
///
/// # Safety
/// As [`augment_resize`].
#[inline(always)]
pub unsafe fn augment_grayscale(i: usize, params: *const ViewParams, size: usize, out: *mut f32) {
    if (*params.add(i / (size * size))).grayscale != 0 {
        augment::grayscale_pixel(from_raw_parts_mut(out.add(i * 3), 3));
    }
}

/// Threads: `n·size·size·3`. One pass of the view's blur from `src` into `dst` (a copy where
/// the view has no blur).
///
/// # Safety
/// `src` and `dst` hold `[n, size, size, 3]` and do not overlap.
#[inline(always)]
pub unsafe fn augment_blur(
    i: usize,
    params: *const ViewParams,
    size: usize,
    src: *const f32,
    dst: *mut f32,
    horizontal: bool,
) {
    let per_image = size * size * 3;
    let (m, v) = (i / per_image, i % per_image);
    let p = &*params.add(m);
    *dst.add(i) = if p.blur_len > 0 {
        let (pixel, c) = (v / 3, v % 3);
        let image = from_raw_parts(src.add(m * per_image), per_image);
        augment::blur_value(p, image, size, pixel / size, pixel % size, c, horizontal)
    } else {
        *src.add(i)
    };
}

/// Threads: `n·size·size·3`. Solarisation where the view has it, then normalisation.
///
/// # Safety
/// As [`augment_resize`].
#[inline(always)]
pub unsafe fn augment_finish(
    i: usize,
    params: *const ViewParams,
    size: usize,
    mean: [f32; 3],
    std: [f32; 3],
    out: *mut f32,
) {
    let p = &*params.add(i / (size * size * 3));
    let c = i % 3;
    *out.add(i) = augment::finish_value(p, *out.add(i), mean[c], std[c]);
}

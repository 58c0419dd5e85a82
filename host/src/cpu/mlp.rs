//! The projector/predictor MLP on the CPU over plain slices, so that its parameters can live
//! inside a larger flat buffer (a whole BYOL network). `Linear → BatchNorm1d → ReLU → Linear`
//! as [`crate::mlp::Mlp`] lays it out; activations row-major `[batch, features]`.

use super::batchnorm::{batchnorm_backward, batchnorm_forward, BnLayer};
use super::linear::{linear_backward, linear_forward};
use crate::mlp::{BnMode, Mlp};
use kernels::batchnorm::BnGrads;

/// What a forward keeps for its backward: `h`, `a [batch, hidden]`, `stats [2·hidden]`
/// (mean, then `1/√(var + ε)`), and `grad_hidden [batch, hidden]` scratch.
pub struct MlpBuffers<'a> {
    pub h: &'a mut [f32],
    pub a: &'a mut [f32],
    pub stats: &'a mut [f32],
    pub grad_hidden: &'a mut [f32],
}

/// `out [batch, output] = MLP(x [batch, input])`; training mode updates `running`
/// (`[2·hidden]`: mean, then variance). Shapes are the caller's to check.
#[allow(clippy::too_many_arguments)]
pub fn mlp_forward(
    mlp: &Mlp,
    params: &[f32],
    running: &mut [f32],
    x: &[f32],
    batch: usize,
    mode: BnMode,
    saved: MlpBuffers<'_>,
    out: &mut [f32],
) {
    linear_forward(
        saved.h,
        x,
        &params[mlp.w1()],
        &params[mlp.b1()],
        batch,
        mlp.input,
        mlp.hidden,
    );
    let (running_mean, running_var) = running.split_at_mut(mlp.hidden);
    let (mean, invstd) = saved.stats.split_at_mut(mlp.hidden);
    let (gamma, beta) = (&params[mlp.gamma()], &params[mlp.beta()]);
    let layer = BnLayer {
        gamma,
        beta,
        running_mean,
        running_var,
        mean,
        invstd,
    };
    batchnorm_forward(saved.h, saved.a, batch, mlp.hidden, mode, layer, None, true);
    linear_forward(
        out,
        saved.a,
        &params[mlp.w2()],
        &params[mlp.b2()],
        batch,
        mlp.hidden,
        mlp.output,
    );
}

/// Backward of the last training-mode forward: `grads` (laid out as `params`) accumulates;
/// `grad_x` is overwritten.
#[allow(clippy::too_many_arguments)]
pub fn mlp_backward(
    mlp: &Mlp,
    params: &[f32],
    x: &[f32],
    batch: usize,
    saved: MlpBuffers<'_>,
    grad_out: &[f32],
    grads: &mut [f32],
    grad_x: &mut [f32],
) {
    let (i, hd, o) = (mlp.input, mlp.hidden, mlp.output);
    // Second Linear: its weight and bias, and the gradient flowing into the hidden layer.
    let (head, b2) = grads.split_at_mut(mlp.b2().start);
    let gh = saved.grad_hidden;
    linear_backward(
        &mut head[mlp.w2()],
        b2,
        Some(gh),
        saved.a,
        &params[mlp.w2()],
        grad_out,
        batch,
        hd,
        o,
    );
    // ReLU + BatchNorm backward, in place on grad_hidden.
    let (w1_b1, rest) = grads.split_at_mut(mlp.gamma().start);
    let (dgamma, rest) = rest.split_at_mut(hd);
    let bn_grads = BnGrads {
        gamma: dgamma,
        beta: &mut rest[..hd],
        linear_bias: &mut w1_b1[mlp.b1()],
    };
    let (mean, invstd) = saved.stats.split_at(hd);
    let gamma = &params[mlp.gamma()];
    batchnorm_backward(
        saved.h,
        saved.a,
        gh,
        batch,
        hd,
        true,
        gamma,
        (mean, invstd),
        bn_grads,
        None,
    );
    // First Linear: weight and input gradients (its bias gradient came from the BatchNorm).
    linear_backward(
        &mut grads[mlp.w1()],
        &mut [],
        Some(grad_x),
        x,
        &params[mlp.w1()],
        gh,
        batch,
        i,
        hd,
    );
}

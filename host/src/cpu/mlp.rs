//! The projector/predictor MLP on the CPU over plain slices, so that its parameters can live
//! inside a larger flat buffer (a whole BYOL network). Hidden blocks `Linear → BatchNorm1d →
//! ReLU`, then a last Linear, as [`crate::mlp::Mlp`] lays them out; activations row-major
//! `[batch, features]`.

use super::batchnorm::{batchnorm_backward, batchnorm_forward, BnLayer};
use super::linear::{linear_backward, linear_forward};
use crate::mlp::{BnMode, Mlp};
use kernels::batchnorm::BnGrads;

/// What a forward keeps for its backward, one `[batch, hidden]` chunk per hidden block `k`:
/// `h` (the Linear's output), `a` (after BatchNorm and ReLU), `stats [2·hidden]` per block
/// (mean, then `1/√(var + ε)`), and `grad_hidden` scratch.
pub struct MlpBuffers<'a> {
    pub h: &'a mut [f32],
    pub a: &'a mut [f32],
    pub stats: &'a mut [f32],
    pub grad_hidden: &'a mut [f32],
}

/// Owned [`MlpBuffers`] for one MLP at one batch size.
pub struct MlpScratch {
    h: Vec<f32>,
    a: Vec<f32>,
    stats: Vec<f32>,
    grad_hidden: Vec<f32>,
}

impl MlpScratch {
    pub fn new(mlp: &Mlp, batch: usize) -> Self {
        let (bh, layers) = (batch * mlp.hidden, mlp.hidden_layers());
        MlpScratch {
            h: vec![0.0; bh * layers],
            a: vec![0.0; bh * layers],
            stats: vec![0.0; 2 * mlp.hidden * layers],
            grad_hidden: vec![0.0; bh * layers],
        }
    }
    pub fn buffers(&mut self) -> MlpBuffers<'_> {
        MlpBuffers {
            h: &mut self.h,
            a: &mut self.a,
            stats: &mut self.stats,
            grad_hidden: &mut self.grad_hidden,
        }
    }
}

/// `out [batch, output] = MLP(x [batch, input])`; training mode updates `running`
/// (per hidden block: mean, then variance). Shapes are the caller's to check.
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
    let bh = batch * mlp.hidden;
    for k in 0..mlp.hidden_layers() {
        let block = mlp.block(k);
        let (done, rest) = saved.a.split_at_mut(k * bh);
        let input = if k == 0 { x } else { &done[(k - 1) * bh..] };
        let h = &mut saved.h[k * bh..(k + 1) * bh];
        linear_forward(
            h,
            input,
            &params[block.weight],
            &params[block.bias],
            batch,
            block.input,
            mlp.hidden,
        );
        let running = &mut running[mlp.running_mean_of(k).start..mlp.running_var_of(k).end];
        let (running_mean, running_var) = running.split_at_mut(mlp.hidden);
        let stats = &mut saved.stats[2 * k * mlp.hidden..2 * (k + 1) * mlp.hidden];
        let (mean, invstd) = stats.split_at_mut(mlp.hidden);
        let layer = BnLayer {
            gamma: &params[block.gamma],
            beta: &params[block.beta],
            running_mean,
            running_var,
            mean,
            invstd,
        };
        batchnorm_forward(
            h,
            &mut rest[..bh],
            batch,
            mlp.hidden,
            mode,
            layer,
            None,
            true,
        );
    }
    let last_in = match mlp.hidden_layers() {
        0 => x,
        n => &saved.a[(n - 1) * bh..n * bh],
    };
    linear_forward(
        out,
        last_in,
        &params[mlp.last_weight()],
        &params[mlp.last_bias_range()],
        batch,
        mlp.last_input(),
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
    let (hd, layers) = (mlp.hidden, mlp.hidden_layers());
    let bh = batch * hd;
    // Last Linear: its weight and bias, and the gradient flowing into the last hidden block
    // (or into the input at depth 1).
    {
        let (head, bias) = grads.split_at_mut(mlp.last_bias_range().start);
        let (last_in, grad_in): (&[f32], &mut [f32]) = match layers {
            0 => (x, &mut *grad_x),
            n => (
                &saved.a[(n - 1) * bh..n * bh],
                &mut saved.grad_hidden[(n - 1) * bh..n * bh],
            ),
        };
        linear_backward(
            &mut head[mlp.last_weight()],
            bias,
            Some(grad_in),
            last_in,
            &params[mlp.last_weight()],
            grad_out,
            batch,
            mlp.last_input(),
            mlp.output,
        );
    }
    for k in (0..layers).rev() {
        let block = mlp.block(k);
        let (before, this) = saved.grad_hidden.split_at_mut(k * bh);
        let gh = &mut this[..bh];
        // ReLU + BatchNorm backward, in place on this block's gradient.
        let (w_b, rest) = grads.split_at_mut(block.gamma.start);
        let (dgamma, rest) = rest.split_at_mut(hd);
        let bn_grads = BnGrads {
            gamma: dgamma,
            beta: &mut rest[..hd],
            linear_bias: &mut w_b[block.bias.clone()],
        };
        let stats = &saved.stats[2 * k * hd..2 * (k + 1) * hd];
        let (mean, invstd) = stats.split_at(hd);
        batchnorm_backward(
            &saved.h[k * bh..(k + 1) * bh],
            &saved.a[k * bh..(k + 1) * bh],
            gh,
            batch,
            hd,
            true,
            &params[block.gamma.clone()],
            (mean, invstd),
            bn_grads,
            None,
        );
        // The block's Linear: weight and input gradients (its bias gradient came from the
        // BatchNorm).
        let (input, grad_in): (&[f32], &mut [f32]) = if k == 0 {
            (x, &mut *grad_x)
        } else {
            (&saved.a[(k - 1) * bh..k * bh], &mut before[(k - 1) * bh..])
        };
        linear_backward(
            &mut grads[block.weight.clone()],
            &mut [],
            Some(grad_in),
            input,
            &params[block.weight],
            gh,
            batch,
            block.input,
            hd,
        );
    }
}

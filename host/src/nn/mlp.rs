//! The projector/predictor MLP of BYOL: its parameter layout, initialisation, and its forward
//! and backward on the CPU. At the
//! paper's depth 2 it is `Linear(in → hidden, bias) → BatchNorm1d(hidden) → ReLU →
//! Linear(hidden → out)`; depth `d` has `d − 1` hidden blocks `Linear → BatchNorm1d → ReLU`
//! before the last Linear (depth 1 is one Linear, the paper's depth ablation).
//!
//! All parameters live in one flat buffer (so the EMA updates the whole MLP in one call), in
//! this order: for each hidden block `k`, `w_k [hidden, in_k]`, `b_k [hidden]`, `γ_k [hidden]`,
//! `β_k [hidden]`; then the last layer's `w [out, in_last]` and, when it has one, `b [out]`.
//! At depth 2 that is `w1, b1, γ, β, w2[, b2]`. Weights are `[out_features, in_features]`
//! row-major, as PyTorch stores them. BatchNorm running statistics are state, not parameters:
//! a second buffer holds, per hidden block, `running_mean [hidden]` then `running_var [hidden]`.

use crate::cpu::batchnorm::{batchnorm_backward, batchnorm_forward, BnLayer, BnMode};
use crate::cpu::linear::{linear_backward, linear_forward};
use crate::error::{Error, Result};
use crate::nn::{Registry, Role};
use kernels::batchnorm::BnGrads;
use rand::Rng;
use std::ops::Range;

/// Shape of one MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mlp {
    pub input: usize,
    pub hidden: usize,
    pub output: usize,
    /// Whether the last Linear has a bias. The official BYOL code has none (the paper's text
    /// does not say); PyTorch ports usually keep PyTorch's default bias.
    pub last_bias: bool,
    /// Number of Linear layers (≥ 1); BYOL's is 2.
    pub depth: usize,
}

/// Parameter ranges of one hidden block `Linear → BatchNorm1d → ReLU`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HiddenBlock {
    pub weight: Range<usize>,
    pub bias: Range<usize>,
    pub gamma: Range<usize>,
    pub beta: Range<usize>,
    /// Input features of its Linear.
    pub input: usize,
}

impl Mlp {
    /// BYOL's projector or predictor: `input → 4096 → 256`, no bias on the last layer.
    pub fn byol(input: usize) -> Self {
        Mlp {
            input,
            hidden: 4096,
            output: 256,
            last_bias: false,
            depth: 2,
        }
    }

    /// Hidden blocks (`depth − 1`).
    pub fn hidden_layers(&self) -> usize {
        self.depth.saturating_sub(1)
    }
    /// Input features of the last Linear.
    pub fn last_input(&self) -> usize {
        if self.depth > 1 {
            self.hidden
        } else {
            self.input
        }
    }
    fn block_len(&self, k: usize) -> usize {
        let input = if k == 0 { self.input } else { self.hidden };
        self.hidden * input + 3 * self.hidden
    }
    /// Hidden block `k` (0-based).
    pub fn block(&self, k: usize) -> HiddenBlock {
        let start: usize = (0..k).map(|j| self.block_len(j)).sum();
        let input = if k == 0 { self.input } else { self.hidden };
        let h = self.hidden;
        let w = start..start + h * input;
        HiddenBlock {
            bias: w.end..w.end + h,
            gamma: w.end + h..w.end + 2 * h,
            beta: w.end + 2 * h..w.end + 3 * h,
            weight: w,
            input,
        }
    }
    /// The last Linear's weight `[output, last_input]`.
    pub fn last_weight(&self) -> Range<usize> {
        let s: usize = (0..self.hidden_layers()).map(|k| self.block_len(k)).sum();
        s..s + self.output * self.last_input()
    }
    /// The last Linear's bias; empty when it has none.
    pub fn last_bias_range(&self) -> Range<usize> {
        let s = self.last_weight().end;
        s..s + if self.last_bias { self.output } else { 0 }
    }
    // The depth-2 names the backends and tests use.
    pub fn w1(&self) -> Range<usize> {
        self.block(0).weight
    }
    pub fn b1(&self) -> Range<usize> {
        self.block(0).bias
    }
    pub fn gamma(&self) -> Range<usize> {
        self.block(0).gamma
    }
    pub fn beta(&self) -> Range<usize> {
        self.block(0).beta
    }
    pub fn w2(&self) -> Range<usize> {
        self.last_weight()
    }
    pub fn b2(&self) -> Range<usize> {
        self.last_bias_range()
    }
    pub fn num_params(&self) -> usize {
        self.last_bias_range().end
    }
    /// Running mean of hidden block `k`.
    pub fn running_mean_of(&self, k: usize) -> Range<usize> {
        2 * k * self.hidden..(2 * k + 1) * self.hidden
    }
    /// Running variance of hidden block `k`.
    pub fn running_var_of(&self, k: usize) -> Range<usize> {
        (2 * k + 1) * self.hidden..(2 * k + 2) * self.hidden
    }
    pub fn running_mean(&self) -> Range<usize> {
        self.running_mean_of(0)
    }
    pub fn running_var(&self) -> Range<usize> {
        self.running_var_of(0)
    }
    pub fn running_len(&self) -> usize {
        2 * self.hidden * self.hidden_layers()
    }

    /// Rejects zero sizes.
    pub fn validate(&self) -> Result<()> {
        if self.input == 0 || self.hidden == 0 || self.output == 0 || self.depth == 0 {
            return Err(Error::InvalidArgument(format!(
                "MLP sizes must be positive, got input {}, hidden {}, output {} and depth {}",
                self.input, self.hidden, self.output, self.depth
            )));
        }
        Ok(())
    }

    /// PyTorch's default initialisation: each Linear's weight and bias uniform in
    /// `±1/√fan_in`; γ = 1, β = 0.
    pub fn init_params(&self, rng: &mut impl Rng) -> Vec<f32> {
        let mut p = vec![0.0f32; self.num_params()];
        let mut uniform = |range: Range<usize>, fan_in: usize| {
            let bound = 1.0 / (fan_in as f32).sqrt();
            for v in &mut p[range] {
                *v = rng.random_range(-bound..bound);
            }
        };
        for k in 0..self.hidden_layers() {
            let block = self.block(k);
            uniform(block.weight, block.input);
            uniform(block.bias, block.input);
        }
        uniform(self.last_weight(), self.last_input());
        uniform(self.last_bias_range(), self.last_input());
        for k in 0..self.hidden_layers() {
            p[self.block(k).gamma].fill(1.0);
        }
        p
    }

    /// Adds this MLP's parameters and running buffers to `registry` under `prefix`, in the
    /// layout's order. Depth 2 keeps the names of BYOL's PyTorch ports (`{prefix}.linear1`,
    /// `{prefix}.bn`, `{prefix}.linear2`); other depths number every layer
    /// (`linear1, bn1, linear2, bn2, …, linear{depth}`).
    pub fn register(&self, registry: &mut Registry, prefix: &str) {
        let bn_name = |k: usize| {
            if self.depth == 2 {
                format!("{prefix}.bn")
            } else {
                format!("{prefix}.bn{}", k + 1)
            }
        };
        for k in 0..self.hidden_layers() {
            let (h, i) = (self.hidden, self.block(k).input);
            let linear = format!("{prefix}.linear{}", k + 1);
            registry.add_param(format!("{linear}.weight"), vec![h, i], Role::LinearWeight);
            registry.add_param(format!("{linear}.bias"), vec![h], Role::Bias);
            registry.add_param(format!("{}.weight", bn_name(k)), vec![h], Role::BnWeight);
            registry.add_param(format!("{}.bias", bn_name(k)), vec![h], Role::BnBias);
        }
        let (o, i) = (self.output, self.last_input());
        let last = format!("{prefix}.linear{}", self.depth);
        registry.add_param(format!("{last}.weight"), vec![o, i], Role::LinearWeight);
        if self.last_bias {
            registry.add_param(format!("{last}.bias"), vec![o], Role::Bias);
        }
        for k in 0..self.hidden_layers() {
            let h = self.hidden;
            registry.add_buffer(format!("{}.running_mean", bn_name(k)), vec![h]);
            registry.add_buffer(format!("{}.running_var", bn_name(k)), vec![h]);
        }
    }

    /// Running statistics at construction: mean 0, variance 1 (PyTorch's).
    pub fn init_running(&self) -> Vec<f32> {
        let mut r = vec![0.0f32; self.running_len()];
        for k in 0..self.hidden_layers() {
            r[self.running_var_of(k)].fill(1.0);
        }
        r
    }
}

// ---- Forward and backward on the CPU, over plain slices, so that the parameters can live
// inside a larger flat buffer (a whole BYOL network). Activations are row-major
// `[batch, features]`.

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

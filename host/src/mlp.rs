//! The projector/predictor MLP of BYOL, its parameter layout and initialisation. At the
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

use crate::error::{Error, Result};
use crate::nn::{Registry, Role};
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

/// Training mode (batch statistics, running update) or evaluation mode (running statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnMode {
    Train,
    Eval,
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

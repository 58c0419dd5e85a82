//! The projector/predictor MLP of BYOL: `Linear(in → hidden, bias) → BatchNorm1d(hidden) →
//! ReLU → Linear(hidden → out)`, its parameter layout and initialisation.
//!
//! All parameters live in one flat buffer (so the EMA updates the whole MLP in one call), in
//! this order: `w1 [hidden, in]`, `b1 [hidden]`, `γ [hidden]`, `β [hidden]`, `w2 [out, hidden]`,
//! then `b2 [out]` when the last layer has a bias. Weights are `[out_features, in_features]`
//! row-major, as PyTorch stores them. BatchNorm running statistics are state, not parameters:
//! a second buffer holds `running_mean [hidden]` then `running_var [hidden]`.

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
        }
    }

    pub fn w1(&self) -> Range<usize> {
        0..self.hidden * self.input
    }
    pub fn b1(&self) -> Range<usize> {
        let s = self.w1().end;
        s..s + self.hidden
    }
    pub fn gamma(&self) -> Range<usize> {
        let s = self.b1().end;
        s..s + self.hidden
    }
    pub fn beta(&self) -> Range<usize> {
        let s = self.gamma().end;
        s..s + self.hidden
    }
    pub fn w2(&self) -> Range<usize> {
        let s = self.beta().end;
        s..s + self.output * self.hidden
    }
    /// Empty when the last layer has no bias.
    pub fn b2(&self) -> Range<usize> {
        let s = self.w2().end;
        s..s + if self.last_bias { self.output } else { 0 }
    }
    pub fn num_params(&self) -> usize {
        self.b2().end
    }
    pub fn running_mean(&self) -> Range<usize> {
        0..self.hidden
    }
    pub fn running_var(&self) -> Range<usize> {
        self.hidden..2 * self.hidden
    }
    pub fn running_len(&self) -> usize {
        2 * self.hidden
    }

    /// Rejects zero sizes.
    pub fn validate(&self) -> Result<()> {
        if self.input == 0 || self.hidden == 0 || self.output == 0 {
            return Err(Error::InvalidArgument(format!(
                "MLP sizes must be positive, got {self:?}"
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
        uniform(self.w1(), self.input);
        uniform(self.b1(), self.input);
        uniform(self.w2(), self.hidden);
        uniform(self.b2(), self.hidden);
        p[self.gamma()].fill(1.0);
        p
    }

    /// Adds this MLP's parameters and running buffers to `registry` under `prefix`
    /// (`{prefix}.linear1.weight`, …, `{prefix}.bn.running_var`), in the layout's order.
    pub fn register(&self, registry: &mut Registry, prefix: &str) {
        let (i, h, o) = (self.input, self.hidden, self.output);
        registry.add_param(
            format!("{prefix}.linear1.weight"),
            vec![h, i],
            Role::LinearWeight,
        );
        registry.add_param(format!("{prefix}.linear1.bias"), vec![h], Role::Bias);
        registry.add_param(format!("{prefix}.bn.weight"), vec![h], Role::BnWeight);
        registry.add_param(format!("{prefix}.bn.bias"), vec![h], Role::BnBias);
        registry.add_param(
            format!("{prefix}.linear2.weight"),
            vec![o, h],
            Role::LinearWeight,
        );
        if self.last_bias {
            registry.add_param(format!("{prefix}.linear2.bias"), vec![o], Role::Bias);
        }
        registry.add_buffer(format!("{prefix}.bn.running_mean"), vec![h]);
        registry.add_buffer(format!("{prefix}.bn.running_var"), vec![h]);
    }

    /// Running statistics at construction: mean 0, variance 1 (PyTorch's).
    pub fn init_running(&self) -> Vec<f32> {
        let mut r = vec![0.0f32; self.running_len()];
        r[self.running_var()].fill(1.0);
        r
    }
}

//! The projector/predictor MLP of BYOL: its parameter layout, initialisation, and its forward
//! and backward on any backend (Linear, BatchNorm and simplicial-embedding ops of
//! [`crate::backend`]). At the paper's depth 2 it is `Linear(in → hidden, bias) →
//! BatchNorm1d(hidden) → ReLU → Linear(hidden → out)`; depth `d` has `d − 1` hidden blocks
//! `Linear → BatchNorm1d → ReLU` before the last Linear (depth 1 is one Linear, the paper's
//! depth ablation). With a [`SimplicialEmbedding`] (byol-pytorch's default projector, not the
//! paper's) one more block comes first: `Linear(in → width, bias) → BatchNorm1d(width) →`
//! a softmax at temperature T over each group of its features; the blocks after it read its
//! `width` features.
//!
//! All parameters live in one flat buffer (so the EMA updates the whole MLP in one call), in
//! this order: for each hidden block `k` (the embedding's first), `w_k [width_k, in_k]`,
//! `b_k [width_k]`, `γ_k [width_k]`, `β_k [width_k]`; then the last layer's `w [out, in_last]`
//! and, when it has one, `b [out]`. At depth 2 that is `w1, b1, γ, β, w2[, b2]`. Weights are
//! `[out_features, in_features]` row-major, as PyTorch stores them. BatchNorm running
//! statistics are state, not parameters: a second buffer holds, per hidden block,
//! `running_mean [width_k]` then `running_var [width_k]`.

use crate::backend::{Backend, BatchNorm, BnMode, Linear, Simplicial};
use crate::error::{check_len, Error, Result};
use crate::nn::{truncated_normal, Registry, Role, WeightInit};
use rand::Rng;
use std::ops::Range;

/// The simplicial embedding (Lavoie et al., 2022) in front of an MLP, as byol-pytorch 0.9.1
/// builds it by default (`use_simplicial_embedding = True`: 32 groups of 8 at temperature 0.1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimplicialEmbedding {
    /// Softmax groups.
    pub groups: usize,
    /// Features per group.
    pub group: usize,
    pub temperature: f32,
}

impl SimplicialEmbedding {
    /// Features of the embedding: `groups · group`.
    pub fn width(&self) -> usize {
        self.groups * self.group
    }
}

/// Shape of one MLP.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mlp {
    pub input: usize,
    pub hidden: usize,
    pub output: usize,
    /// Whether the last Linear has a bias. The official BYOL code has none (the paper's text
    /// does not say); PyTorch ports usually keep PyTorch's default bias.
    pub last_bias: bool,
    /// Number of Linear layers (≥ 1) after the embedding; BYOL's is 2.
    pub depth: usize,
    /// A simplicial embedding block before the rest, or none (the paper's MLP).
    pub embedding: Option<SimplicialEmbedding>,
}

/// Parameter ranges of one hidden block `Linear → BatchNorm1d →` ReLU (or the embedding's
/// softmax).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HiddenBlock {
    pub weight: Range<usize>,
    pub bias: Range<usize>,
    pub gamma: Range<usize>,
    pub beta: Range<usize>,
    /// Input features of its Linear.
    pub input: usize,
    /// Output features of its Linear (and its BatchNorm's).
    pub width: usize,
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
            embedding: None,
        }
    }

    /// Hidden blocks: the embedding's, if any, then `depth − 1`.
    pub fn hidden_layers(&self) -> usize {
        self.depth.saturating_sub(1) + usize::from(self.embedding.is_some())
    }
    /// Whether hidden block `k` is the simplicial embedding's (block 0 when there is one).
    pub fn is_embedding(&self, k: usize) -> bool {
        k == 0 && self.embedding.is_some()
    }
    /// Output features of hidden block `k`.
    pub fn width(&self, k: usize) -> usize {
        match self.embedding {
            Some(e) if k == 0 => e.width(),
            _ => self.hidden,
        }
    }
    /// Input features of hidden block `k`'s Linear.
    fn input_of(&self, k: usize) -> usize {
        if k == 0 {
            self.input
        } else {
            self.width(k - 1)
        }
    }
    /// Input features of the last Linear.
    pub fn last_input(&self) -> usize {
        match self.hidden_layers() {
            0 => self.input,
            n => self.width(n - 1),
        }
    }
    fn block_len(&self, k: usize) -> usize {
        self.width(k) * self.input_of(k) + 3 * self.width(k)
    }
    /// Hidden block `k` (0-based).
    pub fn block(&self, k: usize) -> HiddenBlock {
        let start: usize = (0..k).map(|j| self.block_len(j)).sum();
        let (input, h) = (self.input_of(k), self.width(k));
        let w = start..start + h * input;
        HiddenBlock {
            bias: w.end..w.end + h,
            gamma: w.end + h..w.end + 2 * h,
            beta: w.end + 2 * h..w.end + 3 * h,
            weight: w,
            input,
            width: h,
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
    // The depth-2 names the backends and tests use (of the first hidden block and the last
    // Linear).
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
        let s: usize = (0..k).map(|j| 2 * self.width(j)).sum();
        s..s + self.width(k)
    }
    /// Running variance of hidden block `k`.
    pub fn running_var_of(&self, k: usize) -> Range<usize> {
        let s = self.running_mean_of(k).end;
        s..s + self.width(k)
    }
    pub fn running_mean(&self) -> Range<usize> {
        self.running_mean_of(0)
    }
    pub fn running_var(&self) -> Range<usize> {
        self.running_var_of(0)
    }
    pub fn running_len(&self) -> usize {
        (0..self.hidden_layers()).map(|k| 2 * self.width(k)).sum()
    }

    /// Rejects zero sizes, and an embedding without groups or with a temperature that is not
    /// positive.
    pub fn validate(&self) -> Result<()> {
        if self.input == 0 || self.hidden == 0 || self.output == 0 || self.depth == 0 {
            return Err(Error::InvalidArgument(format!(
                "MLP sizes must be positive, got input {}, hidden {}, output {} and depth {}",
                self.input, self.hidden, self.output, self.depth
            )));
        }
        if let Some(e) = self.embedding {
            if e.groups == 0 || e.group == 0 || !(e.temperature > 0.0 && e.temperature.is_finite())
            {
                return Err(Error::InvalidArgument(format!(
                    "simplicial embedding: needs groups and features per group ≥ 1 and a positive temperature, got {} groups of {} at temperature {}",
                    e.groups, e.group, e.temperature
                )));
            }
        }
        Ok(())
    }

    /// Fresh parameters drawn as `init` says ([`WeightInit`]); γ = 1, β = 0. torchvision
    /// (PyTorch's default): each Linear's weight and bias uniform in `±1/√fan_in`. Official
    /// (Haiku's default): weights `N(0, 1/fan_in)` truncated at ±2σ, biases 0.
    pub fn init_params(&self, init: WeightInit, rng: &mut impl Rng) -> Vec<f32> {
        let mut p = vec![0.0f32; self.num_params()];
        let mut draw = |range: Range<usize>, fan_in: usize, is_bias: bool| {
            let scale = 1.0 / (fan_in as f32).sqrt();
            for v in &mut p[range] {
                *v = match init {
                    WeightInit::Torchvision => rng.random_range(-scale..scale),
                    WeightInit::Official if is_bias => 0.0,
                    WeightInit::Official => truncated_normal(rng, scale),
                };
            }
        };
        for k in 0..self.hidden_layers() {
            let block = self.block(k);
            draw(block.weight, block.input, false);
            draw(block.bias, block.input, true);
        }
        draw(self.last_weight(), self.last_input(), false);
        draw(self.last_bias_range(), self.last_input(), true);
        for k in 0..self.hidden_layers() {
            p[self.block(k).gamma].fill(1.0);
        }
        p
    }

    /// Adds this MLP's parameters and running buffers to `registry` under `prefix`, in the
    /// layout's order. Depth 2 keeps the names of BYOL's PyTorch ports (`{prefix}.linear1`,
    /// `{prefix}.bn`, `{prefix}.linear2`); other depths number every layer
    /// (`linear1, bn1, linear2, bn2, …, linear{depth}`). The embedding's block is
    /// `{prefix}.embed.linear` and `{prefix}.embed.bn`; the names after it are the same as
    /// without it.
    pub fn register(&self, registry: &mut Registry, prefix: &str) {
        let first = usize::from(self.embedding.is_some());
        let names = |k: usize| -> (String, String) {
            if self.is_embedding(k) {
                return (
                    format!("{prefix}.embed.linear"),
                    format!("{prefix}.embed.bn"),
                );
            }
            let j = k - first; // the block's place among the ReLU blocks
            let bn = if self.depth == 2 {
                format!("{prefix}.bn")
            } else {
                format!("{prefix}.bn{}", j + 1)
            };
            (format!("{prefix}.linear{}", j + 1), bn)
        };
        for k in 0..self.hidden_layers() {
            let (h, i) = (self.width(k), self.block(k).input);
            let (linear, bn) = names(k);
            registry.add_param(format!("{linear}.weight"), vec![h, i], Role::LinearWeight);
            registry.add_param(format!("{linear}.bias"), vec![h], Role::Bias);
            registry.add_param(format!("{bn}.weight"), vec![h], Role::BnWeight);
            registry.add_param(format!("{bn}.bias"), vec![h], Role::BnBias);
        }
        let (o, i) = (self.output, self.last_input());
        let last = format!("{prefix}.linear{}", self.depth);
        registry.add_param(format!("{last}.weight"), vec![o, i], Role::LinearWeight);
        if self.last_bias {
            registry.add_param(format!("{last}.bias"), vec![o], Role::Bias);
        }
        for k in 0..self.hidden_layers() {
            let (h, bn) = (self.width(k), names(k).1);
            registry.add_buffer(format!("{bn}.running_mean"), vec![h]);
            registry.add_buffer(format!("{bn}.running_var"), vec![h]);
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

// ---- Forward and backward on a backend. Activations are row-major `[batch, features]`.

/// Where an MLP's tensors sit in the flat buffers it is part of (a whole BYOL network): its
/// parameters, and their gradients, from `params`; its running statistics from `running`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MlpAt {
    pub params: usize,
    pub running: usize,
}

/// What a forward keeps for its backward, per hidden block `k`, allocated once per batch size
/// and reused: `h[k] [batch, width_k]` (the Linear's output), `a[k]` (the block's output:
/// after BatchNorm and ReLU, or the embedding's softmax), `stats[k] [2·width_k]` (mean, then
/// `1/√(var + ε)`), and `grad_hidden[k]` scratch; for the embedding also `normalised`, its
/// BatchNorm's output (the softmax's input).
pub struct MlpSaved<B: Backend> {
    pub batch: usize,
    h: Vec<B::Buffer>,
    a: Vec<B::Buffer>,
    stats: Vec<B::Buffer>,
    grad_hidden: Vec<B::Buffer>,
    normalised: Option<B::Buffer>,
    /// The mode of the last forward; backward needs a training-mode forward.
    mode: Option<BnMode>,
}

/// One MLP on its own (tests, benches): its shape, its parameters and running statistics.
pub struct MlpState<B: Backend> {
    pub mlp: Mlp,
    pub params: B::Buffer,
    pub running: B::Buffer,
}

impl<B: Backend> MlpSaved<B> {
    /// Hidden block `k`'s output `[batch, width_k]` (after BatchNorm and ReLU, or the
    /// embedding's softmax) of the last forward.
    pub fn activation(&self, k: usize) -> &B::Buffer {
        &self.a[k]
    }
}

impl Mlp {
    /// Buffers for a forward and backward at `batch` rows.
    pub fn saved<B: Backend>(&self, be: &B, batch: usize) -> Result<MlpSaved<B>> {
        self.validate()?;
        let per_block = |rows: usize| -> Result<Vec<B::Buffer>> {
            (0..self.hidden_layers())
                .map(|k| be.zeros(rows * self.width(k)))
                .collect()
        };
        Ok(MlpSaved {
            batch,
            h: per_block(batch)?,
            a: per_block(batch)?,
            stats: per_block(2)?,
            grad_hidden: per_block(batch)?,
            normalised: match self.embedding {
                Some(e) => Some(be.zeros(batch * e.width())?),
                None => None,
            },
            mode: None,
        })
    }

    /// The Linear of hidden block `k`, or the last one (`k = hidden_layers()`).
    fn linear(&self, at: MlpAt, k: usize, rows: usize) -> Linear {
        let moved = |r: Range<usize>| r.start + at.params..r.end + at.params;
        if k < self.hidden_layers() {
            let block = self.block(k);
            return Linear {
                rows,
                input: block.input,
                output: block.width,
                weight: moved(block.weight),
                bias: Some(moved(block.bias)),
            };
        }
        Linear {
            rows,
            input: self.last_input(),
            output: self.output,
            weight: moved(self.last_weight()),
            bias: self.last_bias.then(|| moved(self.last_bias_range())),
        }
    }

    /// The BatchNorm of hidden block `k` (its Linear's bias gradient comes from it).
    fn batchnorm(&self, at: MlpAt, k: usize, rows: usize) -> BatchNorm {
        let block = self.block(k);
        let moved = |r: Range<usize>| r.start + at.params..r.end + at.params;
        let running = |r: Range<usize>| r.start + at.running..r.end + at.running;
        BatchNorm {
            rows,
            cols: block.width,
            relu: !self.is_embedding(k),
            gamma: moved(block.gamma),
            beta: moved(block.beta),
            running_mean: running(self.running_mean_of(k)),
            running_var: running(self.running_var_of(k)),
            linear_bias: Some(moved(block.bias)),
        }
    }

    /// The softmax of hidden block `k`, when it is the embedding's.
    fn simplicial(&self, k: usize, rows: usize) -> Option<Simplicial> {
        let e = self.embedding.filter(|_| self.is_embedding(k))?;
        Some(Simplicial {
            rows,
            cols: e.width(),
            group: e.group,
            temperature: e.temperature,
        })
    }

    /// The checks shared by forward and backward.
    fn check<B: Backend>(
        &self,
        at: MlpAt,
        params: &B::Buffer,
        x: &B::Buffer,
        saved: &MlpSaved<B>,
    ) -> Result<()> {
        self.validate()?;
        let batch = saved.batch;
        if batch == 0 {
            return Err(Error::InvalidArgument(
                "MLP forward needs a batch of at least 1".into(),
            ));
        }
        crate::backend::need::<B>("MLP parameters", params, at.params + self.num_params())?;
        check_len("MLP input x [batch, input]", B::len(x), batch * self.input)?;
        let layers = self.hidden_layers();
        let fits_block = |k: usize| {
            let w = self.width(k);
            [&saved.h[k], &saved.a[k], &saved.grad_hidden[k]]
                .iter()
                .all(|b| B::len(b) == batch * w)
                && B::len(&saved.stats[k]) == 2 * w
        };
        let fits_embedding = match (self.embedding, &saved.normalised) {
            (Some(e), Some(z)) => B::len(z) == batch * e.width(),
            (None, None) => true,
            _ => false,
        };
        if saved.h.len() != layers || !(0..layers).all(fits_block) || !fits_embedding {
            return Err(Error::InvalidArgument(format!(
                "MLP saved buffers were made for another MLP or batch (this one: {layers} hidden blocks of {} at batch {batch})",
                self.hidden
            )));
        }
        Ok(())
    }

    /// `out [batch, output] = MLP(x [batch, input])`; training mode updates the running
    /// statistics and keeps in `saved` what [`Mlp::backward`] needs.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        at: MlpAt,
        params: &B::Buffer,
        running: &mut B::Buffer,
        x: &B::Buffer,
        mode: BnMode,
        saved: &mut MlpSaved<B>,
        out: &mut B::Buffer,
    ) -> Result<()> {
        self.check(at, params, x, saved)?;
        let batch = saved.batch;
        if mode == BnMode::Train && batch < 2 {
            return Err(Error::BatchTooSmall(batch));
        }
        crate::backend::need::<B>(
            "MLP running statistics",
            running,
            at.running + self.running_len(),
        )?;
        check_len(
            "MLP output [batch, output]",
            B::len(out),
            batch * self.output,
        )?;
        for k in 0..self.hidden_layers() {
            let (done, rest) = saved.a.split_at_mut(k);
            let input = if k == 0 { x } else { &done[k - 1] };
            let h = &mut saved.h[k];
            be.linear_forward(&self.linear(at, k, batch), params, input, h)?;
            let bn = self.batchnorm(at, k, batch);
            let stats = &mut saved.stats[k];
            match (self.simplicial(k, batch), saved.normalised.as_mut()) {
                (Some(op), Some(z)) => {
                    be.batchnorm_forward(&bn, mode, params, running, h, None, stats, z)?;
                    be.simplicial_forward(&op, z, &mut rest[0])?;
                }
                _ => {
                    be.batchnorm_forward(&bn, mode, params, running, h, None, stats, &mut rest[0])?
                }
            }
        }
        let last_in = saved.a.last().unwrap_or(x);
        be.linear_forward(
            &self.linear(at, self.hidden_layers(), batch),
            params,
            last_in,
            out,
        )?;
        saved.mode = Some(mode);
        Ok(())
    }

    /// Backward of the last training-mode forward: the parameter gradients accumulate (`+=`)
    /// into `grads` (laid out as the parameters); `grad_x [batch, input]` is overwritten.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<B: Backend>(
        &self,
        be: &B,
        at: MlpAt,
        params: &B::Buffer,
        x: &B::Buffer,
        saved: &mut MlpSaved<B>,
        grad_out: &B::Buffer,
        grads: &mut B::Buffer,
        grad_x: &mut B::Buffer,
    ) -> Result<()> {
        self.check(at, params, x, saved)?;
        if saved.mode != Some(BnMode::Train) {
            return Err(Error::InvalidArgument(
                "MLP backward needs a training-mode forward on the same buffers first".into(),
            ));
        }
        let batch = saved.batch;
        check_len(
            "MLP output gradient [batch, output]",
            B::len(grad_out),
            batch * self.output,
        )?;
        crate::backend::need::<B>(
            "MLP parameter gradients",
            grads,
            at.params + self.num_params(),
        )?;
        check_len(
            "MLP input gradient [batch, input]",
            B::len(grad_x),
            batch * self.input,
        )?;
        let layers = self.hidden_layers();
        // Last Linear: its weight and bias, and the gradient flowing into the last hidden block
        // (or into the input at depth 1).
        {
            let (last_in, grad_in) = match layers {
                0 => (x, &mut *grad_x),
                n => (&saved.a[n - 1], &mut saved.grad_hidden[n - 1]),
            };
            let l = self.linear(at, layers, batch);
            be.linear_backward(&l, params, last_in, grad_out, grads, Some(grad_in))?;
        }
        for k in (0..layers).rev() {
            let (before, this) = saved.grad_hidden.split_at_mut(k);
            let gh = &mut this[0];
            // The embedding's softmax backward, then ReLU + BatchNorm backward, in place on
            // this block's gradient (which also gives the block's Linear its bias gradient).
            let bn = self.batchnorm(at, k, batch);
            let bn_out = match (self.simplicial(k, batch), &saved.normalised) {
                (Some(op), Some(z)) => {
                    be.simplicial_backward(&op, &saved.a[k], gh)?;
                    z
                }
                _ => &saved.a[k],
            };
            let (h, stats) = (&saved.h[k], &saved.stats[k]);
            be.batchnorm_backward(&bn, params, h, bn_out, stats, gh, grads, None)?;
            // The block's Linear: weight and input gradients.
            let (input, grad_in) = if k == 0 {
                (x, &mut *grad_x)
            } else {
                (&saved.a[k - 1], &mut before[k - 1])
            };
            let l = Linear {
                bias: None,
                ..self.linear(at, k, batch)
            };
            be.linear_backward(&l, params, input, gh, grads, Some(grad_in))?;
        }
        Ok(())
    }
}

impl<B: Backend> MlpState<B> {
    /// Uploads an MLP's parameters and running statistics.
    pub fn upload(be: &B, mlp: Mlp, params: &[f32], running: &[f32]) -> Result<Self> {
        Ok(MlpState {
            mlp,
            params: be.upload(params)?,
            running: be.upload(running)?,
        })
    }

    fn check_own(&self) -> Result<()> {
        self.mlp.validate()?;
        check_len(
            "MLP parameters",
            B::len(&self.params),
            self.mlp.num_params(),
        )?;
        check_len(
            "MLP running statistics [layers, 2·hidden]",
            B::len(&self.running),
            self.mlp.running_len(),
        )
    }

    /// [`Mlp::forward`] of this MLP.
    pub fn forward(
        &mut self,
        be: &B,
        x: &B::Buffer,
        mode: BnMode,
        saved: &mut MlpSaved<B>,
        out: &mut B::Buffer,
    ) -> Result<()> {
        self.check_own()?;
        let at = MlpAt::default();
        self.mlp
            .forward(be, at, &self.params, &mut self.running, x, mode, saved, out)
    }

    /// [`Mlp::backward`] of this MLP.
    pub fn backward(
        &self,
        be: &B,
        x: &B::Buffer,
        saved: &mut MlpSaved<B>,
        grad_out: &B::Buffer,
        grads: &mut B::Buffer,
        grad_x: &mut B::Buffer,
    ) -> Result<()> {
        self.check_own()?;
        check_len(
            "MLP parameter gradients",
            B::len(grads),
            self.mlp.num_params(),
        )?;
        let at = MlpAt::default();
        self.mlp
            .backward(be, at, &self.params, x, saved, grad_out, grads, grad_x)
    }
}

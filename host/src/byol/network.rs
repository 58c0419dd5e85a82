//! The BYOL networks and one training step, reading like the paper: two views, the target's
//! projections (no gradient), the online network's predictions, the symmetric loss, the
//! gradient, LARS, and the EMA of the target (DESIGN.md §1).
//!
//! Layout: the online parameters are one flat buffer `[encoder | projector | predictor]`,
//! the target's `[encoder | projector]`, so the EMA is one call over the target's length and
//! LARS walks one registry ([`Byol::registry`]: `encoder.conv1.weight`, …,
//! `projector.linear1.weight`, …, `predictor.bn.running_var`). BatchNorm running statistics
//! are separate flat buffers with the same order. Views are NHWC `[batch, h, w, 3]`.
//!
//! Memory: each loss term depends on one view's online pass, so the step runs the target on
//! both views first, then each view's online forward and backward in turn, reusing one set of
//! activation buffers; BatchNorm statistics are per view, as in the official code.

use super::lars::{lars_step, LarsConfig};
use crate::cpu::mlp::{mlp_backward, mlp_forward, MlpBuffers};
use crate::cpu::{ema_update, nmse_loss};
use crate::error::{check_len, Error, Result};
use crate::mlp::{BnMode, Mlp};
use crate::nn::{Activations, Registry, ResNet, ResNetConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::ops::Range;

/// The shape of the BYOL networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByolConfig {
    pub encoder: ResNetConfig,
    pub projector_hidden: usize,
    pub projection: usize,
    pub predictor_hidden: usize,
    /// Whether the online network has a predictor (the paper's ablation removes it: p = z).
    pub predictor: bool,
}

/// Learning-rate multipliers of the projector (μ) and the predictor (λ), for the paper's
/// ablations (its appendix: with τ = 0 a predictor learning faster than the rest restores
/// learning). Both 1 in plain BYOL.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrMultipliers {
    pub projector: f32,
    pub predictor: f32,
}

impl Default for LrMultipliers {
    fn default() -> Self {
        LrMultipliers {
            projector: 1.0,
            predictor: 1.0,
        }
    }
}

/// Structure and layout of the online and target networks (parameters live in [`ByolState`]).
pub struct Byol {
    pub config: ByolConfig,
    pub encoder: ResNet,
    pub projector: Mlp,
    /// `None` when the configuration removes it.
    pub predictor: Option<Mlp>,
    /// Every online parameter and running buffer, in buffer order.
    pub registry: Registry,
}

/// Parameters and optimiser state of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct ByolState {
    pub online: Vec<f32>,
    pub target: Vec<f32>,
    pub online_running: Vec<f32>,
    pub target_running: Vec<f32>,
    pub momentum: Vec<f32>,
    /// Optimiser steps taken.
    pub step: u64,
}

/// Buffers a step needs, allocated once per batch shape.
pub struct ByolWork {
    batch: usize,
    acts: Activations,
    projector_scratch: MlpScratch,
    predictor_scratch: Option<MlpScratch>,
    z: Vec<f32>,
    p: Vec<f32>,
    target_z: [Vec<f32>; 2],
    grad_p: Vec<f32>,
    grad_z: Vec<f32>,
    repr: Vec<f32>,
    grad_repr: Vec<f32>,
    pub grads: Vec<f32>,
}

/// What one MLP forward keeps for its backward.
struct MlpScratch {
    h: Vec<f32>,
    a: Vec<f32>,
    stats: Vec<f32>,
    grad_hidden: Vec<f32>,
}

impl MlpScratch {
    fn new(mlp: &Mlp, batch: usize) -> Self {
        let bh = batch * mlp.hidden;
        MlpScratch {
            h: vec![0.0; bh],
            a: vec![0.0; bh],
            stats: vec![0.0; 2 * mlp.hidden],
            grad_hidden: vec![0.0; bh],
        }
    }
    fn buffers(&mut self) -> MlpBuffers<'_> {
        MlpBuffers {
            h: &mut self.h,
            a: &mut self.a,
            stats: &mut self.stats,
            grad_hidden: &mut self.grad_hidden,
        }
    }
}

/// What one step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// `L(v→v′) + L(v′→v)`, each a batch mean.
    pub loss: f32,
}

impl Byol {
    pub fn new(config: ByolConfig) -> Result<Self> {
        let encoder = ResNet::new(config.encoder)?;
        let projector = Mlp {
            input: encoder.repr_dim(),
            hidden: config.projector_hidden,
            output: config.projection,
            last_bias: false,
        };
        let predictor = config.predictor.then_some(Mlp {
            input: config.projection,
            hidden: config.predictor_hidden,
            output: config.projection,
            last_bias: false,
        });
        projector.validate()?;
        let mut registry = Registry::default();
        registry.extend_prefixed(&encoder.registry, "encoder");
        projector.register(&mut registry, "projector");
        if let Some(q) = &predictor {
            q.validate()?;
            q.register(&mut registry, "predictor");
        }
        Ok(Byol {
            config,
            encoder,
            projector,
            predictor,
            registry,
        })
    }

    /// Parameter ranges of the three parts in the online buffer.
    pub fn encoder_params(&self) -> Range<usize> {
        0..self.encoder.registry.param_len()
    }
    pub fn projector_params(&self) -> Range<usize> {
        let s = self.encoder_params().end;
        s..s + self.projector.num_params()
    }
    pub fn predictor_params(&self) -> Range<usize> {
        let s = self.projector_params().end;
        s..s + self.predictor.as_ref().map_or(0, Mlp::num_params)
    }
    /// Running-statistics ranges of the three parts.
    pub fn encoder_running(&self) -> Range<usize> {
        0..self.encoder.registry.buffer_len()
    }
    pub fn projector_running(&self) -> Range<usize> {
        let s = self.encoder_running().end;
        s..s + self.projector.running_len()
    }
    pub fn predictor_running(&self) -> Range<usize> {
        let s = self.projector_running().end;
        s..s + self.predictor.as_ref().map_or(0, Mlp::running_len)
    }

    /// A fresh run: online and target initialised from different seeds (as the official
    /// code does), momentum zero.
    pub fn init(&self, seed: u64) -> ByolState {
        let online = self.init_params(seed);
        let target =
            self.init_params(seed ^ 0x9e37_79b9_7f4a_7c15)[..self.projector_params().end].to_vec();
        let mut running = self.encoder.init_running();
        running.extend(self.projector.init_running());
        running.extend(self.predictor.iter().flat_map(Mlp::init_running));
        let target_running = running[..self.projector_running().end].to_vec();
        ByolState {
            momentum: vec![0.0; online.len()],
            online,
            target,
            online_running: running,
            target_running,
            step: 0,
        }
    }

    fn init_params(&self, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut p = self.encoder.init_params(&mut rng);
        p.extend(self.projector.init_params(&mut rng));
        if let Some(q) = &self.predictor {
            p.extend(q.init_params(&mut rng));
        }
        p
    }

    /// Buffers for batches of `batch` images of `h × w`.
    pub fn work(&self, batch: usize, h: usize, w: usize) -> Result<ByolWork> {
        let proj = self.config.projection;
        Ok(ByolWork {
            batch,
            acts: self.encoder.activations(batch, h, w)?,
            projector_scratch: MlpScratch::new(&self.projector, batch),
            predictor_scratch: self.predictor.as_ref().map(|q| MlpScratch::new(q, batch)),
            z: vec![0.0; batch * proj],
            p: vec![0.0; batch * proj],
            target_z: [vec![0.0; batch * proj], vec![0.0; batch * proj]],
            grad_p: vec![0.0; batch * proj],
            grad_z: vec![0.0; batch * proj],
            repr: vec![0.0; batch * self.encoder.repr_dim()],
            grad_repr: vec![0.0; batch * self.encoder.repr_dim()],
            grads: vec![0.0; self.registry.param_len()],
        })
    }

    /// Target projection `g_ξ(f_ξ(x))`, training-mode BatchNorm as in the official code.
    fn target_projection(
        &self,
        state: &mut ByolState,
        x: &[f32],
        work: &mut ByolWork,
        view: usize,
    ) -> Result<()> {
        let (enc, proj) = (self.encoder_params(), self.projector_params());
        let (enc_r, proj_r) = (self.encoder_running(), self.projector_running());
        let (er, pr) = state.target_running.split_at_mut(enc_r.end);
        let repr =
            self.encoder
                .forward(&state.target[enc], er, x, BnMode::Train, &mut work.acts)?;
        let out = &mut work.target_z[view];
        let buffers = work.projector_scratch.buffers();
        mlp_forward(
            &self.projector,
            &state.target[proj],
            &mut pr[..proj_r.len()],
            repr,
            work.batch,
            BnMode::Train,
            buffers,
            out,
        );
        Ok(())
    }

    /// The multiplier of one parameter tensor's learning rate.
    fn lr_multiplier(&self, p: &crate::nn::Param, m: LrMultipliers) -> f32 {
        if self.projector_params().contains(&p.range.start) {
            m.projector
        } else if self.predictor_params().contains(&p.range.start) {
            m.predictor
        } else {
            1.0
        }
    }

    /// Online pass on one view against the other view's target projection: forward, loss,
    /// backward; gradients accumulate into `work.grads`. Returns the loss (batch mean).
    fn online_term(
        &self,
        state: &mut ByolState,
        x: &[f32],
        target_view: usize,
        work: &mut ByolWork,
    ) -> Result<f32> {
        let (enc, proj, pred) = (
            self.encoder_params(),
            self.projector_params(),
            self.predictor_params(),
        );
        let (enc_r, proj_r) = (self.encoder_running(), self.projector_running());
        let b = work.batch;
        let (er, rest) = state.online_running.split_at_mut(enc_r.end);
        let (pr, qr) = rest.split_at_mut(proj_r.len());
        let online = &state.online;
        let out =
            self.encoder
                .forward(&online[enc.clone()], er, x, BnMode::Train, &mut work.acts)?;
        // Kept in the work buffers: the projector's backward needs it after `acts` moves on.
        work.repr.copy_from_slice(out);
        let repr = &work.repr;
        let proj_scratch = &mut work.projector_scratch;
        mlp_forward(
            &self.projector,
            &online[proj.clone()],
            pr,
            repr,
            b,
            BnMode::Train,
            proj_scratch.buffers(),
            &mut work.z,
        );
        match (&self.predictor, &mut work.predictor_scratch) {
            (Some(q), Some(scratch)) => {
                let w = &online[pred.clone()];
                mlp_forward(
                    q,
                    w,
                    qr,
                    &work.z,
                    b,
                    BnMode::Train,
                    scratch.buffers(),
                    &mut work.p,
                )
            }
            _ => work.p.copy_from_slice(&work.z), // no predictor: p = z
        }
        let dim = self.config.projection;
        let loss = nmse_loss(
            &work.p,
            &work.target_z[target_view],
            b,
            dim,
            Some(&mut work.grad_p),
        );
        if !loss.is_finite() {
            // Stop before the non-finite gradient reaches any parameter.
            return Err(Error::Diverged {
                step: state.step,
                loss,
            });
        }
        let (genc, rest) = work.grads.split_at_mut(enc.end);
        let (gproj, gpred) = rest.split_at_mut(proj.len());
        match (&self.predictor, &mut work.predictor_scratch) {
            (Some(q), Some(scratch)) => {
                let (w, z) = (&online[pred], &work.z);
                mlp_backward(
                    q,
                    w,
                    z,
                    b,
                    scratch.buffers(),
                    &work.grad_p,
                    gpred,
                    &mut work.grad_z,
                )
            }
            _ => work.grad_z.copy_from_slice(&work.grad_p),
        }
        mlp_backward(
            &self.projector,
            &online[proj],
            repr,
            b,
            proj_scratch.buffers(),
            &work.grad_z,
            gproj,
            &mut work.grad_repr,
        );
        self.encoder
            .backward(&online[enc], x, &mut work.acts, &work.grad_repr, genc, None)?;
        Ok(loss)
    }

    /// One BYOL step on views `v1 = t(x)`, `v2 = t′(x)`: the gradient of
    /// `L(v1→v2) + L(v2→v1)`, a LARS step at learning rate `lr` (times `lr_mult` for the
    /// projector and predictor), then the target's EMA with decay `tau`.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        state: &mut ByolState,
        work: &mut ByolWork,
        views: [&[f32]; 2],
        lr: f32,
        tau: f32,
        lars: &LarsConfig,
        lr_mult: LrMultipliers,
    ) -> Result<StepReport> {
        check_len(
            "BYOL online parameters",
            state.online.len(),
            self.registry.param_len(),
        )?;
        check_len(
            "BYOL target parameters",
            state.target.len(),
            self.projector_params().end,
        )?;
        // Target projections of both views: no gradient.
        for (view, x) in views.iter().enumerate() {
            self.target_projection(state, x, work, view)?;
        }
        // Gradient of the symmetric loss, one online pass per view.
        work.grads.fill(0.0);
        let loss = self.online_term(state, views[0], 1, work)?
            + self.online_term(state, views[1], 0, work)?;
        // LARS on every online parameter, then the EMA of the whole target in one call.
        lars_step(
            lars,
            &self.registry.params,
            &mut state.online,
            &work.grads,
            &mut state.momentum,
            lr,
            |p| self.lr_multiplier(p, lr_mult),
        );
        let shared = self.projector_params().end;
        ema_update(&mut state.target, &state.online[..shared], tau);
        state.step += 1;
        Ok(StepReport { loss })
    }
}

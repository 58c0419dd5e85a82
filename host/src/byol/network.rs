//! The BYOL networks and one training step, reading like the paper: two views, the target's
//! projections (no gradient), the online network's predictions, the symmetric loss, the
//! gradient, LARS, and the EMA of the target (docs/DESIGN.md §1).
//!
//! Layout: the online parameters are one flat buffer `[encoder | projector | predictor]`,
//! the target's `[encoder | projector]`, so the EMA is one call over the target's length and
//! LARS walks one registry ([`Byol::registry`]: `encoder.conv1.weight`, …,
//! `projector.linear1.weight`, …, `predictor.bn.running_var`). BatchNorm running statistics
//! are separate flat buffers with the same order. Views are NHWC `[batch, h, w, 3]`.
//!
//! Memory: with a target network each loss term depends on one view's online pass, so the
//! step runs the target on both views first, then each view's online forward and backward in
//! turn, reusing one set of activation buffers. Without a target network (the paper's ablation
//! and SimCLR) ψ is the online projection with its gradient, so each term depends on both
//! views: both passes are kept (twice the activation memory). BatchNorm statistics are per
//! view, as in the official code.
//!
//! The paper's ablations are configuration: the projector's and predictor's depth, a learned,
//! closed-form ([`super::closed_form`]) or no predictor, no target network, and the loss
//! ([`super::objective`]: normalisation and the contrastive β term).

use super::closed_form;
use super::objective::{DirectionGrads, Objective};
use super::optimizer::Optimizer;
use crate::cpu::batchnorm::BnMode;
use crate::cpu::ema_update;
use crate::error::{check_len, Error, Result};
use crate::nn::mlp::{mlp_backward, mlp_forward, Mlp, MlpScratch};
use crate::nn::{Activations, Registry, ResNet, ResNetConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::ops::Range;

/// The predictor of the online network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredictorKind {
    /// BYOL's MLP, trained with the rest.
    Learned,
    /// The least-squares linear map on each batch (paper's appendix), no parameters.
    ClosedForm,
    /// No predictor: p = z (the paper's ablation).
    None,
}

/// How the target network starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetInit {
    /// From its own random seed, as the official code does.
    Independent,
    /// As a copy of the online network (byol-pytorch, solo-learn, lightly): the first
    /// steps regress onto the online network's own features, not onto an unrelated one.
    Copy,
}

impl std::str::FromStr for TargetInit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "independent" => Ok(TargetInit::Independent),
            "copy" => Ok(TargetInit::Copy),
            _ => Err(Error::InvalidArgument(format!(
                "target_init {s:?}: expected copy or independent"
            ))),
        }
    }
}

/// The shape of the BYOL networks and the loss they train with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ByolConfig {
    pub encoder: ResNetConfig,
    pub projector_hidden: usize,
    pub projection: usize,
    pub predictor_hidden: usize,
    /// Linear layers of the projector and the learned predictor (2 in the paper).
    pub projector_depth: usize,
    pub predictor_depth: usize,
    pub predictor: PredictorKind,
    /// Whether ψ comes from a target network; without one, ψ is the online projection and
    /// gets a gradient (SimCLR's side of the paper's ablation).
    pub target_network: bool,
    /// How the target starts (ignored without a target network).
    pub target_init: TargetInit,
    pub objective: Objective,
}

impl ByolConfig {
    /// BYOL as the paper trains it, with this encoder and these MLP sizes.
    pub fn byol(
        encoder: ResNetConfig,
        projector_hidden: usize,
        projection: usize,
        predictor_hidden: usize,
    ) -> Self {
        ByolConfig {
            encoder,
            projector_hidden,
            projection,
            predictor_hidden,
            projector_depth: 2,
            predictor_depth: 2,
            predictor: PredictorKind::Learned,
            target_network: true,
            target_init: TargetInit::Independent,
            objective: Objective::default(),
        }
    }
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
    /// AdamW's second moment (empty for LARS and SGD, which keep none).
    pub second_moment: Vec<f32>,
    /// Optimiser steps taken.
    pub step: u64,
}

/// Buffers a step needs, allocated once per batch shape. Per view: `z`, `p [batch,
/// projection]`, their gradients, the target projections and the closed-form map.
pub struct ByolWork {
    batch: usize,
    /// What an online pass keeps for its backward: one slot with a target network, two
    /// without (module docs).
    passes: Vec<OnlinePass>,
    z: [Vec<f32>; 2],
    p: [Vec<f32>; 2],
    target_z: [Vec<f32>; 2],
    grad_p: [Vec<f32>; 2],
    grad_z: [Vec<f32>; 2],
    /// `W*ᵀ [projection, projection]` of the closed-form predictor.
    predictor_wt: [Vec<f32>; 2],
    /// The learned predictor's input gradient, before it joins `grad_z`.
    grad_predictor_in: Vec<f32>,
    grad_repr: Vec<f32>,
    pub grads: Vec<f32>,
}

/// One online pass's saved state.
struct OnlinePass {
    acts: Activations,
    /// The encoder's output, kept here because the projector's backward needs it after
    /// `acts` has moved on.
    repr: Vec<f32>,
    projector: MlpScratch,
    predictor: Option<MlpScratch>,
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
            depth: config.projector_depth,
        };
        let predictor = (config.predictor == PredictorKind::Learned).then_some(Mlp {
            input: config.projection,
            hidden: config.predictor_hidden,
            output: config.projection,
            last_bias: false,
            depth: config.predictor_depth,
        });
        projector.validate()?;
        config.objective.validate()?;
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

    /// Parameters of the target network: `[encoder | projector]`, or none without one.
    pub fn target_len(&self) -> usize {
        if self.config.target_network {
            self.projector_params().end
        } else {
            0
        }
    }

    /// Projections `[n, projection]` of the representations `[n, repr_dim]` by the online
    /// projector in evaluation mode (running statistics, so each row is independent of the
    /// others and the result does not depend on how the rows are chunked).
    pub fn projections(&self, state: &ByolState, representations: &[f32]) -> Result<Vec<f32>> {
        let (p, dim) = (&self.projector, self.encoder.repr_dim());
        let n = representations.len() / dim;
        check_len("representations", representations.len(), n * dim)?;
        const CHUNK: usize = 1024; // bounds the hidden activations at CHUNK × hidden
        let mut running = state.online_running[self.projector_running()].to_vec();
        let weights = &state.online[self.projector_params()];
        let mut scratch = MlpScratch::new(p, CHUNK.min(n).max(1));
        let mut z = vec![0.0; n * p.output];
        for (x, z) in representations
            .chunks(CHUNK * dim)
            .zip(z.chunks_mut(CHUNK * p.output))
        {
            let m = x.len() / dim;
            let buffers = scratch.buffers();
            mlp_forward(p, weights, &mut running, x, m, BnMode::Eval, buffers, z);
        }
        Ok(z)
    }

    /// A fresh run: the online network from `seed`; the target from a different seed (as the
    /// official code does) or as a copy of the online network ([`TargetInit`]); momentum zero.
    pub fn init(&self, seed: u64) -> ByolState {
        let online = self.init_params(seed);
        let target = match self.config.target_init {
            TargetInit::Independent => self.init_params(seed ^ 0x9e37_79b9_7f4a_7c15),
            TargetInit::Copy => online.clone(),
        }[..self.target_len()]
            .to_vec();
        let mut running = self.encoder.init_running();
        running.extend(self.projector.init_running());
        running.extend(self.predictor.iter().flat_map(Mlp::init_running));
        let target_running = if self.config.target_network {
            running[..self.projector_running().end].to_vec()
        } else {
            Vec::new()
        };
        ByolState {
            momentum: vec![0.0; online.len()],
            second_moment: Vec::new(),
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
        if self.config.predictor == PredictorKind::ClosedForm {
            closed_form::check_shape(batch, proj)?;
        }
        let slots = if self.config.target_network { 1 } else { 2 };
        let passes = (0..slots)
            .map(|_| {
                Ok(OnlinePass {
                    acts: self.encoder.activations(batch, h, w)?,
                    repr: vec![0.0; batch * self.encoder.repr_dim()],
                    projector: MlpScratch::new(&self.projector, batch),
                    predictor: self.predictor.as_ref().map(|q| MlpScratch::new(q, batch)),
                })
            })
            .collect::<Result<_>>()?;
        let per_view = |len: usize| [vec![0.0; len], vec![0.0; len]];
        let wt_len = if self.config.predictor == PredictorKind::ClosedForm {
            proj * proj
        } else {
            0
        };
        Ok(ByolWork {
            batch,
            passes,
            z: per_view(batch * proj),
            p: per_view(batch * proj),
            target_z: per_view(if self.config.target_network {
                batch * proj
            } else {
                0
            }),
            grad_p: per_view(batch * proj),
            grad_z: per_view(batch * proj),
            predictor_wt: per_view(wt_len),
            grad_predictor_in: vec![0.0; batch * proj],
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
        let pass = &mut work.passes[0];
        let repr =
            self.encoder
                .forward(&state.target[enc], er, x, BnMode::Train, &mut pass.acts)?;
        let out = &mut work.target_z[view];
        let buffers = pass.projector.buffers();
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

    /// Online encoder and projector on `view` (its pass kept in `slot`): `z[view]`.
    fn project(
        &self,
        state: &mut ByolState,
        x: &[f32],
        view: usize,
        slot: usize,
        work: &mut ByolWork,
    ) -> Result<()> {
        let (enc, proj) = (self.encoder_params(), self.projector_params());
        let (enc_r, proj_r) = (self.encoder_running(), self.projector_running());
        let (er, rest) = state.online_running.split_at_mut(enc_r.end);
        let pass = &mut work.passes[slot];
        let out = self
            .encoder
            .forward(&state.online[enc], er, x, BnMode::Train, &mut pass.acts)?;
        pass.repr.copy_from_slice(out);
        mlp_forward(
            &self.projector,
            &state.online[proj],
            &mut rest[..proj_r.len()],
            &pass.repr,
            work.batch,
            BnMode::Train,
            pass.projector.buffers(),
            &mut work.z[view],
        );
        Ok(())
    }

    /// ψ of both views: the target's projections, or the online ones without a target
    /// network. (Fields, not the whole work, so callers can write other buffers meanwhile.)
    fn psi<'a>(&self, z: &'a [Vec<f32>; 2], target_z: &'a [Vec<f32>; 2]) -> &'a [Vec<f32>; 2] {
        if self.config.target_network {
            target_z
        } else {
            z
        }
    }

    /// The predictor on `z[view]`: `p[view]`.
    fn predict(
        &self,
        state: &mut ByolState,
        view: usize,
        slot: usize,
        work: &mut ByolWork,
    ) -> Result<()> {
        let (b, d) = (work.batch, self.config.projection);
        match self.config.predictor {
            PredictorKind::Learned => {
                let q = self.predictor.as_ref().expect("a learned predictor exists");
                let scratch = work.passes[slot].predictor.as_mut().expect("its scratch");
                let qr = &mut state.online_running[self.predictor_running()];
                mlp_forward(
                    q,
                    &state.online[self.predictor_params()],
                    qr,
                    &work.z[view],
                    b,
                    BnMode::Train,
                    scratch.buffers(),
                    &mut work.p[view],
                );
            }
            PredictorKind::ClosedForm => {
                let targets = &self.psi(&work.z, &work.target_z)[1 - view];
                let wt = &mut work.predictor_wt[view];
                closed_form::optimal_predictor(&work.z[view], targets, b, d, wt)?;
                closed_form::predict(wt, &work.z[view], b, d, &mut work.p[view]);
            }
            PredictorKind::None => work.p[view].copy_from_slice(&work.z[view]),
        }
        Ok(())
    }

    /// The loss of the direction whose anchors are `p[view]` (batch mean); writes
    /// `grad_p[view]`, and adds to `grad_z` of both views when ψ is the online projection.
    fn direction(&self, state: &ByolState, view: usize, work: &mut ByolWork) -> Result<f32> {
        let (b, d) = (work.batch, self.config.projection);
        let other = 1 - view;
        let [gz0, gz1] = &mut work.grad_z;
        let (same_grad, positive_grad) = if view == 0 { (gz0, gz1) } else { (gz1, gz0) };
        let online_psi = !self.config.target_network;
        let psi = self.psi(&work.z, &work.target_z);
        let loss = self.config.objective.direction(
            &work.p[view],
            &psi[other],
            &psi[view],
            b,
            d,
            DirectionGrads {
                anchors: &mut work.grad_p[view],
                positives: online_psi.then_some(&mut positive_grad[..]),
                same_view: online_psi.then_some(&mut same_grad[..]),
            },
        );
        if !loss.is_finite() {
            // Stop before the non-finite gradient reaches any parameter.
            return Err(Error::Diverged {
                step: state.step,
                loss,
            });
        }
        Ok(loss)
    }

    /// Backward of `view`'s online pass (kept in `slot`) from `grad_p[view]` and
    /// `grad_z[view]`; parameter gradients accumulate into `work.grads`.
    fn online_backward(
        &self,
        state: &ByolState,
        x: &[f32],
        view: usize,
        slot: usize,
        work: &mut ByolWork,
    ) -> Result<()> {
        let (enc, proj, pred) = (
            self.encoder_params(),
            self.projector_params(),
            self.predictor_params(),
        );
        let (b, d) = (work.batch, self.config.projection);
        let online = &state.online;
        let (genc, rest) = work.grads.split_at_mut(enc.end);
        let (gproj, gpred) = rest.split_at_mut(proj.len());
        let pass = &mut work.passes[slot];
        let grad_z = &mut work.grad_z[view];
        match self.config.predictor {
            PredictorKind::Learned => {
                let q = self.predictor.as_ref().expect("a learned predictor exists");
                let scratch = pass.predictor.as_mut().expect("its scratch");
                let gin = &mut work.grad_predictor_in;
                mlp_backward(
                    q,
                    &online[pred],
                    &work.z[view],
                    b,
                    scratch.buffers(),
                    &work.grad_p[view],
                    gpred,
                    gin,
                );
                grad_z.iter_mut().zip(gin.iter()).for_each(|(g, v)| *g += v);
            }
            PredictorKind::ClosedForm => {
                let wt = &work.predictor_wt[view];
                closed_form::predict_backward(wt, &work.grad_p[view], b, d, grad_z);
            }
            PredictorKind::None => {
                let gp = &work.grad_p[view];
                grad_z.iter_mut().zip(gp).for_each(|(g, v)| *g += v);
            }
        }
        mlp_backward(
            &self.projector,
            &online[proj],
            &pass.repr,
            b,
            pass.projector.buffers(),
            grad_z,
            gproj,
            &mut work.grad_repr,
        );
        self.encoder
            .backward(&online[enc], x, &mut pass.acts, &work.grad_repr, genc, None)
    }

    /// One BYOL step on views `v1 = t(x)`, `v2 = t′(x)`: the gradient of
    /// `L(v1→v2) + L(v2→v1)`, an optimiser step (LARS in the paper) at learning rate `lr`
    /// (times `lr_mult` for the projector and predictor), then the target's EMA with decay
    /// `tau` (nothing to do without a target network).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        state: &mut ByolState,
        work: &mut ByolWork,
        views: [&[f32]; 2],
        lr: f32,
        tau: f32,
        optimizer: &Optimizer,
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
            self.target_len(),
        )?;
        work.grads.fill(0.0);
        let loss = if self.config.target_network {
            // Target projections of both views (no gradient), then one view's online pass
            // at a time: forward, its loss term, backward.
            for (view, x) in views.iter().enumerate() {
                self.target_projection(state, x, work, view)?;
            }
            let mut loss = 0.0;
            for (view, x) in views.iter().enumerate() {
                self.project(state, x, view, 0, work)?;
                self.predict(state, view, 0, work)?;
                work.grad_z[view].fill(0.0);
                loss += self.direction(state, view, work)?;
                self.online_backward(state, x, view, 0, work)?;
            }
            loss
        } else {
            // ψ is online: both passes first, then both terms, then both backwards.
            for (view, x) in views.iter().enumerate() {
                self.project(state, x, view, view, work)?;
            }
            for view in 0..2 {
                self.predict(state, view, view, work)?;
                work.grad_z[view].fill(0.0);
            }
            let loss = self.direction(state, 0, work)? + self.direction(state, 1, work)?;
            for (view, x) in views.iter().enumerate() {
                self.online_backward(state, x, view, view, work)?;
            }
            loss
        };
        // LARS (or the configured optimiser) on every online parameter, then the EMA of the
        // whole target in one call.
        if optimizer.needs_second_moment() && state.second_moment.len() != state.online.len() {
            state.second_moment = vec![0.0; state.online.len()];
        }
        optimizer.step(
            &self.registry.params,
            &mut state.online,
            &work.grads,
            &mut state.momentum,
            &mut state.second_moment,
            state.step + 1,
            lr,
            |p| self.lr_multiplier(p, lr_mult),
        );
        let shared = self.target_len();
        ema_update(&mut state.target, &state.online[..shared], tau);
        state.step += 1;
        Ok(StepReport { loss })
    }
}

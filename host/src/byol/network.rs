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
//! ([`Objective`]: normalisation and the contrastive β term).
//!
//! Everything runs on the backend `B` the networks were built for ([`Byol::on`]); the state
//! is the backend's buffers ([`ByolState::to_backend`], [`ByolState::to_host`] for
//! checkpoints).

use super::closed_form;
use crate::backend::cpu::Cpu;
use crate::backend::{
    Backend, BnMode, DirectionGrads, Objective, Optimizer, OptimizerState, TensorStep,
};
use crate::error::{check_len, Error, Result};
use crate::nn::mlp::{Mlp, MlpAt, MlpSaved, SimplicialEmbedding};
use crate::nn::{Activations, Registry, ResNet, ResNetConfig, WeightInit};
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
    /// byol-pytorch's simplicial embedding in front of the projector, or none (the paper's).
    pub projector_embedding: Option<SimplicialEmbedding>,
    pub predictor: PredictorKind,
    /// Whether ψ comes from a target network; without one, ψ is the online projection and
    /// gets a gradient (SimCLR's side of the paper's ablation).
    pub target_network: bool,
    /// How the target starts (ignored without a target network).
    pub target_init: TargetInit,
    /// How the weights of a fresh network are drawn.
    pub init: WeightInit,
    /// The first stage (1–4) whose residual blocks start as their shortcuts (their last
    /// BatchNorm's γ = 0), or `None`: every branch as drawn.
    pub zero_residual_from_stage: Option<usize>,
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
            projector_embedding: None,
            predictor: PredictorKind::Learned,
            target_network: true,
            target_init: TargetInit::Independent,
            init: WeightInit::Torchvision,
            zero_residual_from_stage: None,
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

/// Structure and layout of the online and target networks (parameters live in [`ByolState`]),
/// and the backend they run on.
pub struct Byol<B: Backend = Cpu> {
    pub backend: B,
    pub config: ByolConfig,
    pub encoder: ResNet,
    pub projector: Mlp,
    /// `None` when the configuration removes it.
    pub predictor: Option<Mlp>,
    /// Every online parameter and running buffer, in buffer order.
    pub registry: Registry,
}

/// Parameters and optimiser state of one run, in the backend's buffers (host vectors for
/// [`Cpu`], the checkpoint's form).
pub struct ByolState<B: Backend = Cpu> {
    pub online: B::Buffer,
    pub target: B::Buffer,
    pub online_running: B::Buffer,
    pub target_running: B::Buffer,
    pub momentum: B::Buffer,
    /// AdamW's second moment (empty for LARS and SGD, which keep none).
    pub second_moment: B::Buffer,
    /// Optimiser steps taken.
    pub step: u64,
}

impl Clone for ByolState<Cpu> {
    fn clone(&self) -> Self {
        ByolState {
            online: self.online.clone(),
            target: self.target.clone(),
            online_running: self.online_running.clone(),
            target_running: self.target_running.clone(),
            momentum: self.momentum.clone(),
            second_moment: self.second_moment.clone(),
            step: self.step,
        }
    }
}

impl PartialEq for ByolState<Cpu> {
    fn eq(&self, other: &Self) -> bool {
        self.online == other.online
            && self.target == other.target
            && self.online_running == other.online_running
            && self.target_running == other.target_running
            && self.momentum == other.momentum
            && self.second_moment == other.second_moment
            && self.step == other.step
    }
}

impl std::fmt::Debug for ByolState<Cpu> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByolState")
            .field("online", &self.online.len())
            .field("target", &self.target.len())
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl ByolState<Cpu> {
    /// This state on backend `be`.
    pub fn to_backend<B: Backend>(&self, be: &B) -> Result<ByolState<B>> {
        Ok(ByolState {
            online: be.upload(&self.online)?,
            target: be.upload(&self.target)?,
            online_running: be.upload(&self.online_running)?,
            target_running: be.upload(&self.target_running)?,
            momentum: be.upload(&self.momentum)?,
            second_moment: be.upload(&self.second_moment)?,
            step: self.step,
        })
    }
}

impl<B: Backend> ByolState<B> {
    /// This state in host memory (for checkpoints).
    pub fn to_host(&self, be: &B) -> Result<ByolState<Cpu>> {
        Ok(ByolState {
            online: be.download(&self.online)?,
            target: be.download(&self.target)?,
            online_running: be.download(&self.online_running)?,
            target_running: be.download(&self.target_running)?,
            momentum: be.download(&self.momentum)?,
            second_moment: be.download(&self.second_moment)?,
            step: self.step,
        })
    }
}

/// Buffers a step needs, allocated once per batch shape. Per view: `z`, `p [batch,
/// projection]`, their gradients, the target projections and the closed-form map.
pub struct ByolWork<B: Backend = Cpu> {
    batch: usize,
    /// What an online pass keeps for its backward: one slot with a target network, two
    /// without (module docs).
    passes: Vec<OnlinePass<B>>,
    z: [B::Buffer; 2],
    p: [B::Buffer; 2],
    target_z: [B::Buffer; 2],
    grad_p: [B::Buffer; 2],
    grad_z: [B::Buffer; 2],
    /// `W*ᵀ [projection, projection]` of the closed-form predictor.
    predictor_wt: [B::Buffer; 2],
    /// The learned predictor's input gradient, before it joins `grad_z`.
    grad_predictor_in: B::Buffer,
    grad_repr: B::Buffer,
    pub grads: B::Buffer,
}

/// One online pass's saved state.
struct OnlinePass<B: Backend> {
    acts: Activations<B>,
    /// The encoder's output, kept here because the projector's backward needs it after
    /// `acts` has moved on.
    repr: B::Buffer,
    projector: MlpSaved<B>,
    predictor: Option<MlpSaved<B>>,
}

/// What one step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// `L(v→v′) + L(v′→v)`, each a batch mean.
    pub loss: f32,
}

impl Byol<Cpu> {
    /// The networks on the CPU.
    pub fn new(config: ByolConfig) -> Result<Self> {
        Byol::on(Cpu, config)
    }
}

impl<B: Backend> Byol<B> {
    /// The networks on backend `backend`.
    pub fn on(backend: B, config: ByolConfig) -> Result<Self> {
        let encoder = ResNet::new(config.encoder)?;
        let projector = Mlp {
            input: encoder.repr_dim(),
            hidden: config.projector_hidden,
            output: config.projection,
            last_bias: false,
            depth: config.projector_depth,
            embedding: config.projector_embedding,
        };
        let predictor = (config.predictor == PredictorKind::Learned).then_some(Mlp {
            input: config.projection,
            hidden: config.predictor_hidden,
            output: config.projection,
            last_bias: false,
            depth: config.predictor_depth,
            embedding: None,
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
            backend,
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
    /// Where the projector and the predictor sit in the flat buffers.
    fn projector_at(&self) -> MlpAt {
        MlpAt {
            params: self.projector_params().start,
            running: self.projector_running().start,
        }
    }
    fn predictor_at(&self) -> MlpAt {
        MlpAt {
            params: self.predictor_params().start,
            running: self.predictor_running().start,
        }
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
    pub fn projections(&self, state: &ByolState<B>, representations: &[f32]) -> Result<Vec<f32>> {
        let (be, p, dim) = (&self.backend, &self.projector, self.encoder.repr_dim());
        let n = representations.len() / dim;
        check_len("representations", representations.len(), n * dim)?;
        const CHUNK: usize = 1024; // bounds the hidden activations at CHUNK × hidden
                                   // Evaluation mode reads the running statistics and leaves them as they are; a copy
                                   // keeps the state untouched all the same.
        let mut running = be.upload(&be.download(&state.online_running)?)?;
        let mut z = Vec::with_capacity(n * p.output);
        for x in representations.chunks(CHUNK * dim) {
            let m = x.len() / dim;
            let mut saved = p.saved(be, m)?;
            let mut out = be.zeros(m * p.output)?;
            let x = be.upload(x)?;
            let (at, params) = (self.projector_at(), &state.online);
            p.forward(
                be,
                at,
                params,
                &mut running,
                &x,
                BnMode::Eval,
                &mut saved,
                &mut out,
            )?;
            z.extend(be.download(&out)?);
        }
        Ok(z)
    }

    /// A fresh run, in host memory: the online network from `seed`; the target from a
    /// different seed (as the official code does) or as a copy of the online network
    /// ([`TargetInit`]); momentum zero. [`ByolState::to_backend`] moves it to a device.
    pub fn init(&self, seed: u64) -> ByolState<Cpu> {
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
        let init = self.config.init;
        let mut p = self.encoder.init_params(init, &mut rng);
        if let Some(stage) = self.config.zero_residual_from_stage {
            self.encoder.zero_residual_gammas(&mut p, stage);
        }
        p.extend(self.projector.init_params(init, &mut rng));
        if let Some(q) = &self.predictor {
            p.extend(q.init_params(init, &mut rng));
        }
        p
    }

    /// Buffers for batches of `batch` images of `h × w`.
    pub fn work(&self, batch: usize, h: usize, w: usize) -> Result<ByolWork<B>> {
        let (be, proj) = (&self.backend, self.config.projection);
        if self.config.predictor == PredictorKind::ClosedForm {
            closed_form::check_shape(batch, proj)?;
        }
        let slots = if self.config.target_network { 1 } else { 2 };
        let passes = (0..slots)
            .map(|_| {
                Ok(OnlinePass {
                    acts: self.encoder.activations(be, batch, h, w)?,
                    repr: be.zeros(batch * self.encoder.repr_dim())?,
                    projector: self.projector.saved(be, batch)?,
                    predictor: match &self.predictor {
                        Some(q) => Some(q.saved(be, batch)?),
                        None => None,
                    },
                })
            })
            .collect::<Result<_>>()?;
        let per_view =
            |len: usize| -> Result<[B::Buffer; 2]> { Ok([be.zeros(len)?, be.zeros(len)?]) };
        let wt_len = if self.config.predictor == PredictorKind::ClosedForm {
            proj * proj
        } else {
            0
        };
        let target_len = if self.config.target_network {
            batch * proj
        } else {
            0
        };
        Ok(ByolWork {
            batch,
            passes,
            z: per_view(batch * proj)?,
            p: per_view(batch * proj)?,
            target_z: per_view(target_len)?,
            grad_p: per_view(batch * proj)?,
            grad_z: per_view(batch * proj)?,
            predictor_wt: per_view(wt_len)?,
            grad_predictor_in: be.zeros(batch * proj)?,
            grad_repr: be.zeros(batch * self.encoder.repr_dim())?,
            grads: be.zeros(self.registry.param_len())?,
        })
    }

    /// Target projection `g_ξ(f_ξ(x))`, training-mode BatchNorm as in the official code.
    fn target_projection(
        &self,
        state: &mut ByolState<B>,
        x: &B::Buffer,
        work: &mut ByolWork<B>,
        view: usize,
    ) -> Result<()> {
        let be = &self.backend;
        let pass = &mut work.passes[0];
        let (target, running) = (&state.target, &mut state.target_running);
        self.encoder
            .forward(be, target, running, x, BnMode::Train, &mut pass.acts)?;
        let repr = pass.acts.representation();
        let (at, out) = (self.projector_at(), &mut work.target_z[view]);
        let saved = &mut pass.projector;
        self.projector
            .forward(be, at, target, running, repr, BnMode::Train, saved, out)
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
        state: &mut ByolState<B>,
        x: &B::Buffer,
        view: usize,
        slot: usize,
        work: &mut ByolWork<B>,
    ) -> Result<()> {
        let be = &self.backend;
        let (online, running) = (&state.online, &mut state.online_running);
        let pass = &mut work.passes[slot];
        self.encoder
            .forward(be, online, running, x, BnMode::Train, &mut pass.acts)?;
        let repr = pass.acts.representation();
        be.copy(repr, 0..B::len(repr), &mut pass.repr, 0)?;
        let (at, out) = (self.projector_at(), &mut work.z[view]);
        let saved = &mut pass.projector;
        self.projector.forward(
            be,
            at,
            online,
            running,
            &pass.repr,
            BnMode::Train,
            saved,
            out,
        )
    }

    /// ψ of both views: the target's projections, or the online ones without a target
    /// network. (Fields, not the whole work, so callers can write other buffers meanwhile.)
    fn psi<'a>(&self, z: &'a [B::Buffer; 2], target_z: &'a [B::Buffer; 2]) -> &'a [B::Buffer; 2] {
        if self.config.target_network {
            target_z
        } else {
            z
        }
    }

    /// The predictor on `z[view]`: `p[view]`.
    fn predict(
        &self,
        state: &mut ByolState<B>,
        view: usize,
        slot: usize,
        work: &mut ByolWork<B>,
    ) -> Result<()> {
        let (be, b, d) = (&self.backend, work.batch, self.config.projection);
        match self.config.predictor {
            PredictorKind::Learned => {
                let q = self.predictor.as_ref().expect("a learned predictor exists");
                let saved = work.passes[slot].predictor.as_mut().expect("its buffers");
                let (online, running) = (&state.online, &mut state.online_running);
                let (z, p) = (&work.z[view], &mut work.p[view]);
                q.forward(
                    be,
                    self.predictor_at(),
                    online,
                    running,
                    z,
                    BnMode::Train,
                    saved,
                    p,
                )
            }
            PredictorKind::ClosedForm => {
                let targets = &self.psi(&work.z, &work.target_z)[1 - view];
                let wt = &mut work.predictor_wt[view];
                closed_form::optimal_predictor(be, &work.z[view], targets, b, d, wt)?;
                closed_form::predict(be, wt, &work.z[view], b, d, &mut work.p[view])
            }
            PredictorKind::None => be.copy(&work.z[view], 0..b * d, &mut work.p[view], 0),
        }
    }

    /// The loss of the direction whose anchors are `p[view]` (batch mean); writes
    /// `grad_p[view]`, and adds to `grad_z` of both views when ψ is the online projection.
    fn direction(&self, state: &ByolState<B>, view: usize, work: &mut ByolWork<B>) -> Result<f32> {
        let (b, d) = (work.batch, self.config.projection);
        let other = 1 - view;
        let [gz0, gz1] = &mut work.grad_z;
        let (same_grad, positive_grad) = if view == 0 { (gz0, gz1) } else { (gz1, gz0) };
        let online_psi = !self.config.target_network;
        let psi = self.psi(&work.z, &work.target_z);
        let loss = self.backend.objective_direction(
            &self.config.objective,
            &work.p[view],
            &psi[other],
            &psi[view],
            b,
            d,
            DirectionGrads {
                anchors: &mut work.grad_p[view],
                positives: online_psi.then_some(positive_grad),
                same_view: online_psi.then_some(same_grad),
            },
        )?;
        if !loss.is_finite() {
            // Stop before the non-finite gradient reaches any parameter.
            return Err(Error::Diverged {
                step: state.step,
                cause: format!("the loss is {loss}"),
            });
        }
        Ok(loss)
    }

    /// Backward of `view`'s online pass (kept in `slot`) from `grad_p[view]` and
    /// `grad_z[view]`; parameter gradients accumulate into `work.grads`.
    fn online_backward(
        &self,
        state: &ByolState<B>,
        x: &B::Buffer,
        view: usize,
        slot: usize,
        work: &mut ByolWork<B>,
    ) -> Result<()> {
        let (be, b, d) = (&self.backend, work.batch, self.config.projection);
        let online = &state.online;
        let grads = &mut work.grads;
        let pass = &mut work.passes[slot];
        let grad_z = &mut work.grad_z[view];
        match self.config.predictor {
            PredictorKind::Learned => {
                let q = self.predictor.as_ref().expect("a learned predictor exists");
                let saved = pass.predictor.as_mut().expect("its buffers");
                let gin = &mut work.grad_predictor_in;
                let (z, gp) = (&work.z[view], &work.grad_p[view]);
                q.backward(be, self.predictor_at(), online, z, saved, gp, grads, gin)?;
                be.add_assign(grad_z, gin, b * d)?;
            }
            PredictorKind::ClosedForm => {
                let wt = &work.predictor_wt[view];
                closed_form::predict_backward(be, wt, &work.grad_p[view], b, d, grad_z)?;
            }
            PredictorKind::None => be.add_assign(grad_z, &work.grad_p[view], b * d)?,
        }
        let at = self.projector_at();
        let (saved, gr) = (&mut pass.projector, &mut work.grad_repr);
        self.projector
            .backward(be, at, online, &pass.repr, saved, grad_z, grads, gr)?;
        self.encoder
            .backward(be, online, x, &mut pass.acts, &work.grad_repr, grads, None)
    }

    /// One BYOL step on views `v1 = t(x)`, `v2 = t′(x)`: the gradient of
    /// `L(v1→v2) + L(v2→v1)`, an optimiser step (LARS in the paper) at learning rate `lr`
    /// (times `lr_mult` for the projector and predictor), then the target's EMA with decay
    /// `tau` (nothing to do without a target network).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        state: &mut ByolState<B>,
        work: &mut ByolWork<B>,
        views: [&B::Buffer; 2],
        lr: f32,
        tau: f32,
        optimizer: &Optimizer,
        lr_mult: LrMultipliers,
    ) -> Result<StepReport> {
        let be = &self.backend;
        check_len(
            "BYOL online parameters",
            B::len(&state.online),
            self.registry.param_len(),
        )?;
        check_len(
            "BYOL target parameters",
            B::len(&state.target),
            self.target_len(),
        )?;
        be.fill_zero(&mut work.grads)?;
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
                be.fill_zero(&mut work.grad_z[view])?;
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
                be.fill_zero(&mut work.grad_z[view])?;
            }
            let loss = self.direction(state, 0, work)? + self.direction(state, 1, work)?;
            for (view, x) in views.iter().enumerate() {
                self.online_backward(state, x, view, view, work)?;
            }
            loss
        };
        // In a data-parallel run, the gradient averaged over the replicas (one process: as
        // it is). Then LARS (or the configured optimiser) on every online parameter, and the
        // EMA of the whole target in one call.
        be.average_over_replicas(&mut work.grads)?;
        let len = B::len(&state.online);
        if !be.all_finite(&work.grads, len)? {
            // Without normalisation the loss can stay finite while its gradient overflows
            // (the `normalisation` study's `none` run, step 62): stop before it reaches
            // any parameter, as for a non-finite loss.
            return Err(Error::Diverged {
                step: state.step,
                cause: format!("the gradient is not finite (the loss is {loss})"),
            });
        }
        if optimizer.needs_second_moment() && B::len(&state.second_moment) != len {
            state.second_moment = be.zeros(len)?;
        }
        let tensors: Vec<TensorStep> = self
            .registry
            .params
            .iter()
            .map(|p| TensorStep {
                range: p.range.clone(),
                plain: p.role.is_bias_or_bn(),
                lr_scale: self.lr_multiplier(p, lr_mult),
            })
            .collect();
        let opt_state = OptimizerState {
            params: &mut state.online,
            momentum: &mut state.momentum,
            second_moment: &mut state.second_moment,
        };
        be.optimizer_step(
            optimizer,
            &tensors,
            opt_state,
            &work.grads,
            state.step + 1,
            lr,
        )?;
        be.ema_update(&mut state.target, &state.online, tau)?;
        state.step += 1;
        Ok(StepReport { loss })
    }
}

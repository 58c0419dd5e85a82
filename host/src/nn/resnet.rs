//! ResNet-18/34 (basic blocks) and ResNet-50 (bottleneck blocks) with torchvision's structure
//! and parameter names, as the BYOL encoder: the output is the globally average-pooled
//! representation (512·width/64 for ResNet-18/34, 2048·width/64 for ResNet-50), no classifier.
//!
//! Layouts: images and activations NHWC, `[n, h, w, c]`. The network is a list of conv+BN
//! units (each a [`Conv2d`] followed by a BatchNorm, with a ReLU except on downsample paths);
//! a block's last BatchNorm adds the residual before its ReLU, in the same pass. Parameters,
//! their gradients and the running statistics are flat buffers laid out by [`Registry`] (the
//! encoder's part of a BYOL network's buffers starts at 0, so those buffers serve as they are);
//! what a forward keeps for its backward lives in [`Activations`], allocated once per input
//! shape and reused. Forward and backward run on any backend.

use super::registry::{Registry, Role};
use super::{truncated_normal, WeightInit};
use crate::backend::cpu::Cpu;
use crate::backend::{need, Backend, BatchNorm, BnMode, Conv2d, ConvGeometry, ConvOp};
use crate::error::{check_len, Error, Result};
use rand::Rng;
use rand_distr::{Distribution, Normal};
use std::ops::Range;

/// Depth and block type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    ResNet18,
    ResNet34,
    ResNet50,
}

impl Arch {
    fn blocks_per_stage(self) -> [usize; 4] {
        match self {
            Arch::ResNet18 => [2, 2, 2, 2],
            Arch::ResNet34 | Arch::ResNet50 => [3, 4, 6, 3],
        }
    }
    /// Output channels of a block over its `planes`: 1 (basic) or 4 (bottleneck).
    fn expansion(self) -> usize {
        if self == Arch::ResNet50 {
            4
        } else {
            1
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
            Arch::ResNet50 => "resnet50",
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "resnet18" => Ok(Arch::ResNet18),
            "resnet34" => Ok(Arch::ResNet34),
            "resnet50" => Ok(Arch::ResNet50),
            _ => Err(Error::InvalidArgument(format!(
                "unknown architecture {s:?}: expected resnet18, resnet34 or resnet50"
            ))),
        }
    }
}

/// The first layers: ImageNet's 7×7 stride-2 convolution and 3×3 stride-2 max-pool, or the
/// CIFAR variant's 3×3 stride-1 convolution without max-pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    ImageNet,
    Cifar,
}

/// A ResNet's shape. `width` is the channel count of the first stage (torchvision: 64); every
/// stage scales with it, for small CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    pub arch: Arch,
    pub stem: Stem,
    pub width: usize,
    pub in_channels: usize,
}

impl ResNetConfig {
    pub fn new(arch: Arch, stem: Stem) -> Self {
        ResNetConfig {
            arch,
            stem,
            width: 64,
            in_channels: 3,
        }
    }
}

/// One convolution and the BatchNorm after it.
#[derive(Clone, Debug)]
struct Unit {
    conv: Conv2d,
    relu: bool,
    weight: Range<usize>,
    gamma: Range<usize>,
    beta: Range<usize>,
    running_mean: Range<usize>,
    running_var: Range<usize>,
}

/// A residual block: its stage (1–4, torchvision's `layer1`–`layer4`), its units in order (the
/// last one adds the residual), and the downsample unit when the shortcut needs one.
#[derive(Clone, Debug)]
struct Block {
    stage: usize,
    units: Vec<usize>,
    downsample: Option<usize>,
}

/// Where a unit reads its input.
#[derive(Clone, Copy, Debug)]
enum Source {
    Image,
    MaxPool,
    Unit(usize),
}

/// A ResNet's structure and parameter layout. Parameters live outside it, so one structure
/// serves the online and the target network.
#[derive(Clone, Debug)]
pub struct ResNet {
    pub config: ResNetConfig,
    pub registry: Registry,
    units: Vec<Unit>,
    blocks: Vec<Block>,
}

/// What a forward keeps for the backward, and the backward's scratch; for one input shape on
/// one backend.
pub struct Activations<B: Backend> {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    /// Per unit: input height and width, output height and width.
    dims: Vec<[usize; 4]>,
    /// Per unit: convolution output (before BN) and unit output (after BN, residual, ReLU).
    pre: Vec<B::Buffer>,
    out: Vec<B::Buffer>,
    /// Per unit: batch mean then `1/√(var + ε)` of each channel.
    stats: Vec<B::Buffer>,
    pool: B::Buffer,
    argmax: B::Indices,
    repr: B::Buffer,
    workspace: B::ConvWorkspace,
    /// The backward's three gradient buffers (out of the struct while it runs).
    grad: Option<[B::Buffer; 3]>,
    mode: Option<BnMode>,
}

impl<B: Backend> Activations<B> {
    /// The pooled representation `[n, repr_dim]` of the last forward.
    pub fn representation(&self) -> &B::Buffer {
        &self.repr
    }
}

impl Activations<Cpu> {
    /// Every ReLU and max-pool decision of the last forward, as bits (for tests that must
    /// know whether a perturbation crossed a kink).
    pub fn relu_pattern(&self) -> Vec<u64> {
        let bits = self
            .out
            .iter()
            .flatten()
            .map(|&v| v > 0.0)
            .chain(self.argmax.iter().map(|&i| i % 2 == 1));
        let mut words = Vec::new();
        for (i, b) in bits.enumerate() {
            if i % 64 == 0 {
                words.push(0u64);
            }
            *words.last_mut().unwrap() |= (b as u64) << (i % 64);
        }
        words.extend(self.argmax.iter().map(|&i| i as u64));
        words
    }
}

impl ResNet {
    pub fn new(config: ResNetConfig) -> Result<Self> {
        if config.width == 0 || config.in_channels == 0 {
            return Err(Error::InvalidArgument(format!(
                "ResNet width and input channels must be positive, got width {} and {} input channels",
                config.width, config.in_channels
            )));
        }
        let mut net = ResNet {
            config,
            registry: Registry::default(),
            units: Vec::new(),
            blocks: Vec::new(),
        };
        let (k, stride, pad) = match config.stem {
            Stem::ImageNet => (7, 2, 3),
            Stem::Cifar => (3, 1, 1),
        };
        let w = config.width;
        net.add_unit(
            "conv1",
            "bn1",
            Conv2d::new(config.in_channels, w, k, stride, pad),
            true,
        );
        let (expansion, mut inplanes) = (config.arch.expansion(), w);
        for (stage, &count) in config.arch.blocks_per_stage().iter().enumerate() {
            let planes = w << stage;
            for b in 0..count {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                let p = format!("layer{}.{b}", stage + 1);
                let unit = |i: usize| (format!("{p}.conv{i}"), format!("{p}.bn{i}"));
                let mut units = Vec::new();
                let convs = if expansion == 1 {
                    vec![
                        Conv2d::new(inplanes, planes, 3, stride, 1),
                        Conv2d::new(planes, planes, 3, 1, 1),
                    ]
                } else {
                    // torchvision's ResNet v1.5: the stride sits on the 3×3 convolution.
                    vec![
                        Conv2d::new(inplanes, planes, 1, 1, 0),
                        Conv2d::new(planes, planes, 3, stride, 1),
                        Conv2d::new(planes, planes * expansion, 1, 1, 0),
                    ]
                };
                for (i, conv) in convs.into_iter().enumerate() {
                    let (cn, bn) = unit(i + 1);
                    units.push(net.add_unit(&cn, &bn, conv, true));
                }
                let downsample = (stride != 1 || inplanes != planes * expansion).then(|| {
                    let conv = Conv2d::new(inplanes, planes * expansion, 1, stride, 0);
                    net.add_unit(
                        &format!("{p}.downsample.0"),
                        &format!("{p}.downsample.1"),
                        conv,
                        false,
                    )
                });
                net.blocks.push(Block {
                    stage: stage + 1,
                    units,
                    downsample,
                });
                inplanes = planes * expansion;
            }
        }
        Ok(net)
    }

    fn add_unit(&mut self, conv_name: &str, bn_name: &str, conv: Conv2d, relu: bool) -> usize {
        let r = &mut self.registry;
        let weight = r.add_param(
            format!("{conv_name}.weight"),
            vec![conv.cout, conv.cin, conv.k, conv.k],
            Role::ConvWeight,
        );
        let gamma = r.add_param(format!("{bn_name}.weight"), vec![conv.cout], Role::BnWeight);
        let beta = r.add_param(format!("{bn_name}.bias"), vec![conv.cout], Role::BnBias);
        let running_mean = r.add_buffer(format!("{bn_name}.running_mean"), vec![conv.cout]);
        let running_var = r.add_buffer(format!("{bn_name}.running_var"), vec![conv.cout]);
        self.units.push(Unit {
            conv,
            relu,
            weight,
            gamma,
            beta,
            running_mean,
            running_var,
        });
        self.units.len() - 1
    }

    /// Size of the representation: the last stage's output channels.
    pub fn repr_dim(&self) -> usize {
        self.units[self
            .blocks
            .last()
            .expect("a ResNet has blocks")
            .units
            .last()
            .copied()
            .unwrap()]
        .conv
        .cout
    }

    /// Fresh parameters drawn as `init` says ([`WeightInit`]); BatchNorm β = 0. torchvision:
    /// convolutions `N(0, 2 / (cout·k·k))`, γ = 1. Official: convolutions `N(0, 1 / (cin·k·k))`
    /// truncated at ±2σ, γ = 1 except 0 on the last unit of each bottleneck block.
    pub fn init_params(&self, init: WeightInit, rng: &mut impl Rng) -> Vec<f32> {
        let mut p = vec![0.0f32; self.registry.param_len()];
        for u in &self.units {
            let Conv2d { cin, cout, k, .. } = u.conv;
            let weights = &mut p[u.weight.clone()];
            match init {
                WeightInit::Torchvision => {
                    let normal =
                        Normal::new(0.0, (2.0 / (cout * k * k) as f32).sqrt()).expect("finite std");
                    weights.iter_mut().for_each(|v| *v = normal.sample(rng));
                }
                WeightInit::Official => {
                    let std = (1.0 / (cin * k * k) as f32).sqrt();
                    weights
                        .iter_mut()
                        .for_each(|v| *v = truncated_normal(rng, std));
                }
            }
            p[u.gamma.clone()].fill(1.0);
        }
        if init == WeightInit::Official && self.config.arch.expansion() > 1 {
            self.zero_residual_gammas(&mut p, 1);
        }
        p
    }

    /// Sets γ = 0 on the BatchNorm that closes the residual branch of each block in stage
    /// `first_stage` (1–4) and after, so that those blocks start as their shortcuts (Goyal et
    /// al. 2017; torchvision's `zero_init_residual` is `first_stage` 1).
    pub fn zero_residual_gammas(&self, params: &mut [f32], first_stage: usize) {
        for block in self.blocks.iter().filter(|b| b.stage >= first_stage) {
            let last = *block.units.last().expect("a block has units");
            params[self.units[last].gamma.clone()].fill(0.0);
        }
    }

    /// Running statistics at construction: mean 0, variance 1.
    pub fn init_running(&self) -> Vec<f32> {
        let mut r = vec![0.0f32; self.registry.buffer_len()];
        for u in &self.units {
            r[u.running_var.clone()].fill(1.0);
        }
        r
    }

    /// Whether the stem has a max-pool.
    fn has_maxpool(&self) -> bool {
        self.config.stem == Stem::ImageNet
    }

    fn maxpool_geometry(&self, h: usize, w: usize) -> ConvGeometry {
        ConvGeometry {
            h,
            w,
            cin: self.config.width,
            k: 3,
            stride: 2,
            pad: 1,
        }
    }

    /// Buffers for inputs of `n` images of `h × w`. Errors when the image is too small for
    /// the network (some layer would have no pixel left).
    pub fn activations<B: Backend>(
        &self,
        be: &B,
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<Activations<B>> {
        if n == 0 {
            return Err(Error::InvalidArgument(
                "a batch needs at least one image".into(),
            ));
        }
        let mut dims = vec![[0usize; 4]; self.units.len()];
        let too_small = |what: &str| {
            Error::InvalidArgument(format!(
                "input {h}×{w} is too small for {} with the {:?} stem: {what} would have no pixel left",
                self.config.arch.name(),
                self.config.stem
            ))
        };
        let g = self.units[0].conv.geometry(h, w);
        dims[0] = [h, w, g.out_h(), g.out_w()];
        if g.out_h() == 0 || g.out_w() == 0 {
            return Err(too_small("conv1"));
        }
        let (mut ch, mut cw) = (g.out_h(), g.out_w());
        let pool_len = if self.has_maxpool() {
            let pg = self.maxpool_geometry(ch, cw);
            (ch, cw) = (pg.out_h(), pg.out_w());
            if ch == 0 || cw == 0 {
                return Err(too_small("the max-pool"));
            }
            n * ch * cw * self.config.width
        } else {
            0
        };
        for (bi, block) in self.blocks.iter().enumerate() {
            let (bh, bw) = (ch, cw);
            for &u in block.units.iter().chain(&block.downsample) {
                let (ih, iw) = if Some(u) == block.downsample || u == block.units[0] {
                    (bh, bw)
                } else {
                    (ch, cw)
                };
                let g = self.units[u].conv.geometry(ih, iw);
                if g.out_h() == 0 || g.out_w() == 0 {
                    return Err(too_small(&format!("block {bi}")));
                }
                dims[u] = [ih, iw, g.out_h(), g.out_w()];
                if Some(u) != block.downsample {
                    (ch, cw) = (g.out_h(), g.out_w());
                }
            }
        }
        let sizes: Vec<usize> = self
            .units
            .iter()
            .zip(&dims)
            .map(|(u, d)| n * d[2] * d[3] * u.conv.cout)
            .collect();
        let largest = sizes
            .iter()
            .copied()
            .chain([pool_len, n * h * w * self.config.in_channels])
            .max()
            .unwrap_or(0);
        let workspace = be.conv_workspace(
            &(0..self.units.len())
                .map(|u| self.conv_op(u, n, &dims))
                .collect::<Vec<_>>(),
        )?;
        let zeros = |len: usize| be.zeros(len);
        Ok(Activations {
            n,
            h,
            w,
            pre: sizes.iter().map(|&s| zeros(s)).collect::<Result<_>>()?,
            out: sizes.iter().map(|&s| zeros(s)).collect::<Result<_>>()?,
            stats: self
                .units
                .iter()
                .map(|u| zeros(2 * u.conv.cout))
                .collect::<Result<_>>()?,
            dims,
            pool: zeros(pool_len)?,
            argmax: be.indices(pool_len)?,
            repr: zeros(n * self.repr_dim())?,
            workspace,
            grad: Some([zeros(largest)?, zeros(largest)?, zeros(largest)?]),
            mode: None,
        })
    }

    /// Unit `u`'s convolution on `n` images at the input size `dims` gives it.
    fn conv_op(&self, u: usize, n: usize, dims: &[[usize; 4]]) -> ConvOp {
        let unit = &self.units[u];
        ConvOp {
            conv: unit.conv,
            n,
            h: dims[u][0],
            w: dims[u][1],
            weight: unit.weight.clone(),
        }
    }

    /// Unit `u`'s BatchNorm on `n` images.
    fn batchnorm(&self, u: usize, n: usize, dims: &[[usize; 4]]) -> BatchNorm {
        let unit = &self.units[u];
        BatchNorm {
            rows: n * dims[u][2] * dims[u][3],
            cols: unit.conv.cout,
            relu: unit.relu,
            gamma: unit.gamma.clone(),
            beta: unit.beta.clone(),
            running_mean: unit.running_mean.clone(),
            running_var: unit.running_var.clone(),
            linear_bias: None,
        }
    }

    /// Checks the buffers against the layout: the encoder's parameters (and running
    /// statistics) are the first values of `params` (and `running`), which may go on with
    /// other networks' (a BYOL network's flat buffers).
    fn check<B: Backend>(
        &self,
        params: &B::Buffer,
        running: Option<&B::Buffer>,
        x: &B::Buffer,
        acts: &Activations<B>,
    ) -> Result<()> {
        need::<B>("ResNet parameters", params, self.registry.param_len())?;
        if let Some(r) = running {
            need::<B>("ResNet running statistics", r, self.registry.buffer_len())?;
        }
        let expected = acts.n * acts.h * acts.w * self.config.in_channels;
        if B::len(x) != expected {
            return Err(Error::InvalidArgument(format!(
                "ResNet input: expected {} images of {}×{}×{} (NHWC, {expected} values), got {} values",
                acts.n,
                acts.h,
                acts.w,
                self.config.in_channels,
                B::len(x)
            )));
        }
        Ok(())
    }

    /// The input of block `b`'s first unit.
    fn block_source(&self, b: usize) -> Source {
        match b {
            0 if self.has_maxpool() => Source::MaxPool,
            0 => Source::Unit(0),
            _ => Source::Unit(*self.blocks[b - 1].units.last().unwrap()),
        }
    }

    /// Forward of `x [n, h, w, in_channels]` (NHWC); the representation `[n, repr_dim]` is
    /// then [`Activations::representation`]. Training mode normalises with batch statistics
    /// and updates `running`.
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        params: &B::Buffer,
        running: &mut B::Buffer,
        x: &B::Buffer,
        mode: BnMode,
        acts: &mut Activations<B>,
    ) -> Result<()> {
        self.check(params, Some(running), x, acts)?;
        if mode == BnMode::Train && acts.n < 2 {
            return Err(Error::BatchTooSmall(acts.n));
        }
        let n = acts.n;
        self.unit_forward(be, 0, Source::Image, None, params, running, x, mode, acts)?;
        if self.has_maxpool() {
            let d = acts.dims[0];
            let g = self.maxpool_geometry(d[2], d[3]);
            be.maxpool_forward(g, n, &acts.out[0], &mut acts.pool, &mut acts.argmax)?;
        }
        for (b, block) in self.blocks.iter().enumerate() {
            let source = self.block_source(b);
            if let Some(ds) = block.downsample {
                self.unit_forward(be, ds, source, None, params, running, x, mode, acts)?;
            }
            let residual = block.downsample.map_or(source, Source::Unit);
            let mut input = source;
            for (i, &u) in block.units.iter().enumerate() {
                let res = (i + 1 == block.units.len()).then_some(residual);
                self.unit_forward(be, u, input, res, params, running, x, mode, acts)?;
                input = Source::Unit(u);
            }
        }
        let last = *self.blocks.last().unwrap().units.last().unwrap();
        let d = acts.dims[last];
        let (hw, c) = (d[2] * d[3], self.repr_dim());
        be.avgpool_forward(n, hw, c, &acts.out[last], &mut acts.repr)?;
        acts.mode = Some(mode);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn unit_forward<B: Backend>(
        &self,
        be: &B,
        u: usize,
        input: Source,
        residual: Option<Source>,
        params: &B::Buffer,
        running: &mut B::Buffer,
        x: &B::Buffer,
        mode: BnMode,
        acts: &mut Activations<B>,
    ) -> Result<()> {
        let Activations {
            n,
            dims,
            pre,
            out,
            stats,
            pool,
            workspace,
            ..
        } = acts;
        // The unit writes its own output while reading another unit's.
        let (before, rest) = out.split_at_mut(u);
        let (own, after) = rest.split_first_mut().expect("unit u exists");
        let src = |s: Source| -> &B::Buffer {
            match s {
                Source::Image => x,
                Source::MaxPool => pool,
                Source::Unit(v) if v < u => &before[v],
                Source::Unit(v) => &after[v - u - 1],
            }
        };
        let conv = self.conv_op(u, *n, dims);
        be.conv2d_forward(&conv, params, src(input), &mut pre[u], workspace)?;
        let bn = self.batchnorm(u, *n, dims);
        let res = residual.map(src);
        be.batchnorm_forward(&bn, mode, params, running, &pre[u], res, &mut stats[u], own)
    }

    /// Backward of the last training-mode forward: `grads` (laid out as the parameters)
    /// accumulates `∂L/∂θ` for `grad_repr = ∂L/∂representation [n, repr_dim]`; `grad_x`, when
    /// given, receives `∂L/∂x`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<B: Backend>(
        &self,
        be: &B,
        params: &B::Buffer,
        x: &B::Buffer,
        acts: &mut Activations<B>,
        grad_repr: &B::Buffer,
        grads: &mut B::Buffer,
        grad_x: Option<&mut B::Buffer>,
    ) -> Result<()> {
        self.check(params, None, x, acts)?;
        if acts.mode != Some(BnMode::Train) {
            return Err(Error::InvalidArgument(
                "ResNet backward needs a training-mode forward first".into(),
            ));
        }
        let n = acts.n;
        check_len(
            "gradient of the representation [n, repr_dim]",
            B::len(grad_repr),
            n * self.repr_dim(),
        )?;
        need::<B>(
            "ResNet parameter gradients",
            grads,
            self.registry.param_len(),
        )?;
        if let Some(g) = &grad_x {
            check_len("ResNet input gradient", B::len(g), B::len(x))?;
        }
        let [mut g0, mut g1, mut g2] = acts.grad.take().expect("gradient buffers are returned");
        let result = (|| {
            let last = *self.blocks.last().unwrap().units.last().unwrap();
            let d = acts.dims[last];
            be.avgpool_backward(n, d[2] * d[3], self.repr_dim(), grad_repr, &mut g0)?;
            for (b, block) in self.blocks.iter().enumerate().rev() {
                let source = self.block_source(b);
                // Main path, last unit first: g0 holds ∂L/∂(unit output) on entry, ∂L/∂(unit
                // input) after.
                for (i, &u) in block.units.iter().enumerate().rev() {
                    let input = if i == 0 {
                        source
                    } else {
                        Source::Unit(block.units[i - 1])
                    };
                    let residual_grad = (i + 1 == block.units.len()).then_some(&mut g2);
                    let dx = Some((&mut g1, false));
                    self.unit_backward(
                        be,
                        u,
                        input,
                        params,
                        x,
                        acts,
                        &mut g0,
                        residual_grad,
                        grads,
                        dx,
                    )?;
                    std::mem::swap(&mut g0, &mut g1);
                }
                // Shortcut: its gradient (g2) joins the main path's (g0) at the block's input.
                match block.downsample {
                    Some(ds) => {
                        let dx = Some((&mut g0, true));
                        self.unit_backward(
                            be, ds, source, params, x, acts, &mut g2, None, grads, dx,
                        )?
                    }
                    None => be.add_assign(&mut g0, &g2, self.source_len(source, acts, x))?,
                }
            }
            if self.has_maxpool() {
                let d = acts.dims[0];
                let g = self.maxpool_geometry(d[2], d[3]);
                be.maxpool_backward(g, n, &g0, &acts.argmax, &mut g1)?;
                std::mem::swap(&mut g0, &mut g1);
            }
            let dx = grad_x.map(|g| (g, false));
            self.unit_backward(
                be,
                0,
                Source::Image,
                params,
                x,
                acts,
                &mut g0,
                None,
                grads,
                dx,
            )
        })();
        acts.grad = Some([g0, g1, g2]);
        result
    }

    fn source_len<B: Backend>(&self, s: Source, acts: &Activations<B>, x: &B::Buffer) -> usize {
        match s {
            Source::Image => B::len(x),
            Source::MaxPool => B::len(&acts.pool),
            Source::Unit(v) => B::len(&acts.out[v]),
        }
    }

    /// One unit's backward: `grad` holds ∂L/∂(unit output) and is spent; with a residual the
    /// shortcut's gradient goes to `residual_grad`; `dx` receives ∂L/∂(unit input) (added
    /// when its flag is set).
    #[allow(clippy::too_many_arguments)]
    fn unit_backward<B: Backend>(
        &self,
        be: &B,
        u: usize,
        input: Source,
        params: &B::Buffer,
        x: &B::Buffer,
        acts: &mut Activations<B>,
        grad: &mut B::Buffer,
        residual_grad: Option<&mut B::Buffer>,
        grads: &mut B::Buffer,
        dx: Option<(&mut B::Buffer, bool)>,
    ) -> Result<()> {
        let bn = self.batchnorm(u, acts.n, &acts.dims);
        let (pre, out, stats) = (&acts.pre[u], &acts.out[u], &acts.stats[u]);
        be.batchnorm_backward(&bn, params, pre, out, stats, grad, grads, residual_grad)?;
        let src = match input {
            Source::Image => x,
            Source::MaxPool => &acts.pool,
            Source::Unit(v) => &acts.out[v],
        };
        let conv = self.conv_op(u, acts.n, &acts.dims);
        be.conv2d_backward(&conv, params, src, grad, grads, dx, &mut acts.workspace)
    }
}

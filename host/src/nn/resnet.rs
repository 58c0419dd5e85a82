//! ResNet-18/34 (basic blocks) and ResNet-50 (bottleneck blocks) with torchvision's structure
//! and parameter names, as the BYOL encoder: the output is the globally average-pooled
//! representation (512·width/64 for ResNet-18/34, 2048·width/64 for ResNet-50), no classifier.
//!
//! Layouts: images and activations NHWC, `[n, h, w, c]`. The network is a list of conv+BN
//! units (each a [`Conv2d`] followed by a BatchNorm, with a ReLU except on downsample paths);
//! a block's last BatchNorm adds the residual before its ReLU, in the same pass. Parameters,
//! their gradients and the running statistics are flat buffers laid out by [`Registry`];
//! what a forward keeps for its backward lives in [`Activations`], allocated once per input
//! shape and reused.

use super::registry::{Registry, Role};
use crate::cpu::batchnorm::BnMode;
use crate::cpu::batchnorm::{batchnorm_backward, batchnorm_forward, BnLayer};
use crate::cpu::conv::{conv_backward, conv_forward, Conv2d, ConvScratch};
use crate::cpu::pool::{avgpool_backward, avgpool_forward, maxpool_backward, maxpool_forward};
use crate::error::{check_len, Error, Result};
use kernels::batchnorm::BnGrads;
use kernels::conv::ConvGeometry;
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

/// A residual block: its units in order (the last one adds the residual), and the downsample
/// unit when the shortcut needs one.
#[derive(Clone, Debug)]
struct Block {
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

/// What a forward keeps for the backward, and the backward's scratch; for one input shape.
pub struct Activations {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    /// Per unit: input height and width, output height and width.
    dims: Vec<[usize; 4]>,
    /// Per unit: convolution output (before BN) and unit output (after BN, residual, ReLU).
    pre: Vec<Vec<f32>>,
    out: Vec<Vec<f32>>,
    /// Per unit: batch mean then `1/√(var + ε)` of each channel.
    stats: Vec<Vec<f32>>,
    pool: Vec<f32>,
    argmax: Vec<u32>,
    repr: Vec<f32>,
    scratch: ConvScratch,
    grad: [Vec<f32>; 3],
    mode: Option<BnMode>,
}

impl Activations {
    /// The pooled representation `[n, repr_dim]` of the last forward.
    pub fn representation(&self) -> &[f32] {
        &self.repr
    }

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
                net.blocks.push(Block { units, downsample });
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

    /// torchvision's initialisation: convolutions Kaiming-normal with fan-out and ReLU gain
    /// (`std = √(2 / (cout·k·k))`), BatchNorm γ = 1, β = 0.
    pub fn init_params(&self, rng: &mut impl Rng) -> Vec<f32> {
        let mut p = vec![0.0f32; self.registry.param_len()];
        for u in &self.units {
            let std = (2.0 / (u.conv.cout * u.conv.k * u.conv.k) as f32).sqrt();
            let normal = Normal::new(0.0, std).expect("finite std");
            p[u.weight.clone()]
                .iter_mut()
                .for_each(|v| *v = normal.sample(rng));
            p[u.gamma.clone()].fill(1.0);
        }
        p
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
    pub fn activations(&self, n: usize, h: usize, w: usize) -> Result<Activations> {
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
        let scratch = ConvScratch::for_convs(
            self.units
                .iter()
                .zip(&dims)
                .map(|(u, d)| (&u.conv, n, d[0], d[1])),
        );
        Ok(Activations {
            n,
            h,
            w,
            pre: sizes.iter().map(|&s| vec![0.0; s]).collect(),
            out: sizes.iter().map(|&s| vec![0.0; s]).collect(),
            stats: self
                .units
                .iter()
                .map(|u| vec![0.0; 2 * u.conv.cout])
                .collect(),
            dims,
            pool: vec![0.0; pool_len],
            argmax: vec![0; pool_len],
            repr: vec![0.0; n * self.repr_dim()],
            scratch,
            grad: [vec![0.0; largest], vec![0.0; largest], vec![0.0; largest]],
            mode: None,
        })
    }

    fn check(
        &self,
        params: &[f32],
        running: Option<&[f32]>,
        x: &[f32],
        acts: &Activations,
    ) -> Result<()> {
        check_len("ResNet parameters", params.len(), self.registry.param_len())?;
        if let Some(r) = running {
            check_len(
                "ResNet running statistics",
                r.len(),
                self.registry.buffer_len(),
            )?;
        }
        let expected = acts.n * acts.h * acts.w * self.config.in_channels;
        if x.len() != expected {
            return Err(Error::InvalidArgument(format!(
                "ResNet input: expected {} images of {}×{}×{} (NHWC, {expected} values), got {} values",
                acts.n,
                acts.h,
                acts.w,
                self.config.in_channels,
                x.len()
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

    /// Forward of `x [n, h, w, in_channels]` (NHWC); returns the representation `[n, repr_dim]`.
    /// Training mode normalises with batch statistics and updates `running`.
    pub fn forward<'a>(
        &self,
        params: &[f32],
        running: &mut [f32],
        x: &[f32],
        mode: BnMode,
        acts: &'a mut Activations,
    ) -> Result<&'a [f32]> {
        self.check(params, Some(running), x, acts)?;
        if mode == BnMode::Train && acts.n < 2 {
            return Err(Error::BatchTooSmall(acts.n));
        }
        let n = acts.n;
        self.unit_forward(0, Source::Image, None, params, running, x, mode, acts);
        if self.has_maxpool() {
            let d = acts.dims[0];
            maxpool_forward(
                self.maxpool_geometry(d[2], d[3]),
                &acts.out[0],
                n,
                &mut acts.pool,
                &mut acts.argmax,
            );
        }
        for (b, block) in self.blocks.iter().enumerate() {
            let source = self.block_source(b);
            if let Some(ds) = block.downsample {
                self.unit_forward(ds, source, None, params, running, x, mode, acts);
            }
            let residual = block.downsample.map_or(source, Source::Unit);
            let mut input = source;
            for (i, &u) in block.units.iter().enumerate() {
                let res = (i + 1 == block.units.len()).then_some(residual);
                self.unit_forward(u, input, res, params, running, x, mode, acts);
                input = Source::Unit(u);
            }
        }
        let last = *self.blocks.last().unwrap().units.last().unwrap();
        let d = acts.dims[last];
        avgpool_forward(
            &acts.out[last],
            n,
            d[2] * d[3],
            self.repr_dim(),
            &mut acts.repr,
        );
        acts.mode = Some(mode);
        Ok(&acts.repr)
    }

    #[allow(clippy::too_many_arguments)]
    fn unit_forward(
        &self,
        u: usize,
        input: Source,
        residual: Option<Source>,
        params: &[f32],
        running: &mut [f32],
        x: &[f32],
        mode: BnMode,
        acts: &mut Activations,
    ) {
        let unit = &self.units[u];
        let [ih, iw, oh, ow] = acts.dims[u];
        let (mut pre, mut out, mut stats, mut scratch) = (
            std::mem::take(&mut acts.pre[u]),
            std::mem::take(&mut acts.out[u]),
            std::mem::take(&mut acts.stats[u]),
            std::mem::take(&mut acts.scratch),
        );
        let src = |s: Source| -> &[f32] {
            match s {
                Source::Image => x,
                Source::MaxPool => &acts.pool,
                Source::Unit(v) => &acts.out[v],
            }
        };
        conv_forward(
            &unit.conv,
            src(input),
            acts.n,
            ih,
            iw,
            &params[unit.weight.clone()],
            &mut pre,
            &mut scratch,
        );
        let (running_mean, running_var) =
            two_ranges(running, &unit.running_mean, &unit.running_var);
        let (mean, invstd) = stats.split_at_mut(unit.conv.cout);
        let layer = BnLayer {
            gamma: &params[unit.gamma.clone()],
            beta: &params[unit.beta.clone()],
            running_mean,
            running_var,
            mean,
            invstd,
        };
        let rows = acts.n * oh * ow;
        batchnorm_forward(
            &pre,
            &mut out,
            rows,
            unit.conv.cout,
            mode,
            layer,
            residual.map(src),
            unit.relu,
        );
        (acts.pre[u], acts.out[u], acts.stats[u], acts.scratch) = (pre, out, stats, scratch);
    }

    /// Backward of the last training-mode forward: `grads` (laid out as the parameters)
    /// accumulates `∂L/∂θ` for `grad_repr = ∂L/∂representation [n, repr_dim]`; `grad_x`, when
    /// given, receives `∂L/∂x`.
    pub fn backward(
        &self,
        params: &[f32],
        x: &[f32],
        acts: &mut Activations,
        grad_repr: &[f32],
        grads: &mut [f32],
        grad_x: Option<&mut [f32]>,
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
            grad_repr.len(),
            n * self.repr_dim(),
        )?;
        check_len(
            "ResNet parameter gradients",
            grads.len(),
            self.registry.param_len(),
        )?;
        if let Some(g) = &grad_x {
            check_len("ResNet input gradient", g.len(), x.len())?;
        }
        let [mut g0, mut g1, mut g2] = std::mem::take(&mut acts.grad);
        let last = *self.blocks.last().unwrap().units.last().unwrap();
        let d = acts.dims[last];
        avgpool_backward(grad_repr, n, d[2] * d[3], self.repr_dim(), &mut g0);
        for (b, block) in self.blocks.iter().enumerate().rev() {
            let source = self.block_source(b);
            // Main path, last unit first: g0 holds ∂L/∂(unit output) on entry, ∂L/∂(unit input) after.
            for (i, &u) in block.units.iter().enumerate().rev() {
                let input = if i == 0 {
                    source
                } else {
                    Source::Unit(block.units[i - 1])
                };
                let residual_grad = (i + 1 == block.units.len()).then_some(&mut g2[..]);
                self.unit_backward(
                    u,
                    input,
                    params,
                    x,
                    acts,
                    &mut g0,
                    residual_grad,
                    grads,
                    Some((&mut g1, false)),
                );
                std::mem::swap(&mut g0, &mut g1);
            }
            // Shortcut: its gradient (g2) joins the main path's (g0) at the block's input.
            let len = self.source_len(source, acts, x);
            match block.downsample {
                Some(ds) => self.unit_backward(
                    ds,
                    source,
                    params,
                    x,
                    acts,
                    &mut g2,
                    None,
                    grads,
                    Some((&mut g0, true)),
                ),
                None => g0[..len]
                    .iter_mut()
                    .zip(&g2[..len])
                    .for_each(|(a, b)| *a += b),
            }
        }
        if self.has_maxpool() {
            let d = acts.dims[0];
            maxpool_backward(
                self.maxpool_geometry(d[2], d[3]),
                &g0,
                &acts.argmax,
                n,
                &mut g1,
            );
            std::mem::swap(&mut g0, &mut g1);
        }
        self.unit_backward(
            0,
            Source::Image,
            params,
            x,
            acts,
            &mut g0,
            None,
            grads,
            grad_x.map(|g| (g, false)),
        );
        acts.grad = [g0, g1, g2];
        Ok(())
    }

    fn source_len(&self, s: Source, acts: &Activations, x: &[f32]) -> usize {
        match s {
            Source::Image => x.len(),
            Source::MaxPool => acts.pool.len(),
            Source::Unit(v) => acts.out[v].len(),
        }
    }

    /// One unit's backward: `grad` holds ∂L/∂(unit output) and is spent; with a residual the
    /// shortcut's gradient goes to `residual_grad`; `dx` receives ∂L/∂(unit input).
    #[allow(clippy::too_many_arguments)]
    fn unit_backward(
        &self,
        u: usize,
        input: Source,
        params: &[f32],
        x: &[f32],
        acts: &mut Activations,
        grad: &mut [f32],
        residual_grad: Option<&mut [f32]>,
        grads: &mut [f32],
        dx: Option<(&mut [f32], bool)>,
    ) {
        let unit = &self.units[u];
        let [ih, iw, oh, ow] = acts.dims[u];
        let (rows, c) = (acts.n * oh * ow, unit.conv.cout);
        let len = rows * c;
        let (mean, invstd) = acts.stats[u].split_at(c);
        let (dgamma, dbeta) = two_ranges(grads, &unit.gamma, &unit.beta);
        let bn_grads = BnGrads {
            gamma: dgamma,
            beta: dbeta,
            linear_bias: &mut [],
        };
        let grad = &mut grad[..len];
        let residual_grad = residual_grad.map(|r| &mut r[..len]);
        let gamma = &params[unit.gamma.clone()];
        let (pre, out) = (&acts.pre[u], &acts.out[u]);
        batchnorm_backward(
            pre,
            out,
            grad,
            rows,
            c,
            unit.relu,
            gamma,
            (mean, invstd),
            bn_grads,
            residual_grad,
        );
        let input_len = self.source_len(input, acts, x);
        let src = match input {
            Source::Image => x,
            Source::MaxPool => &acts.pool,
            Source::Unit(v) => &acts.out[v],
        };
        let dx = dx.map(|(d, acc)| (&mut d[..input_len], acc));
        let w = &params[unit.weight.clone()];
        conv_backward(
            &unit.conv,
            src,
            acts.n,
            ih,
            iw,
            w,
            grad,
            &mut grads[unit.weight.clone()],
            dx,
            &mut acts.scratch,
        );
    }
}

/// Two disjoint ranges of one buffer, mutably.
fn two_ranges<'a>(
    v: &'a mut [f32],
    a: &Range<usize>,
    b: &Range<usize>,
) -> (&'a mut [f32], &'a mut [f32]) {
    debug_assert!(a.end <= b.start);
    let (left, right) = v.split_at_mut(b.start);
    (&mut left[a.clone()], &mut right[..b.len()])
}

//! Backends: every operation a BYOL step runs, on the CPU ([`cpu::Cpu`]) and, with the `cuda`
//! feature, on an NVIDIA GPU (`cuda::Cuda`), behind one trait with the same method names,
//! as candle's backends. The networks ([`crate::nn`]), the step ([`crate::byol`]) and the
//! feature extraction ([`crate::eval`]) are generic over it; nothing above this floor calls
//! a kernel directly.
//!
//! Buffers are the backend's own (`Vec<f32>` on the CPU, device memory on the GPU); no host
//! slice crosses the trait except through [`Backend::upload`] and [`Backend::download`].
//! Parameters, their gradients, optimiser state and running statistics are flat buffers; an
//! op reads a tensor inside one through a `Range` its parameter struct carries. Activations are
//! whole buffers of which an op uses the prefix its shape gives. Layouts: row-major
//! `[rows, features]`; images and activations NHWC (`[n·h·w, c]` for BatchNorm); convolution
//! weights OHWI; Linear weights `[out, in]` as PyTorch stores them.
//!
//! Shapes are checked where they enter: by the networks ([`crate::nn`]) against their
//! layout, and by the checked methods here (loss, EMA); the CPU's ops also slice with bounds
//! checks, the GPU's validate lengths before each launch.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod distributed;
#[cfg(feature = "cuda")]
pub mod gpu_libs;
pub mod gpu_plan;
pub mod ptx;

use crate::error::{check_len, Error, Result};
use std::ops::Range;

// Parameter types of the ops. They are defined beside their CPU drivers (the floor below)
// and are the backend's vocabulary for everything above it.
pub use crate::cpu::batchnorm::BnMode;
pub use crate::cpu::conv::Conv2d;
pub use crate::cpu::gemm::Gemm;
pub use crate::cpu::objective::{DirectionGrads, Normalisation, Objective};
pub use crate::cpu::optimizer::{Optimizer, OptimizerKind, TensorStep};
pub use crate::cpu::simplicial::Simplicial;
pub use kernels::augment::ViewParams;
/// How far one training-mode BatchNorm moves its running statistics towards the batch's.
pub use kernels::batchnorm::BN_MOMENTUM;
pub use kernels::conv::ConvGeometry;

/// The arithmetic of convolutions and GEMMs on a GPU: `f32` (IEEE single precision, no tensor
/// cores), `tf32` (tensor cores with TF32 inputs, f32 accumulation and storage) or `bf16`
/// (tensor cores on bf16 copies of the inputs, f32 accumulation, outputs back in f32). The
/// CPU always computes in f32. Parameters (the master weights), optimiser state, BatchNorm,
/// the loss and the EMA are f32 in all three.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    Tf32,
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(Error::InvalidArgument(format!(
                "precision {s:?}: expected f32, tf32 or bf16"
            ))),
        }
    }
}

/// Where a run computes: `cpu`, or `cuda` / `cuda:N` (GPU N). Checkpoints do not depend on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidArgument(format!(
                "device {s:?}: expected cpu, cuda or cuda:N (N the GPU's index)"
            ))
        };
        match s.split_once(':') {
            None if s == "cpu" => Ok(Device::Cpu),
            None if s == "cuda" => Ok(Device::Cuda(0)),
            Some(("cuda", n)) => n.parse().map(Device::Cuda).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

/// The name `from_str` reads back: `cpu` or `cuda:N`.
impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A Linear layer `y [rows, output] = x [rows, input] · wᵀ (+ b)` whose weight `[output,
/// input]` and bias `[output]` sit at `weight` and `bias` in a flat parameter buffer (and at
/// the same places in its gradient).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linear {
    pub rows: usize,
    pub input: usize,
    pub output: usize,
    pub weight: Range<usize>,
    pub bias: Option<Range<usize>>,
}

/// A BatchNorm over the rows of `[rows, cols]` (BatchNorm1d of the MLP, BatchNorm2d in NHWC),
/// followed by an optional residual and ReLU: γ and β in the parameter buffer (their gradients
/// at the same places), the running mean and variance in the running buffer, and, for the
/// backward, where the gradient of a preceding Linear's bias goes (the MLP's hidden blocks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchNorm {
    pub rows: usize,
    pub cols: usize,
    pub relu: bool,
    pub gamma: Range<usize>,
    pub beta: Range<usize>,
    pub running_mean: Range<usize>,
    pub running_var: Range<usize>,
    pub linear_bias: Option<Range<usize>>,
}

/// A convolution on `n` images of `h × w` whose weight sits at `weight` in the flat parameter
/// buffer (and its gradient at the same place).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvOp {
    pub conv: Conv2d,
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub weight: Range<usize>,
}

impl ConvOp {
    /// Values of the input `[n, h, w, cin]` and of the output `[n, oh, ow, cout]`.
    pub fn input_len(&self) -> usize {
        self.n * self.h * self.w * self.conv.cin
    }
    pub fn output_len(&self) -> usize {
        let g = self.conv.geometry(self.h, self.w);
        self.n * g.out_h() * g.out_w() * self.conv.cout
    }
}

/// One batch of views to apply: source images `h × w`, output `size × size`, the channels'
/// normalisation, and per row its image and its drawn view.
pub struct AugmentOp<'a> {
    pub h: usize,
    pub w: usize,
    pub size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub index: &'a [u32],
    pub params: &'a [ViewParams],
}

impl AugmentOp<'_> {
    /// Every row names an image below `image_count`, has a view, and its crop lies inside.
    pub fn check(&self, image_count: usize) -> Result<()> {
        if self.params.len() != self.index.len() {
            return Err(Error::Length {
                what: "augmentation views (one per row)",
                expected: self.index.len(),
                got: self.params.len(),
            });
        }
        for (&i, p) in self.index.iter().zip(self.params) {
            let [top, left, ch, cw] = p.crop.map(|v| v as usize);
            let inside = top + ch <= self.h && left + cw <= self.w && ch > 0 && cw > 0;
            if i as usize >= image_count
                || !inside
                || p.blur_len as usize > kernels::augment::MAX_BLUR
            {
                return Err(Error::InvalidArgument(format!(
                    "augmentation row for image {i}: out of the {image_count} images, or a crop {:?} / blur of {} outside a {}×{} image",
                    p.crop, p.blur_len, self.h, self.w
                )));
            }
        }
        Ok(())
    }
}

/// The optimiser's state buffers, each as long as the parameters (the second moment empty
/// unless the optimiser keeps one).
pub struct OptimizerState<'a, T> {
    pub params: &'a mut T,
    pub momentum: &'a mut T,
    pub second_moment: &'a mut T,
}

/// Operations every backend provides.
pub trait Backend: Sync {
    /// A buffer of f32 on the device.
    type Buffer: Send + Sync;
    /// A buffer of u32 indices on the device (max-pool's argmax).
    type Indices: Send + Sync;
    /// What the convolutions of one network at one input shape need besides their tensors
    /// (column buffers, algorithm choices), allocated once and reused.
    type ConvWorkspace: Send + Sync;
    /// A data set's source images kept where [`Backend::augment`] reads them.
    type Images: Send + Sync;

    // ---- Memory.
    fn upload(&self, data: &[f32]) -> Result<Self::Buffer>;
    fn download(&self, buf: &Self::Buffer) -> Result<Vec<f32>>;
    fn zeros(&self, len: usize) -> Result<Self::Buffer>;
    fn indices(&self, len: usize) -> Result<Self::Indices>;
    fn fill_zero(&self, buf: &mut Self::Buffer) -> Result<()>;
    fn len(buf: &Self::Buffer) -> usize;
    /// `dst[dst_at..][..len] = src[src_range]`.
    fn copy(
        &self,
        src: &Self::Buffer,
        src_range: Range<usize>,
        dst: &mut Self::Buffer,
        dst_at: usize,
    ) -> Result<()>;
    /// `dst[..len] += src[..len]`.
    fn add_assign(&self, dst: &mut Self::Buffer, src: &Self::Buffer, len: usize) -> Result<()>;
    /// Whether `buf[..len]` holds neither NaN nor infinity. The step asks it of the gradient:
    /// a ReLU maps NaN to 0, so a gradient can overflow behind a finite loss.
    fn all_finite(&self, buf: &Self::Buffer, len: usize) -> Result<bool>;

    // ---- Products.
    fn matmul(
        &self,
        g: Gemm,
        dst: &mut Self::Buffer,
        lhs: &Self::Buffer,
        rhs: &Self::Buffer,
    ) -> Result<()>;
    /// `out [rows, output] = x · wᵀ (+ b)`.
    fn linear_forward(
        &self,
        l: &Linear,
        params: &Self::Buffer,
        x: &Self::Buffer,
        out: &mut Self::Buffer,
    ) -> Result<()>;
    /// `dw += dyᵀ · x` and `db += Σ dy` into `grads` (laid out as the parameters), and
    /// `dx = dy · w` (overwritten) when given.
    fn linear_backward(
        &self,
        l: &Linear,
        params: &Self::Buffer,
        x: &Self::Buffer,
        dy: &Self::Buffer,
        grads: &mut Self::Buffer,
        dx: Option<&mut Self::Buffer>,
    ) -> Result<()>;

    // ---- Convolution (no bias: every ResNet convolution is followed by a BatchNorm).
    /// Workspace for every convolution of `convs` (weights' ranges are ignored).
    fn conv_workspace(&self, convs: &[ConvOp]) -> Result<Self::ConvWorkspace>;
    /// `out [n, oh, ow, cout] = conv(x [n, h, w, cin])`.
    fn conv2d_forward(
        &self,
        c: &ConvOp,
        params: &Self::Buffer,
        x: &Self::Buffer,
        out: &mut Self::Buffer,
        ws: &mut Self::ConvWorkspace,
    ) -> Result<()>;
    /// Backward-filter (`grads[weight] += ∂L/∂w`) and, with `dx`, backward-data (written,
    /// or added when its flag is set). One call, because both walk the same columns.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward(
        &self,
        c: &ConvOp,
        params: &Self::Buffer,
        x: &Self::Buffer,
        dout: &Self::Buffer,
        grads: &mut Self::Buffer,
        dx: Option<(&mut Self::Buffer, bool)>,
        ws: &mut Self::ConvWorkspace,
    ) -> Result<()>;

    // ---- BatchNorm. `stats [2·cols]` holds the batch mean then `1/√(var + ε)`, written by
    // a training forward and read by the backward.
    /// Training mode, first half: per-column sums of `h` shifted by its first row,
    /// `sums [3·cols] = shift, Σ(h − shift), Σ(h − shift)²`, reduced in a fixed order. These
    /// are the partial sums a data-parallel run adds across replicas before finishing.
    fn batchnorm_sums(
        &self,
        bn: &BatchNorm,
        h: &Self::Buffer,
        sums: &mut Self::Buffer,
    ) -> Result<()>;
    /// Training mode, second half: from `sums` over `count` rows, the batch statistics into
    /// `stats`, the running update, then `a = act(BN(h) (+ residual))`.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_finish(
        &self,
        bn: &BatchNorm,
        count: usize,
        sums: &Self::Buffer,
        params: &Self::Buffer,
        running: &mut Self::Buffer,
        h: &Self::Buffer,
        residual: Option<&Self::Buffer>,
        stats: &mut Self::Buffer,
        a: &mut Self::Buffer,
    ) -> Result<()>;
    /// `a = act(BN(h) (+ residual))`: in training mode the batch statistics (written to
    /// `stats`) and the running update; in evaluation mode the running statistics. In
    /// training mode it equals [`Backend::batchnorm_sums`] then [`Backend::batchnorm_finish`]
    /// over `bn.rows` (bit for bit on the CPU), fused where nothing needs the sums between.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_forward(
        &self,
        bn: &BatchNorm,
        mode: BnMode,
        params: &Self::Buffer,
        running: &mut Self::Buffer,
        h: &Self::Buffer,
        residual: Option<&Self::Buffer>,
        stats: &mut Self::Buffer,
        a: &mut Self::Buffer,
    ) -> Result<()>;
    /// Backward of a training forward: `grad` goes from ∂L/∂a to ∂L/∂h in place; γ, β (and
    /// the Linear bias of `bn.linear_bias`) accumulate into `grads`; with a residual, its
    /// gradient is written to `residual_grad`.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_backward(
        &self,
        bn: &BatchNorm,
        params: &Self::Buffer,
        h: &Self::Buffer,
        a: &Self::Buffer,
        stats: &Self::Buffer,
        grad: &mut Self::Buffer,
        grads: &mut Self::Buffer,
        residual_grad: Option<&mut Self::Buffer>,
    ) -> Result<()>;

    /// Backward, first half: `sums [2·cols] = Σ dy, Σ dy·x̂` per column (`dy` is ∂L/∂a
    /// through the ReLU), reduced in a fixed order; with a residual, its gradient `dy` is
    /// written to `residual_grad`. A data-parallel run adds these over replicas.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_backward_sums(
        &self,
        bn: &BatchNorm,
        h: &Self::Buffer,
        a: &Self::Buffer,
        stats: &Self::Buffer,
        grad: &Self::Buffer,
        sums: &mut Self::Buffer,
        residual_grad: Option<&mut Self::Buffer>,
    ) -> Result<()>;
    /// Backward, second half: `grad` goes from ∂L/∂a to ∂L/∂h with the `global` sums over
    /// `count` rows; γ, β accumulate this replica's `local` sums and the Linear bias of
    /// `bn.linear_bias` its `Σ ∂L/∂h`. With `local` = `global` and `count = bn.rows` this is
    /// [`Backend::batchnorm_backward`] (bit for bit on the CPU).
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_backward_finish(
        &self,
        bn: &BatchNorm,
        count: usize,
        local: &Self::Buffer,
        global: &Self::Buffer,
        params: &Self::Buffer,
        h: &Self::Buffer,
        a: &Self::Buffer,
        stats: &Self::Buffer,
        grad: &mut Self::Buffer,
        grads: &mut Self::Buffer,
    ) -> Result<()>;

    // ---- Pooling.
    /// `out [n, oh, ow, c]` = max over each window of `x [n, h, w, c]` (`g.cin = c`), with
    /// each maximum's index within its image in `argmax`.
    fn maxpool_forward(
        &self,
        g: ConvGeometry,
        n: usize,
        x: &Self::Buffer,
        out: &mut Self::Buffer,
        argmax: &mut Self::Indices,
    ) -> Result<()>;
    /// `dx [n, h, w, c]` (overwritten) from `dout [n, oh, ow, c]`.
    fn maxpool_backward(
        &self,
        g: ConvGeometry,
        n: usize,
        dout: &Self::Buffer,
        argmax: &Self::Indices,
        dx: &mut Self::Buffer,
    ) -> Result<()>;
    /// `out [n, c]` = mean over the `hw` pixels of each image of `x [n, hw, c]`.
    fn avgpool_forward(
        &self,
        n: usize,
        hw: usize,
        c: usize,
        x: &Self::Buffer,
        out: &mut Self::Buffer,
    ) -> Result<()>;
    /// `dx [n, hw, c]` (overwritten) from `dout [n, c]`.
    fn avgpool_backward(
        &self,
        n: usize,
        hw: usize,
        c: usize,
        dout: &Self::Buffer,
        dx: &mut Self::Buffer,
    ) -> Result<()>;

    // ---- Simplicial embedding (byol-pytorch's projector option); each checks with
    // [`Simplicial::check`] first.
    /// `s = softmax(z / T)` over each group of `op.group` features of `z [rows, cols]`.
    fn simplicial_forward(
        &self,
        op: &Simplicial,
        z: &Self::Buffer,
        s: &mut Self::Buffer,
    ) -> Result<()>;
    /// Backward from the forward's output `s`: `grad` goes from ∂L/∂s to ∂L/∂z in place.
    fn simplicial_backward(
        &self,
        op: &Simplicial,
        s: &Self::Buffer,
        grad: &mut Self::Buffer,
    ) -> Result<()>;

    // ---- Loss, optimiser, EMA.
    fn nmse_loss_unchecked(
        &self,
        p: &Self::Buffer,
        z: &Self::Buffer,
        rows: usize,
        dim: usize,
        grad_p: Option<&mut Self::Buffer>,
    ) -> Result<f32>;
    /// One direction of the loss with its ablations ([`Objective`]): the batch mean, the
    /// anchors' gradient (overwritten) and, when given, the positives' and same-view rows'
    /// (accumulated). All `[rows, dim]`.
    #[allow(clippy::too_many_arguments)]
    fn objective_direction(
        &self,
        objective: &Objective,
        anchors: &Self::Buffer,
        positives: &Self::Buffer,
        same_view: &Self::Buffer,
        rows: usize,
        dim: usize,
        grads: DirectionGrads<'_, Self::Buffer>,
    ) -> Result<f32>;
    /// One optimiser step over the flat buffers, tensor by tensor (`tensors` tile them in
    /// order); `t` counts steps from 1.
    fn optimizer_step(
        &self,
        optimizer: &Optimizer,
        tensors: &[TensorStep],
        state: OptimizerState<'_, Self::Buffer>,
        grads: &Self::Buffer,
        t: u64,
        lr: f32,
    ) -> Result<()>;
    /// Averages `buf` over the replicas of a data-parallel run (the gradient before the
    /// optimiser); one process has nothing to do.
    fn average_over_replicas(&self, _buf: &mut Self::Buffer) -> Result<()> {
        Ok(())
    }
    fn ema_update_unchecked(
        &self,
        target: &mut Self::Buffer,
        online: &Self::Buffer,
        tau: f32,
    ) -> Result<()>;

    // ---- Augmentation (the pixel work of views drawn on the host; `kernels::augment`).
    /// A data set's images `[count, h, w, 3]` (u8), kept for [`Backend::augment`].
    fn upload_images(&self, images: &[u8]) -> Result<Self::Images>;
    /// `out [rows, size, size, 3]` = the views `op.params` of the images `op.index` (checked
    /// against `images`), normalised.
    fn augment_unchecked(
        &self,
        op: &AugmentOp<'_>,
        images: &Self::Images,
        out: &mut Self::Buffer,
    ) -> Result<()>;
    /// [`Backend::augment_unchecked`] after checking the op's shapes, indices and output.
    fn augment(
        &self,
        op: &AugmentOp<'_>,
        images: &Self::Images,
        image_count: usize,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        op.check(image_count)?;
        need::<Self>(
            "augmentation output [rows, size, size, 3]",
            out,
            op.index.len() * op.size * op.size * 3,
        )?;
        self.augment_unchecked(op, images, out)
    }

    /// `target ← τ·target + (1 − τ)·online[..len(target)]`: the target's parameters are a
    /// prefix of the online network's.
    fn ema_update(&self, target: &mut Self::Buffer, online: &Self::Buffer, tau: f32) -> Result<()> {
        if !(0.0..=1.0).contains(&tau) {
            return Err(Error::InvalidArgument(format!(
                "EMA decay τ must lie in [0, 1], got {tau}"
            )));
        }
        if Self::len(online) < Self::len(target) {
            return Err(Error::Length {
                what: "EMA online parameters (at least the target's length)",
                expected: Self::len(target),
                got: Self::len(online),
            });
        }
        self.ema_update_unchecked(target, online, tau)
    }

    /// Batch mean of BYOL's normalised MSE between `p [rows, dim]` and `z [rows, dim]`.
    /// With `grad_p`, also writes the gradient of that mean with respect to `p`.
    fn nmse_loss(
        &self,
        p: &Self::Buffer,
        z: &Self::Buffer,
        rows: usize,
        dim: usize,
        grad_p: Option<&mut Self::Buffer>,
    ) -> Result<f32> {
        if rows == 0 || dim == 0 {
            return Err(Error::InvalidArgument(format!(
                "loss needs rows and dim ≥ 1, got {rows}×{dim}"
            )));
        }
        check_len("loss prediction p [rows, dim]", Self::len(p), rows * dim)?;
        check_len("loss target z [rows, dim]", Self::len(z), rows * dim)?;
        if let Some(g) = &grad_p {
            check_len("loss gradient [rows, dim]", Self::len(g), rows * dim)?;
        }
        self.nmse_loss_unchecked(p, z, rows, dim, grad_p)
    }
}

/// `Ok` when `buf` holds at least `len` values (an op uses the prefix its shape gives).
pub fn need<B: Backend + ?Sized>(what: &'static str, buf: &B::Buffer, len: usize) -> Result<()> {
    if B::len(buf) < len {
        return Err(Error::Length {
            what,
            expected: len,
            got: B::len(buf),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a record or a banner names is what `--device` reads back.
    #[test]
    fn a_device_should_print_as_the_flag_that_names_it() {
        for (text, device) in [
            ("cpu", Device::Cpu),
            ("cuda:0", Device::Cuda(0)),
            ("cuda:3", Device::Cuda(3)),
        ] {
            assert_eq!(device.to_string(), text);
            assert_eq!(text.parse::<Device>().unwrap(), device);
        }
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert!("gpu".parse::<Device>().is_err());
    }
}

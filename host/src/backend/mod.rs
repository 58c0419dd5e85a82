//! Backends: the same operations on the CPU ([`cpu::Cpu`]) and, with the `cuda` feature, on
//! an NVIDIA GPU ([`cuda::Cuda`]), with the same method names, as candle's backends.
//!
//! The checked methods of [`Backend`] validate shapes once, for every backend, and then call
//! the backend's `*_unchecked` arithmetic. Layouts: row-major `[batch, features]`; MLP
//! parameters as [`crate::nn::mlp::Mlp`] lays them out.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod ptx;

use crate::cpu::batchnorm::BnMode;
use crate::error::{check_len, Error, Result};
use crate::nn::mlp::Mlp;

/// An MLP's shape with its parameters and BatchNorm running statistics on one backend.
pub struct MlpState<B> {
    pub mlp: Mlp,
    pub params: B,
    pub running: B,
}

/// What an MLP forward keeps for its backward, allocated once per batch size and reused:
/// `h [batch, hidden]` (first Linear's output), `a [batch, hidden]` (after BN and ReLU),
/// `stats [2·hidden]` (batch mean, then `1/√(var + ε)`), and `grad_hidden [batch, hidden]`
/// (scratch for the backward).
pub struct MlpSaved<B> {
    pub batch: usize,
    pub h: B,
    pub a: B,
    pub stats: B,
    pub grad_hidden: B,
    /// The mode of the last forward; backward needs a training-mode forward.
    pub mode: Option<BnMode>,
}

/// Operations every backend provides.
pub trait Backend {
    /// A device buffer of f32.
    type Buffer;

    fn upload(&self, data: &[f32]) -> Result<Self::Buffer>;
    fn download(&self, buf: &Self::Buffer) -> Result<Vec<f32>>;
    fn zeros(&self, len: usize) -> Result<Self::Buffer>;
    fn fill_zero(&self, buf: &mut Self::Buffer) -> Result<()>;
    fn len(buf: &Self::Buffer) -> usize;

    fn ema_update_unchecked(
        &self,
        target: &mut Self::Buffer,
        online: &Self::Buffer,
        tau: f32,
    ) -> Result<()>;
    fn nmse_loss_unchecked(
        &self,
        p: &Self::Buffer,
        z: &Self::Buffer,
        rows: usize,
        dim: usize,
        grad_p: Option<&mut Self::Buffer>,
    ) -> Result<f32>;
    fn mlp_forward_unchecked(
        &self,
        state: &mut MlpState<Self::Buffer>,
        x: &Self::Buffer,
        mode: BnMode,
        saved: &mut MlpSaved<Self::Buffer>,
        out: &mut Self::Buffer,
    ) -> Result<()>;
    fn mlp_backward_unchecked(
        &self,
        state: &MlpState<Self::Buffer>,
        x: &Self::Buffer,
        saved: &mut MlpSaved<Self::Buffer>,
        grad_out: &Self::Buffer,
        grads: &mut Self::Buffer,
        grad_x: &mut Self::Buffer,
    ) -> Result<()>;

    /// `target ← τ·target + (1 − τ)·online` over two flat parameter buffers of equal length.
    fn ema_update(&self, target: &mut Self::Buffer, online: &Self::Buffer, tau: f32) -> Result<()> {
        if !(0.0..=1.0).contains(&tau) {
            return Err(Error::InvalidArgument(format!(
                "EMA decay τ must lie in [0, 1], got {tau}"
            )));
        }
        check_len(
            "EMA online parameters (length of the target)",
            Self::len(online),
            Self::len(target),
        )?;
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

    /// Buffers for an MLP forward/backward at `batch` rows.
    fn mlp_saved(&self, mlp: &Mlp, batch: usize) -> Result<MlpSaved<Self::Buffer>> {
        mlp.validate()?;
        Ok(MlpSaved {
            batch,
            h: self.zeros(batch * mlp.hidden * mlp.hidden_layers())?,
            a: self.zeros(batch * mlp.hidden * mlp.hidden_layers())?,
            stats: self.zeros(2 * mlp.hidden * mlp.hidden_layers())?,
            grad_hidden: self.zeros(batch * mlp.hidden * mlp.hidden_layers())?,
            mode: None,
        })
    }

    /// `out [batch, output] = MLP(x [batch, input])`; in training mode also updates the
    /// running statistics and keeps in `saved` what [`Backend::mlp_backward`] needs.
    fn mlp_forward(
        &self,
        state: &mut MlpState<Self::Buffer>,
        x: &Self::Buffer,
        mode: BnMode,
        saved: &mut MlpSaved<Self::Buffer>,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        let (mlp, batch) = (state.mlp, saved.batch);
        check_mlp_state::<Self>(state)?;
        if mode == BnMode::Train && batch < 2 {
            return Err(Error::BatchTooSmall(batch));
        }
        if batch == 0 {
            return Err(Error::InvalidArgument(
                "MLP forward needs a batch of at least 1".into(),
            ));
        }
        check_len(
            "MLP input x [batch, input]",
            Self::len(x),
            batch * mlp.input,
        )?;
        check_len(
            "MLP output [batch, output]",
            Self::len(out),
            batch * mlp.output,
        )?;
        check_saved::<Self>(&mlp, saved)?;
        self.mlp_forward_unchecked(state, x, mode, saved, out)?;
        saved.mode = Some(mode);
        Ok(())
    }

    /// Backward of the last training-mode forward: accumulates (`+=`) the parameter gradients
    /// into `grads` (laid out as the parameters) and writes the input gradient to `grad_x`.
    fn mlp_backward(
        &self,
        state: &MlpState<Self::Buffer>,
        x: &Self::Buffer,
        saved: &mut MlpSaved<Self::Buffer>,
        grad_out: &Self::Buffer,
        grads: &mut Self::Buffer,
        grad_x: &mut Self::Buffer,
    ) -> Result<()> {
        let (mlp, batch) = (state.mlp, saved.batch);
        check_mlp_state::<Self>(state)?;
        check_saved::<Self>(&mlp, saved)?;
        if saved.mode != Some(BnMode::Train) {
            return Err(Error::InvalidArgument(
                "MLP backward needs a training-mode forward on the same buffers first".into(),
            ));
        }
        check_len(
            "MLP input x [batch, input]",
            Self::len(x),
            batch * mlp.input,
        )?;
        check_len(
            "MLP output gradient [batch, output]",
            Self::len(grad_out),
            batch * mlp.output,
        )?;
        check_len(
            "MLP parameter gradients",
            Self::len(grads),
            mlp.num_params(),
        )?;
        check_len(
            "MLP input gradient [batch, input]",
            Self::len(grad_x),
            batch * mlp.input,
        )?;
        self.mlp_backward_unchecked(state, x, saved, grad_out, grads, grad_x)
    }
}

fn check_mlp_state<B: Backend + ?Sized>(state: &MlpState<B::Buffer>) -> Result<()> {
    state.mlp.validate()?;
    check_len(
        "MLP parameters",
        B::len(&state.params),
        state.mlp.num_params(),
    )?;
    check_len(
        "MLP running statistics [layers, 2·hidden]",
        B::len(&state.running),
        state.mlp.running_len(),
    )
}

fn check_saved<B: Backend + ?Sized>(mlp: &Mlp, saved: &MlpSaved<B::Buffer>) -> Result<()> {
    let (layers, bh) = (mlp.hidden_layers(), saved.batch * mlp.hidden);
    check_len(
        "MLP saved h [layers, batch, hidden]",
        B::len(&saved.h),
        layers * bh,
    )?;
    check_len(
        "MLP saved a [layers, batch, hidden]",
        B::len(&saved.a),
        layers * bh,
    )?;
    check_len(
        "MLP saved grad_hidden [layers, batch, hidden]",
        B::len(&saved.grad_hidden),
        layers * bh,
    )?;
    check_len(
        "MLP saved stats [layers, 2·hidden]",
        B::len(&saved.stats),
        2 * mlp.hidden * layers,
    )
}

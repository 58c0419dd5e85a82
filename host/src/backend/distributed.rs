//! The data-parallel backend: another backend's ops on this rank's shard of the batch, plus
//! what makes N ranks one run (the paper's 512-accelerator setting):
//!
//! - **Cross-replica BatchNorm** in every BatchNorm (encoder, projector, predictor; online and
//!   target), as PyTorch's SyncBatchNorm and the official code: the forward adds every rank's
//!   per-channel count, Σh and Σh² in f64 and normalises with the statistics of the global
//!   batch (the running statistics are then the same on every rank); the backward adds Σdy
//!   and Σdy·x̂ so that ∂L/∂h uses the global batch, while γ and β take this rank's sums
//!   (their gradients are averaged with all the others below).
//! - **The gradient average**: [`Backend::average_over_replicas`] sums the flat gradient over
//!   the ranks and divides by their number, before the optimiser, so every rank takes the
//!   same step. Each rank's loss is a mean over its shard, so the average is the gradient of
//!   the mean over the global batch.
//!
//! With `sync_batchnorm` off every rank normalises with its own shard (per-replica
//! BatchNorm, for the batch-size ablation). Everything else is the inner backend's.
//!
//! Device buffers go through host memory for the collective, except the gradient average
//! when a [`DeviceAverage`] is given (NCCL on GPUs: `crate::dist::nccl`).

use super::{
    AugmentOp, Backend, BatchNorm, BnMode, ConvGeometry, ConvOp, DirectionGrads, Gemm, Linear,
    Objective, Optimizer, OptimizerState, Simplicial, TensorStep,
};
use crate::dist::Collective;
use crate::error::Result;
use std::ops::Range;
use std::sync::Arc;

/// An average over the ranks done on the devices (NCCL between GPUs), in place of the
/// collective's host-memory one.
pub type DeviceAverage<B> = Box<dyn Fn(&mut <B as Backend>::Buffer) -> Result<()> + Send + Sync>;

/// `inner`'s ops on one rank of a data-parallel run over `collective`.
pub struct Distributed<B: Backend> {
    pub inner: B,
    pub collective: Arc<dyn Collective>,
    /// Cross-replica BatchNorm (true, the paper's) or per-replica.
    pub sync_batchnorm: bool,
    /// The gradient average on the devices, where there is one.
    device_average: Option<DeviceAverage<B>>,
}

impl<B: Backend> Distributed<B> {
    pub fn new(inner: B, collective: Arc<dyn Collective>, sync_batchnorm: bool) -> Self {
        Distributed {
            inner,
            collective,
            sync_batchnorm,
            device_average: None,
        }
    }

    /// The gradient average goes through `average` (on the devices) instead of host memory.
    pub fn with_device_average(mut self, average: DeviceAverage<B>) -> Self {
        self.device_average = Some(average);
        self
    }

    fn syncs(&self) -> bool {
        self.sync_batchnorm && self.collective.world() > 1
    }

    /// This rank's shifted sums `[shift, Σ(h − shift), Σ(h − shift)²]` made global: the
    /// raw count, Σh and Σh² added over ranks in f64, returned as shifted sums around the
    /// global mean, with the global row count.
    fn global_forward_sums(&self, bn: &BatchNorm, sums: &B::Buffer) -> Result<(B::Buffer, usize)> {
        let c = bn.cols;
        let local = self.inner.download(sums)?;
        let n = bn.rows as f64;
        let mut raw = vec![0.0f64; 1 + 2 * c];
        raw[0] = n;
        for k in 0..c {
            let (shift, s1, s2) = (
                local[k] as f64,
                local[c + k] as f64,
                local[2 * c + k] as f64,
            );
            raw[1 + k] = s1 + n * shift;
            raw[1 + c + k] = s2 + 2.0 * shift * s1 + n * shift * shift;
        }
        self.collective.all_reduce_f64(&mut raw)?;
        let count = raw[0];
        let mut global = vec![0.0f32; 3 * c];
        for k in 0..c {
            let (sum, sum_sq) = (raw[1 + k], raw[1 + c + k]);
            let shift = (sum / count) as f32;
            let s = shift as f64;
            global[k] = shift;
            global[c + k] = (sum - count * s) as f32;
            global[2 * c + k] = (sum_sq - 2.0 * s * sum + count * s * s).max(0.0) as f32;
        }
        Ok((self.inner.upload(&global)?, count as usize))
    }
}

impl<B: Backend> Backend for Distributed<B> {
    type Buffer = B::Buffer;
    type Indices = B::Indices;
    type ConvWorkspace = B::ConvWorkspace;
    type Images = B::Images;

    fn upload(&self, data: &[f32]) -> Result<B::Buffer> {
        self.inner.upload(data)
    }
    fn download(&self, buf: &B::Buffer) -> Result<Vec<f32>> {
        self.inner.download(buf)
    }
    fn zeros(&self, len: usize) -> Result<B::Buffer> {
        self.inner.zeros(len)
    }
    fn indices(&self, len: usize) -> Result<B::Indices> {
        self.inner.indices(len)
    }
    fn fill_zero(&self, buf: &mut B::Buffer) -> Result<()> {
        self.inner.fill_zero(buf)
    }
    fn len(buf: &B::Buffer) -> usize {
        B::len(buf)
    }
    fn copy(
        &self,
        src: &B::Buffer,
        src_range: Range<usize>,
        dst: &mut B::Buffer,
        dst_at: usize,
    ) -> Result<()> {
        self.inner.copy(src, src_range, dst, dst_at)
    }
    fn add_assign(&self, dst: &mut B::Buffer, src: &B::Buffer, len: usize) -> Result<()> {
        self.inner.add_assign(dst, src, len)
    }
    fn all_finite(&self, buf: &B::Buffer, len: usize) -> Result<bool> {
        self.inner.all_finite(buf, len)
    }
    fn matmul(&self, g: Gemm, dst: &mut B::Buffer, lhs: &B::Buffer, rhs: &B::Buffer) -> Result<()> {
        self.inner.matmul(g, dst, lhs, rhs)
    }
    fn linear_forward(
        &self,
        l: &Linear,
        params: &B::Buffer,
        x: &B::Buffer,
        out: &mut B::Buffer,
    ) -> Result<()> {
        self.inner.linear_forward(l, params, x, out)
    }
    fn linear_backward(
        &self,
        l: &Linear,
        params: &B::Buffer,
        x: &B::Buffer,
        dy: &B::Buffer,
        grads: &mut B::Buffer,
        dx: Option<&mut B::Buffer>,
    ) -> Result<()> {
        self.inner.linear_backward(l, params, x, dy, grads, dx)
    }
    fn conv_workspace(&self, convs: &[ConvOp]) -> Result<B::ConvWorkspace> {
        self.inner.conv_workspace(convs)
    }
    fn conv2d_forward(
        &self,
        c: &ConvOp,
        params: &B::Buffer,
        x: &B::Buffer,
        out: &mut B::Buffer,
        ws: &mut B::ConvWorkspace,
    ) -> Result<()> {
        self.inner.conv2d_forward(c, params, x, out, ws)
    }
    fn conv2d_backward(
        &self,
        c: &ConvOp,
        params: &B::Buffer,
        x: &B::Buffer,
        dout: &B::Buffer,
        grads: &mut B::Buffer,
        dx: Option<(&mut B::Buffer, bool)>,
        ws: &mut B::ConvWorkspace,
    ) -> Result<()> {
        self.inner
            .conv2d_backward(c, params, x, dout, grads, dx, ws)
    }

    fn batchnorm_sums(&self, bn: &BatchNorm, h: &B::Buffer, sums: &mut B::Buffer) -> Result<()> {
        self.inner.batchnorm_sums(bn, h, sums)
    }
    fn batchnorm_finish(
        &self,
        bn: &BatchNorm,
        count: usize,
        sums: &B::Buffer,
        params: &B::Buffer,
        running: &mut B::Buffer,
        h: &B::Buffer,
        residual: Option<&B::Buffer>,
        stats: &mut B::Buffer,
        a: &mut B::Buffer,
    ) -> Result<()> {
        let inner = &self.inner;
        inner.batchnorm_finish(bn, count, sums, params, running, h, residual, stats, a)
    }
    fn batchnorm_forward(
        &self,
        bn: &BatchNorm,
        mode: BnMode,
        params: &B::Buffer,
        running: &mut B::Buffer,
        h: &B::Buffer,
        residual: Option<&B::Buffer>,
        stats: &mut B::Buffer,
        a: &mut B::Buffer,
    ) -> Result<()> {
        let inner = &self.inner;
        if mode == BnMode::Eval || !self.syncs() {
            return inner.batchnorm_forward(bn, mode, params, running, h, residual, stats, a);
        }
        let mut sums = inner.zeros(3 * bn.cols)?;
        inner.batchnorm_sums(bn, h, &mut sums)?;
        let (global, count) = self.global_forward_sums(bn, &sums)?;
        inner.batchnorm_finish(bn, count, &global, params, running, h, residual, stats, a)
    }
    fn batchnorm_backward(
        &self,
        bn: &BatchNorm,
        params: &B::Buffer,
        h: &B::Buffer,
        a: &B::Buffer,
        stats: &B::Buffer,
        grad: &mut B::Buffer,
        grads: &mut B::Buffer,
        residual_grad: Option<&mut B::Buffer>,
    ) -> Result<()> {
        let inner = &self.inner;
        if !self.syncs() {
            return inner.batchnorm_backward(bn, params, h, a, stats, grad, grads, residual_grad);
        }
        let mut local = inner.zeros(2 * bn.cols)?;
        inner.batchnorm_backward_sums(bn, h, a, stats, grad, &mut local, residual_grad)?;
        let mut sums = inner.download(&local)?;
        self.collective.all_reduce_f32(&mut sums)?;
        let global = inner.upload(&sums)?;
        let count = bn.rows * self.collective.world();
        inner
            .batchnorm_backward_finish(bn, count, &local, &global, params, h, a, stats, grad, grads)
    }
    fn batchnorm_backward_sums(
        &self,
        bn: &BatchNorm,
        h: &B::Buffer,
        a: &B::Buffer,
        stats: &B::Buffer,
        grad: &B::Buffer,
        sums: &mut B::Buffer,
        residual_grad: Option<&mut B::Buffer>,
    ) -> Result<()> {
        let inner = &self.inner;
        inner.batchnorm_backward_sums(bn, h, a, stats, grad, sums, residual_grad)
    }
    fn batchnorm_backward_finish(
        &self,
        bn: &BatchNorm,
        count: usize,
        local: &B::Buffer,
        global: &B::Buffer,
        params: &B::Buffer,
        h: &B::Buffer,
        a: &B::Buffer,
        stats: &B::Buffer,
        grad: &mut B::Buffer,
        grads: &mut B::Buffer,
    ) -> Result<()> {
        let inner = &self.inner;
        inner.batchnorm_backward_finish(bn, count, local, global, params, h, a, stats, grad, grads)
    }

    fn maxpool_forward(
        &self,
        g: ConvGeometry,
        n: usize,
        x: &B::Buffer,
        out: &mut B::Buffer,
        argmax: &mut B::Indices,
    ) -> Result<()> {
        self.inner.maxpool_forward(g, n, x, out, argmax)
    }
    fn maxpool_backward(
        &self,
        g: ConvGeometry,
        n: usize,
        dout: &B::Buffer,
        argmax: &B::Indices,
        dx: &mut B::Buffer,
    ) -> Result<()> {
        self.inner.maxpool_backward(g, n, dout, argmax, dx)
    }
    fn avgpool_forward(
        &self,
        n: usize,
        hw: usize,
        c: usize,
        x: &B::Buffer,
        out: &mut B::Buffer,
    ) -> Result<()> {
        self.inner.avgpool_forward(n, hw, c, x, out)
    }
    fn avgpool_backward(
        &self,
        n: usize,
        hw: usize,
        c: usize,
        dout: &B::Buffer,
        dx: &mut B::Buffer,
    ) -> Result<()> {
        self.inner.avgpool_backward(n, hw, c, dout, dx)
    }

    // Row by row: nothing to share between replicas.
    fn simplicial_forward(&self, op: &Simplicial, z: &B::Buffer, s: &mut B::Buffer) -> Result<()> {
        self.inner.simplicial_forward(op, z, s)
    }
    fn simplicial_backward(
        &self,
        op: &Simplicial,
        s: &B::Buffer,
        grad: &mut B::Buffer,
    ) -> Result<()> {
        self.inner.simplicial_backward(op, s, grad)
    }

    fn nmse_loss_unchecked(
        &self,
        p: &B::Buffer,
        z: &B::Buffer,
        rows: usize,
        dim: usize,
        grad_p: Option<&mut B::Buffer>,
    ) -> Result<f32> {
        self.inner.nmse_loss_unchecked(p, z, rows, dim, grad_p)
    }
    fn objective_direction(
        &self,
        objective: &Objective,
        anchors: &B::Buffer,
        positives: &B::Buffer,
        same_view: &B::Buffer,
        rows: usize,
        dim: usize,
        grads: DirectionGrads<'_, B::Buffer>,
    ) -> Result<f32> {
        let inner = &self.inner;
        inner.objective_direction(objective, anchors, positives, same_view, rows, dim, grads)
    }
    fn optimizer_step(
        &self,
        optimizer: &Optimizer,
        tensors: &[TensorStep],
        state: OptimizerState<'_, B::Buffer>,
        grads: &B::Buffer,
        t: u64,
        lr: f32,
    ) -> Result<()> {
        self.inner
            .optimizer_step(optimizer, tensors, state, grads, t, lr)
    }
    fn average_over_replicas(&self, buf: &mut B::Buffer) -> Result<()> {
        if let Some(average) = &self.device_average {
            return average(buf);
        }
        let world = self.collective.world();
        if world == 1 {
            return Ok(());
        }
        let mut host = self.inner.download(buf)?;
        self.collective.all_reduce_f32(&mut host)?;
        let scale = 1.0 / world as f32;
        host.iter_mut().for_each(|v| *v *= scale);
        *buf = self.inner.upload(&host)?;
        Ok(())
    }
    fn upload_images(&self, images: &[u8]) -> Result<B::Images> {
        self.inner.upload_images(images)
    }
    fn augment_unchecked(
        &self,
        op: &AugmentOp<'_>,
        images: &B::Images,
        out: &mut B::Buffer,
    ) -> Result<()> {
        self.inner.augment_unchecked(op, images, out)
    }
    fn ema_update_unchecked(
        &self,
        target: &mut B::Buffer,
        online: &B::Buffer,
        tau: f32,
    ) -> Result<()> {
        self.inner.ema_update_unchecked(target, online, tau)
    }
}

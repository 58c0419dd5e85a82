//! The CPU backend: the drivers of [`crate::cpu`] (the kernel crate's functions on rayon,
//! GEMMs by the `gemm` crate) behind the backend trait, with their measured choices (one
//! im2col + GEMM part per thread, 256-column tiles, sums in a fixed order). Each op slices
//! the exact tensors its shape names, so a too-short buffer is a bounds panic here, never a
//! silent overrun; the networks check their inputs before any op runs.

use super::{
    AugmentOp, Backend, BatchNorm, ConvGeometry, ConvOp, DirectionGrads, Gemm, Linear, Objective,
    Optimizer, OptimizerState, Simplicial, TensorStep,
};
use crate::cpu::batchnorm::{self, BnLayer, BnMode};
use crate::cpu::conv::{conv_backward, conv_forward, ConvScratch};
use crate::cpu::gemm::gemm;
use crate::cpu::linear::{linear_backward, linear_forward};
use crate::cpu::pool::{avgpool_backward, avgpool_forward, maxpool_backward, maxpool_forward};
use crate::cpu::simplicial::{simplicial_backward, simplicial_forward};
use crate::cpu::{ema_update, nmse_loss};
use crate::data::augment::apply_view;
use crate::error::Result;
use kernels::batchnorm::BnGrads;
use rayon::prelude::*;
use std::ops::Range;

/// The CPU backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// Two disjoint ranges of one buffer, mutably (`a` before `b`).
fn two_mut<'a>(
    v: &'a mut [f32],
    a: &Range<usize>,
    b: &Range<usize>,
) -> (&'a mut [f32], &'a mut [f32]) {
    assert!(a.end <= b.start, "ranges must be disjoint and in order");
    let (left, right) = v.split_at_mut(b.start);
    (&mut left[a.clone()], &mut right[..b.len()])
}

/// The BatchNorm layer's parameters and buffers as the CPU driver takes them.
fn layer<'a>(
    bn: &BatchNorm,
    params: &'a [f32],
    running: &'a mut [f32],
    stats: &'a mut [f32],
) -> BnLayer<'a> {
    let (running_mean, running_var) = two_mut(running, &bn.running_mean, &bn.running_var);
    let (mean, invstd) = stats[..2 * bn.cols].split_at_mut(bn.cols);
    BnLayer {
        gamma: &params[bn.gamma.clone()],
        beta: &params[bn.beta.clone()],
        running_mean,
        running_var,
        mean,
        invstd,
    }
}

impl Backend for Cpu {
    type Buffer = Vec<f32>;
    type Indices = Vec<u32>;
    type ConvWorkspace = ConvScratch;
    type Images = Vec<u8>;

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }
    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }
    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }
    fn indices(&self, len: usize) -> Result<Vec<u32>> {
        Ok(vec![0; len])
    }
    fn fill_zero(&self, buf: &mut Vec<f32>) -> Result<()> {
        buf.fill(0.0);
        Ok(())
    }
    fn len(buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn copy(
        &self,
        src: &Vec<f32>,
        src_range: Range<usize>,
        dst: &mut Vec<f32>,
        dst_at: usize,
    ) -> Result<()> {
        dst[dst_at..dst_at + src_range.len()].copy_from_slice(&src[src_range]);
        Ok(())
    }
    fn add_assign(&self, dst: &mut Vec<f32>, src: &Vec<f32>, len: usize) -> Result<()> {
        dst[..len]
            .iter_mut()
            .zip(&src[..len])
            .for_each(|(d, s)| *d += s);
        Ok(())
    }
    fn all_finite(&self, buf: &Vec<f32>, len: usize) -> Result<bool> {
        super::need::<Cpu>("all_finite buffer", buf, len)?;
        Ok(buf[..len].iter().all(|x| x.is_finite()))
    }

    fn matmul(&self, g: Gemm, dst: &mut Vec<f32>, lhs: &Vec<f32>, rhs: &Vec<f32>) -> Result<()> {
        gemm(g, dst, lhs, rhs);
        Ok(())
    }

    fn linear_forward(
        &self,
        l: &Linear,
        params: &Vec<f32>,
        x: &Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let bias = l.bias.clone().map_or(&[][..], |b| &params[b]);
        linear_forward(
            &mut out[..l.rows * l.output],
            &x[..l.rows * l.input],
            &params[l.weight.clone()],
            bias,
            l.rows,
            l.input,
            l.output,
        );
        Ok(())
    }

    fn linear_backward(
        &self,
        l: &Linear,
        params: &Vec<f32>,
        x: &Vec<f32>,
        dy: &Vec<f32>,
        grads: &mut Vec<f32>,
        dx: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        let (dw, db): (&mut [f32], &mut [f32]) = match &l.bias {
            Some(b) if b.start >= l.weight.end => two_mut(grads, &l.weight, b),
            Some(b) => {
                let (db, dw) = two_mut(grads, b, &l.weight);
                (dw, db)
            }
            None => (&mut grads[l.weight.clone()], &mut []),
        };
        linear_backward(
            dw,
            db,
            dx.map(|d| &mut d[..l.rows * l.input]),
            &x[..l.rows * l.input],
            &params[l.weight.clone()],
            &dy[..l.rows * l.output],
            l.rows,
            l.input,
            l.output,
        );
        Ok(())
    }

    fn conv_workspace(&self, convs: &[ConvOp]) -> Result<ConvScratch> {
        Ok(ConvScratch::for_convs(
            convs.iter().map(|c| (&c.conv, c.n, c.h, c.w)),
        ))
    }

    fn conv2d_forward(
        &self,
        c: &ConvOp,
        params: &Vec<f32>,
        x: &Vec<f32>,
        out: &mut Vec<f32>,
        ws: &mut ConvScratch,
    ) -> Result<()> {
        conv_forward(
            &c.conv,
            &x[..c.input_len()],
            c.n,
            c.h,
            c.w,
            &params[c.weight.clone()],
            &mut out[..c.output_len()],
            ws,
        );
        Ok(())
    }

    fn conv2d_backward(
        &self,
        c: &ConvOp,
        params: &Vec<f32>,
        x: &Vec<f32>,
        dout: &Vec<f32>,
        grads: &mut Vec<f32>,
        dx: Option<(&mut Vec<f32>, bool)>,
        ws: &mut ConvScratch,
    ) -> Result<()> {
        let input = c.input_len();
        conv_backward(
            &c.conv,
            &x[..input],
            c.n,
            c.h,
            c.w,
            &params[c.weight.clone()],
            &dout[..c.output_len()],
            &mut grads[c.weight.clone()],
            dx.map(|(d, acc)| (&mut d[..input], acc)),
            ws,
        );
        Ok(())
    }

    fn batchnorm_sums(&self, bn: &BatchNorm, h: &Vec<f32>, sums: &mut Vec<f32>) -> Result<()> {
        let len = bn.rows * bn.cols;
        batchnorm::batchnorm_sums(&h[..len], bn.rows, bn.cols, &mut sums[..3 * bn.cols]);
        Ok(())
    }

    fn batchnorm_finish(
        &self,
        bn: &BatchNorm,
        count: usize,
        sums: &Vec<f32>,
        params: &Vec<f32>,
        running: &mut Vec<f32>,
        h: &Vec<f32>,
        residual: Option<&Vec<f32>>,
        stats: &mut Vec<f32>,
        a: &mut Vec<f32>,
    ) -> Result<()> {
        let len = bn.rows * bn.cols;
        batchnorm::batchnorm_finish(
            &h[..len],
            &mut a[..len],
            bn.rows,
            bn.cols,
            count,
            &sums[..3 * bn.cols],
            layer(bn, params, running, stats),
            residual.map(|r| &r[..len]),
            bn.relu,
        );
        Ok(())
    }

    fn batchnorm_forward(
        &self,
        bn: &BatchNorm,
        mode: BnMode,
        params: &Vec<f32>,
        running: &mut Vec<f32>,
        h: &Vec<f32>,
        residual: Option<&Vec<f32>>,
        stats: &mut Vec<f32>,
        a: &mut Vec<f32>,
    ) -> Result<()> {
        let len = bn.rows * bn.cols;
        batchnorm::batchnorm_forward(
            &h[..len],
            &mut a[..len],
            bn.rows,
            bn.cols,
            mode,
            layer(bn, params, running, stats),
            residual.map(|r| &r[..len]),
            bn.relu,
        );
        Ok(())
    }

    fn batchnorm_backward(
        &self,
        bn: &BatchNorm,
        params: &Vec<f32>,
        h: &Vec<f32>,
        a: &Vec<f32>,
        stats: &Vec<f32>,
        grad: &mut Vec<f32>,
        grads: &mut Vec<f32>,
        residual_grad: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        let (len, c) = (bn.rows * bn.cols, bn.cols);
        let (gamma, beta, bias) = split_bn_grads(grads, bn);
        let (mean, invstd) = stats[..2 * c].split_at(c);
        batchnorm::batchnorm_backward(
            &h[..len],
            &a[..len],
            &mut grad[..len],
            bn.rows,
            c,
            bn.relu,
            &params[bn.gamma.clone()],
            (mean, invstd),
            BnGrads {
                gamma,
                beta,
                linear_bias: bias,
            },
            residual_grad.map(|r| &mut r[..len]),
        );
        Ok(())
    }

    fn batchnorm_backward_sums(
        &self,
        bn: &BatchNorm,
        h: &Vec<f32>,
        a: &Vec<f32>,
        stats: &Vec<f32>,
        grad: &Vec<f32>,
        sums: &mut Vec<f32>,
        residual_grad: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        let (len, c) = (bn.rows * bn.cols, bn.cols);
        let (mean, invstd) = stats[..2 * c].split_at(c);
        batchnorm::batchnorm_backward_sums(
            &h[..len],
            &a[..len],
            &grad[..len],
            bn.rows,
            c,
            bn.relu,
            (mean, invstd),
            &mut sums[..2 * c],
            residual_grad.map(|r| &mut r[..len]),
        );
        Ok(())
    }

    fn batchnorm_backward_finish(
        &self,
        bn: &BatchNorm,
        count: usize,
        local: &Vec<f32>,
        global: &Vec<f32>,
        params: &Vec<f32>,
        h: &Vec<f32>,
        a: &Vec<f32>,
        stats: &Vec<f32>,
        grad: &mut Vec<f32>,
        grads: &mut Vec<f32>,
    ) -> Result<()> {
        let (len, c) = (bn.rows * bn.cols, bn.cols);
        let (gamma, beta, bias) = split_bn_grads(grads, bn);
        let (mean, invstd) = stats[..2 * c].split_at(c);
        batchnorm::batchnorm_backward_finish(
            &h[..len],
            &a[..len],
            &mut grad[..len],
            bn.rows,
            c,
            count,
            bn.relu,
            &params[bn.gamma.clone()],
            (mean, invstd),
            (&local[..2 * c], &global[..2 * c]),
            BnGrads {
                gamma,
                beta,
                linear_bias: bias,
            },
        );
        Ok(())
    }

    fn maxpool_forward(
        &self,
        g: ConvGeometry,
        n: usize,
        x: &Vec<f32>,
        out: &mut Vec<f32>,
        argmax: &mut Vec<u32>,
    ) -> Result<()> {
        let len = n * g.out_h() * g.out_w() * g.cin;
        maxpool_forward(
            g,
            &x[..n * g.h * g.w * g.cin],
            n,
            &mut out[..len],
            &mut argmax[..len],
        );
        Ok(())
    }

    fn maxpool_backward(
        &self,
        g: ConvGeometry,
        n: usize,
        dout: &Vec<f32>,
        argmax: &Vec<u32>,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        let len = n * g.out_h() * g.out_w() * g.cin;
        maxpool_backward(
            g,
            &dout[..len],
            &argmax[..len],
            n,
            &mut dx[..n * g.h * g.w * g.cin],
        );
        Ok(())
    }

    fn avgpool_forward(
        &self,
        n: usize,
        hw: usize,
        c: usize,
        x: &Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        avgpool_forward(&x[..n * hw * c], n, hw, c, &mut out[..n * c]);
        Ok(())
    }

    fn avgpool_backward(
        &self,
        n: usize,
        hw: usize,
        c: usize,
        dout: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        avgpool_backward(&dout[..n * c], n, hw, c, &mut dx[..n * hw * c]);
        Ok(())
    }

    fn simplicial_forward(&self, op: &Simplicial, z: &Vec<f32>, s: &mut Vec<f32>) -> Result<()> {
        op.check(Self::len(z), Self::len(s))?;
        let len = op.rows * op.cols;
        simplicial_forward(op, &z[..len], &mut s[..len]);
        Ok(())
    }

    fn simplicial_backward(
        &self,
        op: &Simplicial,
        s: &Vec<f32>,
        grad: &mut Vec<f32>,
    ) -> Result<()> {
        op.check(Self::len(s), Self::len(grad))?;
        let len = op.rows * op.cols;
        simplicial_backward(op, &s[..len], &mut grad[..len]);
        Ok(())
    }

    fn nmse_loss_unchecked(
        &self,
        p: &Vec<f32>,
        z: &Vec<f32>,
        rows: usize,
        dim: usize,
        grad_p: Option<&mut Vec<f32>>,
    ) -> Result<f32> {
        Ok(nmse_loss(p, z, rows, dim, grad_p.map(|g| &mut g[..])))
    }

    fn objective_direction(
        &self,
        objective: &Objective,
        anchors: &Vec<f32>,
        positives: &Vec<f32>,
        same_view: &Vec<f32>,
        rows: usize,
        dim: usize,
        grads: DirectionGrads<'_, Vec<f32>>,
    ) -> Result<f32> {
        let len = rows * dim;
        Ok(objective.direction(
            &anchors[..len],
            &positives[..len],
            &same_view[..len],
            rows,
            dim,
            DirectionGrads {
                anchors: &mut grads.anchors[..len],
                positives: grads.positives.map(|g| &mut g[..len]),
                same_view: grads.same_view.map(|g| &mut g[..len]),
            },
        ))
    }

    fn optimizer_step(
        &self,
        optimizer: &Optimizer,
        tensors: &[TensorStep],
        state: OptimizerState<'_, Vec<f32>>,
        grads: &Vec<f32>,
        t: u64,
        lr: f32,
    ) -> Result<()> {
        optimizer.step(
            tensors,
            state.params,
            grads,
            state.momentum,
            state.second_moment,
            t,
            lr,
        );
        Ok(())
    }

    fn upload_images(&self, images: &[u8]) -> Result<Vec<u8>> {
        Ok(images.to_vec())
    }
    fn augment_unchecked(
        &self,
        op: &AugmentOp<'_>,
        images: &Vec<u8>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let (px, image) = (op.size * op.size * 3, op.h * op.w * 3);
        out[..op.index.len() * px]
            .par_chunks_mut(px)
            .zip(op.index.par_iter().zip(op.params))
            .for_each(|(o, (&i, p))| {
                let img = &images[i as usize * image..][..image];
                apply_view(p, img, op.w, op.size, op.mean, op.std, o)
            });
        Ok(())
    }
    fn ema_update_unchecked(
        &self,
        target: &mut Vec<f32>,
        online: &Vec<f32>,
        tau: f32,
    ) -> Result<()> {
        let n = target.len();
        ema_update(target, &online[..n], tau);
        Ok(())
    }
}

/// γ's, β's and (when the layer has one) the preceding Linear bias's gradients, mutably.
fn split_bn_grads<'a>(
    grads: &'a mut [f32],
    bn: &BatchNorm,
) -> (&'a mut [f32], &'a mut [f32], &'a mut [f32]) {
    match &bn.linear_bias {
        None => {
            let (g, b) = two_mut(grads, &bn.gamma, &bn.beta);
            (g, b, &mut [])
        }
        Some(bias) => {
            assert!(
                bias.end <= bn.gamma.start,
                "a Linear's bias precedes its BatchNorm"
            );
            let (left, right) = grads.split_at_mut(bn.gamma.start);
            let (g, b) = two_mut(
                right,
                &(0..bn.gamma.len()),
                &shift(&bn.beta, bn.gamma.start),
            );
            (g, b, &mut left[bias.clone()])
        }
    }
}

fn shift(r: &Range<usize>, by: usize) -> Range<usize> {
    r.start - by..r.end - by
}

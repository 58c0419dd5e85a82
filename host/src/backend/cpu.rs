//! The CPU backend: the kernel crate's functions driven by rayon (see [`crate::cpu`]), GEMMs by
//! the `gemm` crate.

use super::{Backend, MlpSaved, MlpState};
use crate::cpu::batchnorm::{batchnorm_backward, batchnorm_forward, BnLayer};
use crate::cpu::linear::{linear_backward, linear_forward};
use crate::error::Result;
use crate::mlp::BnMode;
use kernels::batchnorm::BnGrads;
use kernels::{ema, loss};
use rayon::prelude::*;

/// Elements per rayon task for element-wise kernels (large enough to amortise scheduling).
const ELEMENT_CHUNK: usize = 1 << 16;

/// The CPU backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Backend for Cpu {
    type Buffer = Vec<f32>;

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }
    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }
    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }
    fn fill_zero(&self, buf: &mut Vec<f32>) -> Result<()> {
        buf.fill(0.0);
        Ok(())
    }
    fn len(buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn ema_update_unchecked(
        &self,
        target: &mut Vec<f32>,
        online: &Vec<f32>,
        tau: f32,
    ) -> Result<()> {
        target
            .par_chunks_mut(ELEMENT_CHUNK)
            .zip(online.par_chunks(ELEMENT_CHUNK))
            .for_each(|(t, o)| ema::ema_update(t, o, tau));
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
        // Per-row losses first, summed in row order: the same total for any thread count.
        let losses: Vec<f32> = p
            .par_chunks(dim)
            .zip(z.par_chunks(dim))
            .map(|(p, z)| loss::nmse_row_forward(p, z))
            .collect();
        if let Some(g) = grad_p {
            let scale = 1.0 / rows as f32;
            g.par_chunks_mut(dim)
                .zip(p.par_chunks(dim).zip(z.par_chunks(dim)))
                .for_each(|(g, (p, z))| loss::nmse_row_backward(p, z, scale, g));
        }
        Ok(losses.iter().sum::<f32>() / rows as f32)
    }

    fn mlp_forward_unchecked(
        &self,
        state: &mut MlpState<Vec<f32>>,
        x: &Vec<f32>,
        mode: BnMode,
        saved: &mut MlpSaved<Vec<f32>>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let (mlp, batch) = (state.mlp, saved.batch);
        let p = &state.params;
        linear_forward(
            &mut saved.h,
            x,
            &p[mlp.w1()],
            &p[mlp.b1()],
            batch,
            mlp.input,
            mlp.hidden,
        );
        let (running_mean, running_var) = state.running.split_at_mut(mlp.hidden);
        let (mean, invstd) = saved.stats.split_at_mut(mlp.hidden);
        let layer = BnLayer {
            gamma: &p[mlp.gamma()],
            beta: &p[mlp.beta()],
            running_mean,
            running_var,
            mean,
            invstd,
        };
        batchnorm_forward(
            &saved.h,
            &mut saved.a,
            batch,
            mlp.hidden,
            mode,
            layer,
            None,
            true,
        );
        linear_forward(
            out,
            &saved.a,
            &p[mlp.w2()],
            &p[mlp.b2()],
            batch,
            mlp.hidden,
            mlp.output,
        );
        Ok(())
    }

    fn mlp_backward_unchecked(
        &self,
        state: &MlpState<Vec<f32>>,
        x: &Vec<f32>,
        saved: &mut MlpSaved<Vec<f32>>,
        grad_out: &Vec<f32>,
        grads: &mut Vec<f32>,
        grad_x: &mut Vec<f32>,
    ) -> Result<()> {
        let (mlp, batch) = (state.mlp, saved.batch);
        let p = &state.params;
        let (i, hd, o) = (mlp.input, mlp.hidden, mlp.output);
        // Second Linear: its weight and bias, and the gradient flowing into the hidden layer.
        let (head, b2) = grads.split_at_mut(mlp.b2().start);
        let dw2 = &mut head[mlp.w2()];
        linear_backward(
            dw2,
            b2,
            Some(&mut saved.grad_hidden),
            &saved.a,
            &p[mlp.w2()],
            grad_out,
            batch,
            hd,
            o,
        );
        // ReLU + BatchNorm backward, in place on grad_hidden.
        let (w1_b1, rest) = grads.split_at_mut(mlp.gamma().start);
        let (dgamma, rest) = rest.split_at_mut(hd);
        let grads_bn = BnGrads {
            gamma: dgamma,
            beta: &mut rest[..hd],
            linear_bias: &mut w1_b1[mlp.b1()],
        };
        let (mean, invstd) = saved.stats.split_at(hd);
        let gh = &mut saved.grad_hidden;
        batchnorm_backward(
            &saved.h,
            &saved.a,
            gh,
            batch,
            hd,
            true,
            &p[mlp.gamma()],
            (mean, invstd),
            grads_bn,
            None,
        );
        // First Linear: weight and input gradients (its bias gradient came from the BN).
        linear_backward(
            &mut grads[mlp.w1()],
            &mut [],
            Some(grad_x),
            x,
            &p[mlp.w1()],
            &saved.grad_hidden,
            batch,
            i,
            hd,
        );
        Ok(())
    }
}

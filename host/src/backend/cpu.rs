//! The CPU backend: the kernel crate's functions driven by rayon (see [`crate::cpu`]), GEMMs by
//! the `gemm` crate.

use super::{Backend, MlpSaved, MlpState};
use crate::cpu::batchnorm::BnMode;
use crate::cpu::{ema_update, nmse_loss};
use crate::error::Result;
use crate::nn::mlp::{mlp_backward, mlp_forward, MlpBuffers};

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
        ema_update(target, online, tau);
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

    fn mlp_forward_unchecked(
        &self,
        state: &mut MlpState<Vec<f32>>,
        x: &Vec<f32>,
        mode: BnMode,
        saved: &mut MlpSaved<Vec<f32>>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let batch = saved.batch;
        mlp_forward(
            &state.mlp,
            &state.params,
            &mut state.running,
            x,
            batch,
            mode,
            buffers(saved),
            out,
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
        let batch = saved.batch;
        mlp_backward(
            &state.mlp,
            &state.params,
            x,
            batch,
            buffers(saved),
            grad_out,
            grads,
            grad_x,
        );
        Ok(())
    }
}

fn buffers(saved: &mut MlpSaved<Vec<f32>>) -> MlpBuffers<'_> {
    MlpBuffers {
        h: &mut saved.h,
        a: &mut saved.a,
        stats: &mut saved.stats,
        grad_hidden: &mut saved.grad_hidden,
    }
}

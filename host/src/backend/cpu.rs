//! The CPU backend: the kernel crate's functions driven by rayon, GEMMs by the `gemm` crate.
//!
//! Column-tile kernels run one tile of [`TILE`] columns per rayon task. Tiles are disjoint,
//! which is what makes the shared raw-pointer writes below sound.

use super::gemm::matmul;
use super::{Backend, MlpSaved, MlpState};
use crate::error::Result;
use crate::mlp::BnMode;
use kernels::bn_relu::{self, Affine, BatchStats, BnGrads, ColumnTile, Running};
use kernels::{ema, linear, loss};
use rayon::prelude::*;

/// Columns per CPU tile. A tile of 256 columns × 256 rows is 256 KiB: it stays in L2 from the
/// statistics pass to the normalising pass, and each row segment (1 KiB) is a stream the
/// prefetchers follow. Narrow tiles (16) jump a page per row and measured 1.6× slower.
pub const TILE: usize = 256;

/// Elements per rayon task for element-wise kernels (large enough to amortise scheduling).
const ELEMENT_CHUNK: usize = 1 << 16;

/// The CPU backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// A pointer into a buffer whose column tiles different rayon tasks write.
#[derive(Clone, Copy)]
struct TilePtr(*mut f32);
// SAFETY: every task touches only its own tile's columns (see `par_column_tiles`).
unsafe impl Send for TilePtr {}
unsafe impl Sync for TilePtr {}

impl TilePtr {
    fn new(buf: &mut [f32]) -> Self {
        TilePtr(buf.as_mut_ptr())
    }
    /// The whole buffer (a method, so closures capture the `Send` wrapper, not the field).
    fn ptr(self) -> *mut f32 {
        self.0
    }
    /// The tile's slice of a per-column vector.
    ///
    /// # Safety
    /// No other live reference covers columns `[c0, c0 + width)` of the vector.
    unsafe fn cols<'a>(self, t: ColumnTile) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(t.c0), t.width)
    }
}

/// Runs `f` on every tile of [`TILE`] columns of a `[rows, cols]` matrix, in parallel.
fn par_column_tiles(rows: usize, cols: usize, f: impl Fn(ColumnTile) + Sync) {
    (0..cols.div_ceil(TILE)).into_par_iter().for_each(|i| {
        let c0 = i * TILE;
        f(ColumnTile {
            rows,
            cols,
            c0,
            width: TILE.min(cols - c0),
        })
    });
}

fn cols(v: &[f32], t: ColumnTile) -> &[f32] {
    &v[t.c0..t.c0 + t.width]
}

/// `out [rows, n] = x [rows, k] · wᵀ (+ bias)` with `w [n, k]` as PyTorch stores it.
fn linear_forward(
    out: &mut [f32],
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    rows: usize,
    k: usize,
    n: usize,
) {
    let has_bias = !bias.is_empty();
    if has_bias {
        let dst = TilePtr::new(out);
        // SAFETY: tiles are disjoint; `out` holds rows·n values.
        par_column_tiles(rows, n, |t| unsafe {
            linear::bias_fill_tile(t, dst.ptr(), cols(bias, t))
        });
    }
    matmul(out, rows, n, k, x, false, w, true, has_bias);
}

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
        let sum: f32 = p
            .par_chunks(dim)
            .zip(z.par_chunks(dim))
            .map(|(p, z)| loss::nmse_row_forward(p, z))
            .sum();
        if let Some(g) = grad_p {
            let scale = 1.0 / rows as f32;
            g.par_chunks_mut(dim)
                .zip(p.par_chunks(dim).zip(z.par_chunks(dim)))
                .for_each(|(g, (p, z))| loss::nmse_row_backward(p, z, scale, g));
        }
        Ok(sum / rows as f32)
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

        let (gamma, beta) = (&p[mlp.gamma()], &p[mlp.beta()]);
        let (h, a) = (saved.h.as_ptr() as usize, TilePtr::new(&mut saved.a));
        let (running_mean, running_var) = state.running.split_at_mut(mlp.hidden);
        match mode {
            BnMode::Train => {
                let (mean, invstd) = saved.stats.split_at_mut(mlp.hidden);
                let (mean, invstd) = (TilePtr::new(mean), TilePtr::new(invstd));
                let (rm, rv) = (TilePtr::new(running_mean), TilePtr::new(running_var));
                // SAFETY: tiles are disjoint; buffer lengths were checked by `mlp_forward`.
                par_column_tiles(batch, mlp.hidden, |t| unsafe {
                    bn_relu::forward_train_tile::<TILE>(
                        t,
                        h as *const f32,
                        a.ptr(),
                        Affine {
                            gamma: cols(gamma, t),
                            beta: cols(beta, t),
                        },
                        BatchStats {
                            mean: mean.cols(t),
                            invstd: invstd.cols(t),
                        },
                        Running {
                            mean: rm.cols(t),
                            var: rv.cols(t),
                        },
                    )
                });
            }
            BnMode::Eval => {
                let (rm, rv) = (&*running_mean, &*running_var);
                // SAFETY: as above.
                par_column_tiles(batch, mlp.hidden, |t| unsafe {
                    bn_relu::forward_eval_tile::<TILE>(
                        t,
                        h as *const f32,
                        a.ptr(),
                        Affine {
                            gamma: cols(gamma, t),
                            beta: cols(beta, t),
                        },
                        cols(rm, t),
                        cols(rv, t),
                    )
                });
            }
        }
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
        // Second Linear: bias, weight, then the gradient flowing into the hidden layer.
        if mlp.last_bias {
            let db2 = TilePtr::new(&mut grads[mlp.b2()]);
            let g = grad_out.as_ptr() as usize;
            // SAFETY: tiles are disjoint; `grad_out` holds batch·output values.
            par_column_tiles(batch, mlp.output, |t| unsafe {
                linear::column_sum_tile::<TILE>(t, g as *const f32, db2.cols(t))
            });
        }
        let (b, i, hd, o) = (batch, mlp.input, mlp.hidden, mlp.output);
        matmul(
            &mut grads[mlp.w2()],
            o,
            hd,
            b,
            grad_out,
            true,
            &saved.a,
            false,
            true,
        );
        matmul(
            &mut saved.grad_hidden,
            b,
            hd,
            o,
            grad_out,
            false,
            &p[mlp.w2()],
            false,
            false,
        );

        // Fused ReLU + BatchNorm backward, in place on grad_hidden.
        let gamma = &p[mlp.gamma()];
        let (mean, invstd) = saved.stats.split_at(hd);
        let (h, a) = (saved.h.as_ptr() as usize, saved.a.as_ptr() as usize);
        let g = TilePtr::new(&mut saved.grad_hidden);
        let (dgamma, dbeta, db1) = (
            grads[mlp.gamma()].as_mut_ptr(),
            grads[mlp.beta()].as_mut_ptr(),
            grads[mlp.b1()].as_mut_ptr(),
        );
        let (dgamma, dbeta, db1) = (TilePtr(dgamma), TilePtr(dbeta), TilePtr(db1));
        // SAFETY: tiles are disjoint; the γ, β and b1 ranges of `grads` do not overlap.
        par_column_tiles(b, hd, |t| unsafe {
            bn_relu::backward_tile::<TILE>(
                t,
                h as *const f32,
                a as *const f32,
                g.ptr(),
                cols(gamma, t),
                cols(mean, t),
                cols(invstd, t),
                BnGrads {
                    gamma: dgamma.cols(t),
                    beta: dbeta.cols(t),
                    linear_bias: db1.cols(t),
                },
            )
        });

        // First Linear: weight gradient and input gradient.
        matmul(
            &mut grads[mlp.w1()],
            hd,
            i,
            b,
            &saved.grad_hidden,
            true,
            x,
            false,
            true,
        );
        matmul(
            grad_x,
            b,
            i,
            hd,
            &saved.grad_hidden,
            false,
            &p[mlp.w1()],
            false,
            false,
        );
        Ok(())
    }
}

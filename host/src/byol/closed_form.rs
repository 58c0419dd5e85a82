//! The closed-form optimal linear predictor of the paper's appendix: instead of a learned
//! predictor, each step uses the linear map that best predicts the targets from the online
//! projections on the current batch.
//!
//! With online projections `Z [B, d]` and targets `Y [B, d]` (the other view's ψ), the
//! least-squares map is `W* = argmin_W Σ_i ‖W z_i − y_i‖²`, that is
//! `W*ᵀ = (ZᵀZ + λI)⁻¹ ZᵀY`, and the predictions are `P = Z W*ᵀ`. A tiny ridge
//! `λ = 1e-6 · tr(ZᵀZ)/d` only guards the Cholesky factorisation; the problem must be
//! overdetermined (`B > d`), or `P = Y` exactly and nothing is learned, which
//! [`check_shape`] rejects. `W*` is a function of the batch treated as a constant: the
//! gradient reaches `Z` through `P = Z W*ᵀ` only (`∂L/∂Z = ∂L/∂P · W*`).

use crate::backend::{Backend, Gemm};
use crate::error::{Error, Result};
use nalgebra::DMatrix;

/// Relative ridge added to `ZᵀZ`.
const RIDGE: f64 = 1e-6;

/// Rejects shapes where the least-squares map interpolates the targets.
pub fn check_shape(batch: usize, dim: usize) -> Result<()> {
    if batch <= dim {
        return Err(Error::InvalidArgument(format!(
            "the closed-form predictor needs more samples than projection dimensions (batch {batch} ≤ projection {dim}): with B ≤ d it fits the targets exactly; raise the batch size or lower projection_dim"
        )));
    }
    Ok(())
}

/// Writes `W*ᵀ [d, d]` (row-major) to `wt` for online projections `z` and targets `y`, both
/// `[batch, dim]`. The solve runs on the host in f64 (a `d × d` system), the products on the
/// backend.
pub fn optimal_predictor<B: Backend>(
    be: &B,
    z: &B::Buffer,
    y: &B::Buffer,
    batch: usize,
    dim: usize,
    wt: &mut B::Buffer,
) -> Result<()> {
    let (z, y) = (be.download(z)?, be.download(y)?);
    let zm = DMatrix::from_row_iterator(batch, dim, z.iter().map(|&v| v as f64));
    let ym = DMatrix::from_row_iterator(batch, dim, y.iter().map(|&v| v as f64));
    let mut gram = zm.transpose() * &zm;
    let ridge = RIDGE * gram.trace() / dim as f64 + f64::MIN_POSITIVE;
    for k in 0..dim {
        gram[(k, k)] += ridge;
    }
    let chol = gram.cholesky().ok_or_else(|| {
        Error::InvalidArgument(
            "closed-form predictor: ZᵀZ is not positive definite (non-finite projections?)".into(),
        )
    })?;
    let solution = chol.solve(&(zm.transpose() * ym));
    // nalgebra is column-major: write it out row by row.
    let mut rows = vec![0.0f32; dim * dim];
    for (r, row) in rows.chunks_mut(dim).enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = solution[(r, c)] as f32;
        }
    }
    *wt = be.upload(&rows)?;
    Ok(())
}

/// `p [batch, dim] = z W*ᵀ`.
pub fn predict<B: Backend>(
    be: &B,
    wt: &B::Buffer,
    z: &B::Buffer,
    batch: usize,
    dim: usize,
    p: &mut B::Buffer,
) -> Result<()> {
    let g = Gemm {
        m: batch,
        n: dim,
        k: dim,
        lhs_t: false,
        rhs_t: false,
        accumulate: false,
    };
    be.matmul(g, p, z, wt)
}

/// `grad_z += grad_p · W*` (W* held constant).
pub fn predict_backward<B: Backend>(
    be: &B,
    wt: &B::Buffer,
    grad_p: &B::Buffer,
    batch: usize,
    dim: usize,
    grad_z: &mut B::Buffer,
) -> Result<()> {
    let g = Gemm {
        m: batch,
        n: dim,
        k: dim,
        lhs_t: false,
        rhs_t: true,
        accumulate: true,
    };
    be.matmul(g, grad_z, grad_p, wt)
}

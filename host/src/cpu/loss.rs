//! BYOL's normalised-MSE loss on the CPU: one row per rayon task, row losses summed in row
//! order. Layout: predictions and targets `[rows, dim]`, row-major.

use kernels::loss;
use rayon::prelude::*;

/// Batch mean of the normalised MSE between `p, z [rows, dim]`; with `grad_p`, writes the
/// gradient of that mean. Row losses are summed in row order (thread-count independent).
pub fn nmse_loss(p: &[f32], z: &[f32], rows: usize, dim: usize, grad_p: Option<&mut [f32]>) -> f32 {
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
    losses.iter().sum::<f32>() / rows as f32
}

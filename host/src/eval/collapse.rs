//! Collapse diagnostics (the paper's failure mode: every image mapped to the same point).
//!
//! - The per-dimension standard deviation of ℓ2-normalised projector outputs, averaged over
//!   dimensions: about 1/√d for outputs spread over the sphere, 0 when they all coincide.
//! - The effective rank of a batch of representations (Roy & Vetterli): `exp(H(σ / Σσ))` of
//!   the singular values σ of the centred batch; from 1 (one direction) up to the dimension.
//! - Collapsed: the normalised spread below a tenth of the healthy value, `std·√d < 0.1`.

use nalgebra::DMatrix;

/// What [`diagnose`] measures.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Collapse {
    /// Mean per-dimension std of the ℓ2-normalised projections.
    pub projection_std: f64,
    /// `1/√d` for the projection dimension: the healthy reference.
    pub healthy_std: f64,
    pub effective_rank: f64,
    pub collapsed: bool,
}

/// Diagnostics of representations `[n, repr_dim]` and their projections `[n, proj_dim]`.
pub fn diagnose(reprs: &[f32], repr_dim: usize, projections: &[f32], proj_dim: usize) -> Collapse {
    let n = projections.len() / proj_dim;
    let normalised: Vec<f64> = projections
        .chunks(proj_dim)
        .flat_map(|r| {
            let norm = r
                .iter()
                .map(|&v| (v as f64).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            r.iter().map(move |&v| v as f64 / norm)
        })
        .collect();
    let std = (0..proj_dim)
        .map(|j| {
            let col = (0..n).map(|i| normalised[i * proj_dim + j]);
            let mean = col.clone().sum::<f64>() / n as f64;
            (col.map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt()
        })
        .sum::<f64>()
        / proj_dim as f64;
    let healthy = 1.0 / (proj_dim as f64).sqrt();
    Collapse {
        projection_std: std,
        healthy_std: healthy,
        effective_rank: effective_rank(reprs, repr_dim),
        collapsed: std < 0.1 * healthy,
    }
}

/// `exp(entropy)` of the normalised singular values of the centred `[n, d]` batch, from the
/// eigenvalues of its `d × d` covariance.
pub fn effective_rank(x: &[f32], d: usize) -> f64 {
    let n = x.len() / d;
    let mut m = DMatrix::<f64>::from_fn(n, d, |i, j| x[i * d + j] as f64);
    for j in 0..d {
        let mean = m.column(j).mean();
        m.column_mut(j).add_scalar_mut(-mean);
    }
    let cov = m.transpose() * &m;
    let sigma: Vec<f64> = cov
        .symmetric_eigenvalues()
        .iter()
        .map(|&e| e.max(0.0).sqrt())
        .collect();
    let total: f64 = sigma.iter().sum();
    if total <= 0.0 {
        return 1.0;
    }
    let entropy: f64 = sigma
        .iter()
        .filter(|&&s| s > 0.0)
        .map(|&s| -(s / total) * (s / total).ln())
        .sum();
    entropy.exp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn spread_data_should_be_healthy_and_identical_rows_collapsed() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (n, d) = (400, 16);
        let gauss: Vec<f32> = (0..n * d)
            .map(|_| r.random_range(-1.0f32..1.0) + r.random_range(-1.0f32..1.0))
            .collect();
        let healthy = diagnose(&gauss, d, &gauss, d);
        assert!(
            (healthy.projection_std / healthy.healthy_std - 1.0).abs() < 0.15,
            "{healthy:?}"
        );
        assert!(
            healthy.effective_rank > 14.0 && healthy.effective_rank <= 16.0,
            "{healthy:?}"
        );
        assert!(!healthy.collapsed);
        let same: Vec<f32> = gauss[..d].repeat(n);
        let collapsed = diagnose(&same, d, &same, d);
        assert!(
            collapsed.projection_std < 1e-9 && collapsed.collapsed,
            "{collapsed:?}"
        );
        assert_eq!(collapsed.effective_rank, 1.0);
    }

    #[test]
    fn effective_rank_should_count_equal_directions() {
        // Points on 3 orthogonal axes with equal spread: singular values equal, rank 3.
        let d = 5;
        let mut x = vec![0.0f32; 6 * d];
        for (i, (axis, sign)) in [
            (0, 1.0),
            (0, -1.0),
            (2, 1.0),
            (2, -1.0),
            (4, 1.0),
            (4, -1.0),
        ]
        .iter()
        .enumerate()
        {
            x[i * d + axis] = *sign;
        }
        assert!((effective_rank(&x, d) - 3.0).abs() < 1e-9);
    }
}

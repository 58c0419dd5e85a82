//! The loss of one direction of the step, with the paper's ablations of it: how predictions
//! and targets are normalised before the mean squared error, and the β-weighted contrastive
//! term that turns BYOL into a SimCLR-like objective.
//!
//! One direction compares the online network's outputs on one view (the *anchors* `a`,
//! `[rows, dim]`: predictions, or projections without a predictor) with `ψ` of the other view
//! (the *positives*, `[rows, dim]`) and, for the contrastive term, `ψ` of the same view (the
//! *same-view* rows). `ψ` is the target network's projection, or the online projection
//! itself when there is no target network; only then do positives and same-view rows get a
//! gradient. Every loss is a batch mean.
//!
//! **Contrastive term** (paper §4.4, eq. 8): with `S(i, j) = ⟨ā_i, ψ̄_j⟩` (cosine) the paper
//! maximises `InfoNCE = (2/B)·Σ_i S(v_i, v′_i) − β·(2α/B)·Σ_i ln(Σ_{j≠i} e^{S(v_i, v_j)/α} +
//! Σ_j e^{S(v_i, v′_j)/α})`. We minimise `2 − InfoNCE`, which at β = 0 is exactly BYOL's
//! `mean(2 − 2·cos)`, and at β = 1 is `2 + 2α·` SimCLR's NT-Xent of the direction. α is the
//! temperature (0.1 by default, SimCLR's ImageNet value).
//!
//! **Normalisation** (β = 0 only): `ℓ2` is BYOL's `‖ā − ψ̄‖²` (through the kernel crate's
//! row functions, the same code the GPU runs); `none` is `‖a − ψ‖²`; `layernorm` and
//! `batchnorm` standardise each row (over features) or each column (over the batch) without
//! an affine, and divide `‖·‖²` by `dim`, so all four losses start on the same scale
//! (LayerNorm's loss is `2 − 2·` Pearson correlation).

use super::gemm::matmul;
use super::nmse_loss;
use crate::error::{Error, Result};
use kernels::loss::{nmse_row_backward, NORM_EPS};

/// ε of the LayerNorm and BatchNorm normalisations (PyTorch's default).
const STANDARDISE_EPS: f32 = 1e-5;

/// How anchors and positives are normalised before the squared error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalisation {
    L2,
    None,
    LayerNorm,
    BatchNorm,
}

impl std::str::FromStr for Normalisation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "l2" => Normalisation::L2,
            "none" => Normalisation::None,
            "layernorm" => Normalisation::LayerNorm,
            "batchnorm" => Normalisation::BatchNorm,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "loss normalisation {s:?}: expected l2, none, layernorm or batchnorm"
                )))
            }
        })
    }
}

/// The loss of one direction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Objective {
    pub normalisation: Normalisation,
    /// Weight β of the contrastive term (0: BYOL).
    pub beta: f32,
    /// Temperature α of the contrastive term.
    pub temperature: f32,
}

impl Default for Objective {
    fn default() -> Self {
        Objective {
            normalisation: Normalisation::L2,
            beta: 0.0,
            temperature: 0.1,
        }
    }
}

/// Gradients of one direction's loss: the anchors' is overwritten; the positives' and
/// same-view rows' (given only when ψ is the online network) are accumulated.
/// (`T` is the buffer: a slice here, the backend's buffer type behind the backend trait.)
pub struct DirectionGrads<'a, T: ?Sized = [f32]> {
    pub anchors: &'a mut T,
    pub positives: Option<&'a mut T>,
    pub same_view: Option<&'a mut T>,
}

impl Objective {
    /// Rejects parameters the loss cannot use, naming the configuration field each comes from.
    pub fn validate(&self) -> Result<()> {
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return Err(Error::setting(
                "ablation.contrastive_beta",
                format!("contrastive β must be ≥ 0, got {}", self.beta),
            ));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::setting(
                "ablation.contrastive_temperature",
                format!(
                    "contrastive temperature must be positive, got {}",
                    self.temperature
                ),
            ));
        }
        if self.beta > 0.0 && self.normalisation != Normalisation::L2 {
            return Err(Error::setting(
                "ablation.loss_normalisation",
                "the contrastive term (β > 0) is defined on cosine similarities: it needs the l2 loss normalisation",
            ));
        }
        Ok(())
    }

    /// Loss of one direction (batch mean) and its gradients.
    pub fn direction(
        &self,
        anchors: &[f32],
        positives: &[f32],
        same_view: &[f32],
        rows: usize,
        dim: usize,
        grads: DirectionGrads<'_>,
    ) -> f32 {
        if self.beta > 0.0 {
            return contrastive(self, anchors, positives, same_view, rows, dim, grads);
        }
        match self.normalisation {
            Normalisation::L2 => {
                let loss = nmse_loss(anchors, positives, rows, dim, Some(grads.anchors));
                if let Some(g) = grads.positives {
                    // 2 − 2·cos is symmetric: the positives' gradient is the same function.
                    let scale = 1.0 / rows as f32;
                    let mut row = vec![0.0f32; dim];
                    for ((g, z), p) in g
                        .chunks_mut(dim)
                        .zip(positives.chunks(dim))
                        .zip(anchors.chunks(dim))
                    {
                        nmse_row_backward(z, p, scale, &mut row);
                        g.iter_mut().zip(&row).for_each(|(g, r)| *g += r);
                    }
                }
                loss
            }
            Normalisation::None => squared_error(anchors, positives, rows, dim, 1.0, grads),
            Normalisation::LayerNorm | Normalisation::BatchNorm => {
                let by_rows = self.normalisation == Normalisation::LayerNorm;
                let (na, sa) = standardise(anchors, rows, dim, by_rows);
                let (np, sp) = standardise(positives, rows, dim, by_rows);
                let mut ga = vec![0.0f32; rows * dim];
                let mut gp = grads.positives.as_ref().map(|_| vec![0.0f32; rows * dim]);
                let loss = squared_error(
                    &na,
                    &np,
                    rows,
                    dim,
                    1.0 / dim as f32,
                    DirectionGrads {
                        anchors: &mut ga,
                        positives: gp.as_deref_mut(),
                        same_view: None,
                    },
                );
                standardise_backward(&na, &sa, &ga, rows, dim, by_rows, grads.anchors, false);
                if let (Some(g), Some(gp)) = (grads.positives, gp) {
                    standardise_backward(&np, &sp, &gp, rows, dim, by_rows, g, true);
                }
                loss
            }
        }
    }
}

/// `mean_i scale·‖a_i − p_i‖²`.
fn squared_error(
    a: &[f32],
    p: &[f32],
    rows: usize,
    dim: usize,
    scale: f32,
    grads: DirectionGrads<'_>,
) -> f32 {
    let mut loss = 0.0f64;
    let c = 2.0 * scale / rows as f32;
    for (i, (ar, pr)) in a.chunks(dim).zip(p.chunks(dim)).enumerate() {
        let mut row = 0.0f32;
        for (j, (&x, &y)) in ar.iter().zip(pr).enumerate() {
            let d = x - y;
            row += d * d;
            grads.anchors[i * dim + j] = c * d;
        }
        loss += (scale * row) as f64;
    }
    if let Some(g) = grads.positives {
        g.iter_mut()
            .zip(grads.anchors.iter())
            .for_each(|(g, ga)| *g -= ga);
    }
    (loss / rows as f64) as f32
}

/// Standardises `x [rows, dim]` along each row (`by_rows`, LayerNorm) or each column
/// (BatchNorm, over the batch): `(x − mean)/√(var + ε)`, biased variance. Returns the result
/// and each group's `√(var + ε)`.
fn standardise(x: &[f32], rows: usize, dim: usize, by_rows: bool) -> (Vec<f32>, Vec<f32>) {
    let (groups, len) = if by_rows { (rows, dim) } else { (dim, rows) };
    let at = |g: usize, k: usize| if by_rows { g * dim + k } else { k * dim + g };
    let mut out = vec![0.0f32; rows * dim];
    let mut sigma = vec![0.0f32; groups];
    for g in 0..groups {
        let mean = (0..len).map(|k| x[at(g, k)] as f64).sum::<f64>() / len as f64;
        let var = (0..len)
            .map(|k| (x[at(g, k)] as f64 - mean).powi(2))
            .sum::<f64>()
            / len as f64;
        let s = (var + STANDARDISE_EPS as f64).sqrt();
        sigma[g] = s as f32;
        for k in 0..len {
            out[at(g, k)] = ((x[at(g, k)] as f64 - mean) / s) as f32;
        }
    }
    (out, sigma)
}

/// Gradient through [`standardise`]: `dx = (dy − mean(dy) − y·mean(dy·y))/σ` per group;
/// written to `grad_x`, or added when `accumulate`.
#[allow(clippy::too_many_arguments)]
fn standardise_backward(
    y: &[f32],
    sigma: &[f32],
    dy: &[f32],
    rows: usize,
    dim: usize,
    by_rows: bool,
    grad_x: &mut [f32],
    accumulate: bool,
) {
    let (groups, len) = if by_rows { (rows, dim) } else { (dim, rows) };
    let at = |g: usize, k: usize| if by_rows { g * dim + k } else { k * dim + g };
    for g in 0..groups {
        let m_dy = (0..len).map(|k| dy[at(g, k)] as f64).sum::<f64>() / len as f64;
        let m_dyy = (0..len)
            .map(|k| dy[at(g, k)] as f64 * y[at(g, k)] as f64)
            .sum::<f64>()
            / len as f64;
        for k in 0..len {
            let i = at(g, k);
            let v = ((dy[i] as f64 - m_dy - y[i] as f64 * m_dyy) / sigma[g] as f64) as f32;
            grad_x[i] = if accumulate { grad_x[i] + v } else { v };
        }
    }
}

/// Rows divided by their clamped norms, and the norms.
fn l2_rows(x: &[f32], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let mut out = x.to_vec();
    let norms = out
        .chunks_mut(dim)
        .map(|r| {
            let n = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(NORM_EPS);
            r.iter_mut().for_each(|v| *v /= n);
            n
        })
        .collect();
    (out, norms)
}

/// Gradient through [`l2_rows`]: `dx = (dx̄ − x̄·⟨x̄, dx̄⟩)/‖x‖` (a plain division by ε where
/// the norm was clamped); written, or added when `accumulate`.
fn l2_rows_backward(
    xbar: &[f32],
    norms: &[f32],
    dxbar: &[f32],
    dim: usize,
    grad_x: &mut [f32],
    accumulate: bool,
) {
    for (((g, xb), d), &n) in grad_x
        .chunks_mut(dim)
        .zip(xbar.chunks(dim))
        .zip(dxbar.chunks(dim))
        .zip(norms)
    {
        let dot: f32 = if n > NORM_EPS {
            xb.iter().zip(d).map(|(a, b)| a * b).sum()
        } else {
            0.0
        };
        for ((g, &x), &dv) in g.iter_mut().zip(xb).zip(d) {
            let v = (dv - x * dot) / n;
            *g = if accumulate { *g + v } else { v };
        }
    }
}

/// `2 − InfoNCE_{α,β}` of one direction (module docs) and its gradients.
fn contrastive(
    obj: &Objective,
    anchors: &[f32],
    positives: &[f32],
    same_view: &[f32],
    rows: usize,
    dim: usize,
    grads: DirectionGrads<'_>,
) -> f32 {
    let (alpha, beta, b) = (obj.temperature, obj.beta, rows);
    let (a, na) = l2_rows(anchors, dim);
    let (o, no) = l2_rows(positives, dim);
    let (s, ns) = l2_rows(same_view, dim);
    // Cosines of every anchor with every positive and every same-view row: [B, B] each.
    let (mut cross, mut same) = (vec![0.0f32; b * b], vec![0.0f32; b * b]);
    matmul(&mut cross, b, b, dim, &a, false, &o, true, false);
    matmul(&mut same, b, b, dim, &a, false, &s, true, false);
    // Per anchor: log-sum-exp over the 2B − 1 candidates, and from it the gradients of the
    // loss with respect to the cosines (softmax weights).
    let mut loss = 0.0f64;
    let inv_b = 1.0 / b as f32;
    for i in 0..b {
        let row = |m: &[f32], j: usize| m[i * b + j] / alpha;
        let mut max = f32::NEG_INFINITY;
        for j in 0..b {
            max = max.max(row(&cross, j));
            if j != i {
                max = max.max(row(&same, j));
            }
        }
        let mut total = 0.0f64;
        for j in 0..b {
            total += ((row(&cross, j) - max) as f64).exp();
            if j != i {
                total += ((row(&same, j) - max) as f64).exp();
            }
        }
        let lse = max as f64 + total.ln();
        loss += 2.0 - 2.0 * cross[i * b + i] as f64 + 2.0 * (alpha * beta) as f64 * lse;
        for j in 0..b {
            let wc = ((row(&cross, j) as f64 - lse).exp()) as f32;
            let ws = if j == i {
                0.0
            } else {
                ((row(&same, j) as f64 - lse).exp()) as f32
            };
            cross[i * b + j] = inv_b * (2.0 * beta * wc - if j == i { 2.0 } else { 0.0 });
            same[i * b + j] = inv_b * 2.0 * beta * ws;
        }
    }
    // Now `cross` and `same` hold ∂L/∂cos. Back through the products and the normalisations.
    let mut d = vec![0.0f32; b * dim];
    matmul(&mut d, b, dim, b, &cross, false, &o, false, false);
    matmul(&mut d, b, dim, b, &same, false, &s, false, true);
    l2_rows_backward(&a, &na, &d, dim, grads.anchors, false);
    if let Some(g) = grads.positives {
        matmul(&mut d, b, dim, b, &cross, true, &a, false, false);
        l2_rows_backward(&o, &no, &d, dim, g, true);
    }
    if let Some(g) = grads.same_view {
        matmul(&mut d, b, dim, b, &same, true, &a, false, false);
        l2_rows_backward(&s, &ns, &d, dim, g, true);
    }
    (loss / b as f64) as f32
}

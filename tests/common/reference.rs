//! Naive f64 references, written from the textbook formulas and independently of the kernel
//! crate (no shared code): they are what the kernels are judged against.

/// `out[r][c]` of a row-major matrix.
fn at(m: &[f64], cols: usize, r: usize, c: usize) -> f64 {
    m[r * cols + c]
}

/// BYOL loss of one pair of rows as the issue and byol-pytorch define it:
/// `2 − 2·Σ (p_i/‖p‖)(z_i/‖z‖)`, norms clamped at 1e-12. (It equals `‖p̄ − z̄‖²` when both rows
/// are non-zero; for a zero row it is 2, where `‖p̄ − z̄‖²` would be 1.)
pub fn nmse_row(p: &[f64], z: &[f64]) -> f64 {
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    let (np, nz) = (norm(p), norm(z));
    2.0 - 2.0
        * p.iter()
            .zip(z)
            .map(|(a, b)| (a / np) * (b / nz))
            .sum::<f64>()
}

/// Gradient of the batch mean of [`nmse_row`] with respect to `p`, from the Jacobian of the
/// normalisation applied term by term: `∂L/∂p_j = −2 Σ_i ẑ_i ∂p̂_i/∂p_j`.
pub fn nmse_grad(p: &[f64], z: &[f64], rows: usize, dim: usize) -> Vec<f64> {
    let mut g = vec![0.0; rows * dim];
    for r in 0..rows {
        let (p, z) = (&p[r * dim..][..dim], &z[r * dim..][..dim]);
        let n = p.iter().map(|x| x * x).sum::<f64>().sqrt();
        let nz = z.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        for j in 0..dim {
            // ∂p̂_i/∂p_j = δ_ij/n − p_i p_j / n³, or δ_ij/ε where the norm is clamped
            let mut s = 0.0;
            for i in 0..dim {
                let d = if n > 1e-12 {
                    (if i == j { 1.0 / n } else { 0.0 }) - p[i] * p[j] / (n * n * n)
                } else if i == j {
                    1e12
                } else {
                    0.0
                };
                s += -2.0 * (z[i] / nz) * d;
            }
            g[r * dim + j] = s / rows as f64;
        }
    }
    g
}

/// Parameters of the MLP in f64, separate tensors.
pub struct RefMlp {
    pub input: usize,
    pub hidden: usize,
    pub output: usize,
    pub w1: Vec<f64>,
    pub b1: Vec<f64>,
    pub gamma: Vec<f64>,
    pub beta: Vec<f64>,
    pub w2: Vec<f64>,
    pub b2: Option<Vec<f64>>,
}

/// Everything the reference forward computes, for the checks and the reference backward.
pub struct RefForward {
    pub h: Vec<f64>,
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    pub y: Vec<f64>,
    pub a: Vec<f64>,
    pub out: Vec<f64>,
}

/// Gradients of every parameter and of the input.
pub struct RefGrads {
    pub w1: Vec<f64>,
    pub b1: Vec<f64>,
    pub gamma: Vec<f64>,
    pub beta: Vec<f64>,
    pub w2: Vec<f64>,
    pub b2: Vec<f64>,
    pub x: Vec<f64>,
}

const EPS: f64 = 1e-5;

impl RefMlp {
    /// Forward; `running = Some((mean, var))` normalises with those (evaluation mode),
    /// `None` with the batch's biased statistics (training mode).
    pub fn forward(
        &self,
        x: &[f64],
        batch: usize,
        running: Option<(&[f64], &[f64])>,
    ) -> RefForward {
        let (i_n, h_n, o_n) = (self.input, self.hidden, self.output);
        let mut h = vec![0.0; batch * h_n];
        for b in 0..batch {
            for j in 0..h_n {
                let mut s = self.b1[j];
                for i in 0..i_n {
                    s += at(x, i_n, b, i) * at(&self.w1, i_n, j, i);
                }
                h[b * h_n + j] = s;
            }
        }
        let mut mean = vec![0.0; h_n];
        let mut var = vec![0.0; h_n];
        for j in 0..h_n {
            mean[j] = (0..batch).map(|b| h[b * h_n + j]).sum::<f64>() / batch as f64;
            var[j] = (0..batch)
                .map(|b| (h[b * h_n + j] - mean[j]).powi(2))
                .sum::<f64>()
                / batch as f64;
        }
        let (m, v) = running.unwrap_or((&mean, &var));
        let mut y = vec![0.0; batch * h_n];
        for b in 0..batch {
            for j in 0..h_n {
                y[b * h_n + j] =
                    self.gamma[j] * (h[b * h_n + j] - m[j]) / (v[j] + EPS).sqrt() + self.beta[j];
            }
        }
        let a: Vec<f64> = y.iter().map(|&v| v.max(0.0)).collect();
        let mut out = vec![0.0; batch * o_n];
        for b in 0..batch {
            for o in 0..o_n {
                let mut s = self.b2.as_ref().map_or(0.0, |b2| b2[o]);
                for j in 0..h_n {
                    s += a[b * h_n + j] * at(&self.w2, h_n, o, j);
                }
                out[b * o_n + o] = s;
            }
        }
        RefForward {
            h,
            mean,
            var,
            y,
            a,
            out,
        }
    }

    /// Training-mode backward by the classic step-by-step BatchNorm derivation
    /// (through ∂L/∂x̂, ∂L/∂var and ∂L/∂mean).
    pub fn backward(&self, x: &[f64], batch: usize, f: &RefForward, dout: &[f64]) -> RefGrads {
        let (i_n, h_n, o_n) = (self.input, self.hidden, self.output);
        let n = batch as f64;
        let mut g = RefGrads {
            w1: vec![0.0; h_n * i_n],
            b1: vec![0.0; h_n],
            gamma: vec![0.0; h_n],
            beta: vec![0.0; h_n],
            w2: vec![0.0; o_n * h_n],
            b2: vec![0.0; o_n],
            x: vec![0.0; batch * i_n],
        };
        let mut dy = vec![0.0; batch * h_n];
        for b in 0..batch {
            for o in 0..o_n {
                let d = dout[b * o_n + o];
                g.b2[o] += d;
                for j in 0..h_n {
                    g.w2[o * h_n + j] += d * f.a[b * h_n + j];
                }
            }
            for j in 0..h_n {
                let da: f64 = (0..o_n)
                    .map(|o| dout[b * o_n + o] * at(&self.w2, h_n, o, j))
                    .sum();
                dy[b * h_n + j] = if f.y[b * h_n + j] > 0.0 { da } else { 0.0 };
            }
        }
        let mut dh = vec![0.0; batch * h_n];
        for j in 0..h_n {
            let std = (f.var[j] + EPS).sqrt();
            let xhat = |b: usize| (f.h[b * h_n + j] - f.mean[j]) / std;
            let dxhat = |b: usize| dy[b * h_n + j] * self.gamma[j];
            for b in 0..batch {
                g.gamma[j] += dy[b * h_n + j] * xhat(b);
                g.beta[j] += dy[b * h_n + j];
            }
            let dvar: f64 = (0..batch)
                .map(|b| {
                    dxhat(b) * (f.h[b * h_n + j] - f.mean[j]) * -0.5 * (f.var[j] + EPS).powf(-1.5)
                })
                .sum();
            let dmean: f64 = (0..batch).map(|b| -dxhat(b) / std).sum::<f64>()
                + dvar
                    * (0..batch)
                        .map(|b| -2.0 * (f.h[b * h_n + j] - f.mean[j]))
                        .sum::<f64>()
                    / n;
            for b in 0..batch {
                dh[b * h_n + j] =
                    dxhat(b) / std + dvar * 2.0 * (f.h[b * h_n + j] - f.mean[j]) / n + dmean / n;
            }
        }
        for b in 0..batch {
            for j in 0..h_n {
                let d = dh[b * h_n + j];
                g.b1[j] += d;
                for i in 0..i_n {
                    g.w1[j * i_n + i] += d * at(x, i_n, b, i);
                    g.x[b * i_n + i] += d * at(&self.w1, i_n, j, i);
                }
            }
        }
        g
    }
}

/// Cosine of two rows (norms clamped at 1e-12).
fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (norm(a) * norm(b))
}

/// `2 − InfoNCE_{α,β}` of one direction, term by term from the paper's eq. (8):
/// `InfoNCE = (2/B) Σ_i S(v_i, v′_i) − β (2α/B) Σ_i ln(Σ_{j≠i} exp(S(v_i, v_j)/α) +
/// Σ_j exp(S(v_i, v′_j)/α))`, `S` the cosine of an anchor (`a`) with a ψ row: of the other
/// view (`o`) or of the same view (`s`). All `[rows, dim]`.
pub fn info_nce_loss(
    a: &[f64],
    o: &[f64],
    s: &[f64],
    rows: usize,
    dim: usize,
    alpha: f64,
    beta: f64,
) -> f64 {
    let row = |m: &[f64], i: usize| m[i * dim..(i + 1) * dim].to_vec();
    let b = rows as f64;
    let mut positives = 0.0;
    let mut log_terms = 0.0;
    for i in 0..rows {
        let ai = row(a, i);
        positives += cosine(&ai, &row(o, i));
        let mut sum = 0.0;
        for j in 0..rows {
            if j != i {
                sum += (cosine(&ai, &row(s, j)) / alpha).exp();
            }
            sum += (cosine(&ai, &row(o, j)) / alpha).exp();
        }
        log_terms += sum.ln();
    }
    let info_nce = 2.0 / b * positives - beta * 2.0 * alpha / b * log_terms;
    2.0 - info_nce
}

/// Batch mean of `scale·‖n(a_i) − n(p_i)‖²` where `n` standardises each row (`by_rows`) or
/// each column over the batch to zero mean and unit (biased) variance, ε = 1e-5 under the
/// square root; `n` is the identity when `standardise` is false.
pub fn normalised_squared_error(
    a: &[f64],
    p: &[f64],
    rows: usize,
    dim: usize,
    standardise: Option<bool>,
) -> f64 {
    let norm = |m: &[f64]| -> Vec<f64> {
        let Some(by_rows) = standardise else {
            return m.to_vec();
        };
        let mut out = m.to_vec();
        let (groups, len) = if by_rows { (rows, dim) } else { (dim, rows) };
        for g in 0..groups {
            let idx: Vec<usize> = (0..len)
                .map(|k| if by_rows { g * dim + k } else { k * dim + g })
                .collect();
            let mean = idx.iter().map(|&i| m[i]).sum::<f64>() / len as f64;
            let var = idx.iter().map(|&i| (m[i] - mean).powi(2)).sum::<f64>() / len as f64;
            for &i in &idx {
                out[i] = (m[i] - mean) / (var + 1e-5).sqrt();
            }
        }
        out
    };
    let (na, np) = (norm(a), norm(p));
    let scale = if standardise.is_some() {
        1.0 / dim as f64
    } else {
        1.0
    };
    na.iter()
        .zip(&np)
        .map(|(x, y)| scale * (x - y).powi(2))
        .sum::<f64>()
        / rows as f64
}

/// Simplicial embedding from its definition: each group of `group` values of `z` becomes
/// `exp(z_i / t) / Σ_j exp(z_j / t)` (no shift by the maximum: f64 holds `exp(60)`).
pub fn grouped_softmax(z: &[f64], group: usize, t: f64) -> Vec<f64> {
    let mut s = Vec::with_capacity(z.len());
    for g in z.chunks(group) {
        let e: Vec<f64> = g.iter().map(|v| (v / t).exp()).collect();
        let total: f64 = e.iter().sum();
        s.extend(e.iter().map(|v| v / total));
    }
    s
}

/// ∂L/∂z from ∂L/∂s through each group's Jacobian, written out entry by entry:
/// `∂s_i/∂z_j = s_i·(δ_ij − s_j) / t`.
pub fn grouped_softmax_backward(s: &[f64], ds: &[f64], group: usize, t: f64) -> Vec<f64> {
    let mut dz = vec![0.0; s.len()];
    for start in (0..s.len()).step_by(group) {
        for j in start..start + group {
            for i in start..start + group {
                let delta = if i == j { 1.0 } else { 0.0 };
                dz[j] += ds[i] * s[i] * (delta - s[j]) / t;
            }
        }
    }
    dz
}

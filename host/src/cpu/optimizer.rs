//! The optimisers of a BYOL run on the CPU: LARS (optionally clipped), SGD with momentum and
//! AdamW, whose per-parameter arithmetic is `kernels::optimizer`, over one flat parameter
//! buffer walked tensor by tensor (tensors in parallel, each trust ratio in one sequential f64
//! pass).
//!
//! Biases and BatchNorm parameters skip the weight decay and the trust ratio in all three.

use kernels::optimizer as opt;
use rayon::prelude::*;
use std::ops::Range;

/// Which update rule, with its own hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerKind {
    /// LARS with trust coefficient η, optionally clipped at the scheduled learning rate.
    Lars { trust_coefficient: f32, clip: bool },
    /// SGD with momentum (no trust ratio).
    Sgd,
    /// AdamW, β₂ = 0.999, ε = 1e-8.
    AdamW,
}

/// An optimiser's hyper-parameters (the learning rate comes per step from the schedule).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Optimizer {
    pub kind: OptimizerKind,
    /// Momentum of LARS and SGD; β₁ of AdamW.
    pub momentum: f32,
    pub weight_decay: f32,
}

/// One tensor of the flat parameter buffer, as the optimiser sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorStep {
    pub range: Range<usize>,
    /// Biases and BatchNorm parameters: no weight decay, no trust ratio.
    pub plain: bool,
    /// Multiplier of this tensor's learning rate (1 in plain BYOL; the projector's μ and the
    /// predictor's λ in the ablations).
    pub lr_scale: f32,
}

impl Optimizer {
    /// LARS as in the official code: η = 1e-3, momentum 0.9, no clipping.
    pub fn official_lars(weight_decay: f32) -> Self {
        Optimizer {
            kind: OptimizerKind::Lars {
                trust_coefficient: 1e-3,
                clip: false,
            },
            momentum: 0.9,
            weight_decay,
        }
    }

    /// Whether the optimiser keeps a second moment per parameter (AdamW).
    pub fn needs_second_moment(&self) -> bool {
        self.kind == OptimizerKind::AdamW
    }

    /// One step over every tensor of `tensors`, which tile the buffers in order. `momentum`
    /// (and, for AdamW, `second_moment`) are per-parameter state of the buffer's length; `t`
    /// counts steps from 1 (AdamW's bias correction).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        tensors: &[TensorStep],
        params: &mut [f32],
        grads: &[f32],
        momentum: &mut [f32],
        second_moment: &mut [f32],
        t: u64,
        lr: f32,
    ) {
        let adam = self.needs_second_moment();
        assert!(
            !adam || second_moment.len() == params.len(),
            "AdamW needs a second moment per parameter"
        );
        // Tensors are independent: split the buffers at the tensors' boundaries.
        let mut work = Vec::with_capacity(tensors.len());
        let (mut w_rest, mut m_rest, mut offset) = (&mut params[..], &mut momentum[..], 0);
        let mut v_rest = &mut second_moment[..];
        for p in tensors {
            debug_assert_eq!(
                p.range.start, offset,
                "tensors must tile the buffer in order"
            );
            let (w, wr) = w_rest.split_at_mut(p.range.len());
            let (m, mr) = m_rest.split_at_mut(p.range.len());
            let (v, vr) = v_rest.split_at_mut(if adam { p.range.len() } else { 0 });
            (w_rest, m_rest, v_rest, offset) = (wr, mr, vr, p.range.end);
            work.push((p, w, m, v, &grads[p.range.clone()]));
        }
        work.into_par_iter().for_each(|(p, w, m, v, g)| {
            let wd = if p.plain { 0.0 } else { self.weight_decay };
            let step = lr * p.lr_scale;
            match self.kind {
                OptimizerKind::Lars {
                    trust_coefficient,
                    clip,
                } => {
                    let trust = if p.plain {
                        1.0
                    } else {
                        trust_ratio(w, g, wd, trust_coefficient, clip.then_some(step))
                    };
                    momentum_step(w, m, g, wd, trust, self.momentum, step);
                }
                OptimizerKind::Sgd => momentum_step(w, m, g, wd, 1.0, self.momentum, step),
                OptimizerKind::AdamW => adamw_step(w, m, v, g, wd, self.momentum, t, step),
            }
        });
    }
}

/// The trust ratio of one tensor: its two sums of squares in one sequential f64 pass.
fn trust_ratio(w: &[f32], g: &[f32], wd: f32, eta: f32, clip: Option<f32>) -> f32 {
    let (ww, gg) = opt::lars_square_sums(w, g, wd);
    opt::trust_ratio(ww, gg, eta, clip.unwrap_or(0.0))
}

/// `m ← momentum·m + trust·(∇ + wd·w)`, `w ← w − step·m`.
fn momentum_step(w: &mut [f32], m: &mut [f32], g: &[f32], wd: f32, trust: f32, mu: f32, step: f32) {
    for ((x, v), &d) in w.iter_mut().zip(m.iter_mut()).zip(g) {
        opt::momentum_element(x, v, d, wd, trust, mu, step);
    }
}

/// AdamW's bias corrections at step `t` (from 1) for learning rate `step`.
pub fn adam_factors(beta1: f32, t: u64, step: f32) -> opt::AdamFactors {
    let t = t.max(1) as i32;
    let bc1 = 1.0 - (beta1 as f64).powi(t);
    let bc2 = 1.0 - (opt::ADAM_BETA2 as f64).powi(t);
    opt::AdamFactors {
        step_size: (step as f64 / bc1) as f32,
        bc2_sqrt: bc2.sqrt() as f32,
    }
}

/// PyTorch's AdamW for one tensor at step `t` (from 1).
#[allow(clippy::too_many_arguments)]
fn adamw_step(
    w: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    wd: f32,
    beta1: f32,
    t: u64,
    step: f32,
) {
    let f = adam_factors(beta1, t, step);
    for (((x, m), v), &d) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        opt::adamw_element(x, m, v, d, wd, beta1, step, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LARS (or, with `eta = None`, SGD) written out in f64, tensor by tensor, from the
    /// module's formulas.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        w: &mut [f64],
        g: &[f64],
        m: &mut [f64],
        lr: f64,
        wd: f64,
        eta: Option<f64>,
        clip: bool,
        plain: bool,
    ) {
        let wd = if plain { 0.0 } else { wd };
        let d: Vec<f64> = w.iter().zip(g).map(|(w, g)| g + wd * w).collect();
        let wn = w.iter().map(|x| x * x).sum::<f64>().sqrt();
        let dn = d.iter().map(|x| x * x).sum::<f64>().sqrt();
        let trust = match eta {
            Some(eta) if !plain && wn > 0.0 && dn > 0.0 => {
                let r = eta * wn / dn;
                if clip {
                    r.min(lr) / lr
                } else {
                    r
                }
            }
            _ => 1.0,
        };
        for i in 0..w.len() {
            m[i] = 0.9 * m[i] + trust * d[i];
            w[i] -= lr * m[i];
        }
    }

    /// PyTorch's AdamW in f64.
    #[allow(clippy::too_many_arguments)]
    fn adamw_reference(
        w: &mut [f64],
        g: &[f64],
        m: &mut [f64],
        v: &mut [f64],
        t: i32,
        lr: f64,
        wd: f64,
        plain: bool,
    ) {
        let wd = if plain { 0.0 } else { wd };
        for i in 0..w.len() {
            w[i] *= 1.0 - lr * wd;
            m[i] = 0.9 * m[i] + 0.1 * g[i];
            v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
            let mh = m[i] / (1.0 - 0.9f64.powi(t));
            let vh = v[i] / (1.0 - 0.999f64.powi(t));
            w[i] -= lr * mh / (vh.sqrt() + 1e-8);
        }
    }

    /// A 3×4 weight, then a bias of 5, with learning-rate multiplier `bias_lr` on the bias.
    fn layout_scaled(bias_lr: f32) -> Vec<TensorStep> {
        vec![
            TensorStep {
                range: 0..12,
                plain: false,
                lr_scale: 1.0,
            },
            TensorStep {
                range: 12..17,
                plain: true,
                lr_scale: bias_lr,
            },
        ]
    }

    fn layout() -> Vec<TensorStep> {
        layout_scaled(1.0)
    }

    fn start() -> (Vec<f32>, Vec<f32>) {
        let w: Vec<f32> = (0..17).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
        let g: Vec<f32> = (0..17).map(|i| ((i * 5 % 13) as f32 - 6.0) / 3.0).collect();
        (w, g)
    }

    fn close(got: &[f32], want: &[f64]) {
        for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a as f64 - b).abs() < 1e-5 * (1.0 + b.abs()),
                "w[{i}]: {a} vs {b}"
            );
        }
    }

    /// Three steps of `opt` at learning rate `lr` against the f64 reference.
    fn check_momentum_rule(opt: Optimizer, eta: Option<f64>, clip: bool, lr: f32) {
        let reg = layout();
        let (mut w, g) = start();
        let mut m = vec![0.0f32; 17];
        let (mut rw, mut rm): (Vec<f64>, Vec<f64>) =
            (w.iter().map(|&x| x as f64).collect(), vec![0.0; 17]);
        let g64: Vec<f64> = g.iter().map(|&x| x as f64).collect();
        let wd = opt.weight_decay as f64;
        for t in 1..=3 {
            opt.step(&reg, &mut w, &g, &mut m, &mut [], t, lr);
            let (rw1, rw2) = rw.split_at_mut(12);
            let (rm1, rm2) = rm.split_at_mut(12);
            reference(rw1, &g64[..12], rm1, lr as f64, wd, eta, clip, false);
            reference(rw2, &g64[12..], rm2, lr as f64, wd, eta, clip, true);
        }
        close(&w, &rw);
    }

    #[test]
    fn lars_should_match_the_reference_and_skip_biases_and_batchnorm() {
        let lars = Optimizer {
            weight_decay: 0.05,
            ..Optimizer::official_lars(0.0)
        };
        check_momentum_rule(lars, Some(1e-3), false, 0.7);
        // A multiplier on one tensor scales its step only.
        let reg = layout();
        let (w, g) = start();
        let m = vec![0.1f32; 17];
        let (mut w1, mut m1, mut w2, mut m2) = (w.clone(), m.clone(), w.clone(), m.clone());
        lars.step(&layout_scaled(2.0), &mut w2, &g, &mut m2, &mut [], 1, 0.7);
        lars.step(&reg, &mut w1, &g, &mut m1, &mut [], 1, 0.7);
        assert_eq!(w2[..12], w1[..12]);
        for i in 12..17 {
            assert!(((w2[i] - w[i]) - 2.0 * (w1[i] - w[i])).abs() < 1e-5);
        }
    }

    #[test]
    fn clipped_lars_should_cap_the_rate_at_the_learning_rate() {
        let clipped = |eta: f32| Optimizer {
            kind: OptimizerKind::Lars {
                trust_coefficient: eta,
                clip: true,
            },
            momentum: 0.9,
            weight_decay: 1e-2,
        };
        // η large: the trust ratio exceeds lr, the cap binds and the step is plain SGD's.
        check_momentum_rule(clipped(10.0), Some(10.0), true, 0.05);
        // η small: the trust ratio is below lr, so the clip changes nothing.
        check_momentum_rule(clipped(1e-3), Some(1e-3), true, 0.5);
        let (reg, (w, g)) = (layout(), start());
        let (mut a, mut b) = (w.clone(), w.clone());
        let sgd = Optimizer {
            kind: OptimizerKind::Sgd,
            ..clipped(0.0)
        };
        clipped(10.0).step(&reg, &mut a, &g, &mut [0.0; 17], &mut [], 1, 0.05);
        sgd.step(&reg, &mut b, &g, &mut [0.0; 17], &mut [], 1, 0.05);
        close(&a, &b.iter().map(|&x| x as f64).collect::<Vec<_>>());
    }

    #[test]
    fn sgd_should_match_the_reference() {
        let sgd = Optimizer {
            kind: OptimizerKind::Sgd,
            momentum: 0.9,
            weight_decay: 0.05,
        };
        check_momentum_rule(sgd, None, false, 0.3);
    }

    #[test]
    fn adamw_should_match_pytorchs_rule() {
        let adamw = Optimizer {
            kind: OptimizerKind::AdamW,
            momentum: 0.9,
            weight_decay: 0.05,
        };
        assert!(adamw.needs_second_moment());
        let reg = layout();
        let (mut w, g0) = start();
        let (mut m, mut v) = (vec![0.0f32; 17], vec![0.0f32; 17]);
        let mut rw: Vec<f64> = w.iter().map(|&x| x as f64).collect();
        let (mut rm, mut rv) = (vec![0.0f64; 17], vec![0.0f64; 17]);
        for t in 1..=4 {
            // A gradient that changes from step to step, so the moments matter.
            let g: Vec<f32> = g0.iter().map(|&x| x * (1.0 + 0.3 * t as f32)).collect();
            let g64: Vec<f64> = g.iter().map(|&x| x as f64).collect();
            adamw.step(&reg, &mut w, &g, &mut m, &mut v, t, 0.01);
            let (rw1, rw2) = rw.split_at_mut(12);
            let (rm1, rm2) = rm.split_at_mut(12);
            let (rv1, rv2) = rv.split_at_mut(12);
            adamw_reference(rw1, &g64[..12], rm1, rv1, t as i32, 0.01, 0.05, false);
            adamw_reference(rw2, &g64[12..], rm2, rv2, t as i32, 0.01, 0.05, true);
        }
        close(&w, &rw);
    }
}

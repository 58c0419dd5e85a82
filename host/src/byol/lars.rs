//! LARS as the official BYOL code runs it (DESIGN.md §1), over one flat parameter buffer:
//! per tensor, `g ← ∇ + wd·w`, then `g ← η·‖w‖/‖g‖ · g` (trust ratio, 1 where either norm is
//! 0), then `m ← momentum·m + g`, `w ← w − lr·m`. Biases and BatchNorm parameters skip both
//! the weight decay and the trust ratio.

use crate::nn::Param;
use rayon::prelude::*;

/// LARS hyper-parameters (the learning rate comes per step from the schedule).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LarsConfig {
    pub momentum: f32,
    pub trust_coefficient: f32,
    pub weight_decay: f32,
}

impl Default for LarsConfig {
    fn default() -> Self {
        LarsConfig {
            momentum: 0.9,
            trust_coefficient: 1e-3,
            weight_decay: 1.5e-6,
        }
    }
}

/// One LARS step over every tensor of `layout`; `lr_scale(param)` multiplies the learning
/// rate of a tensor (1 everywhere for plain BYOL; the predictor's λ for the ablations).
pub fn lars_step(
    cfg: &LarsConfig,
    layout: &[Param],
    params: &mut [f32],
    grads: &[f32],
    momentum: &mut [f32],
    lr: f32,
    lr_scale: impl Fn(&Param) -> f32 + Sync,
) {
    // Tensors are independent: split the three buffers at the tensors' boundaries.
    let mut work = Vec::with_capacity(layout.len());
    let (mut w_rest, mut m_rest, mut offset) = (&mut params[..], &mut momentum[..], 0);
    for p in layout {
        debug_assert_eq!(
            p.range.start, offset,
            "layout must tile the buffer in order"
        );
        let (w, wr) = w_rest.split_at_mut(p.range.len());
        let (m, mr) = m_rest.split_at_mut(p.range.len());
        (w_rest, m_rest, offset) = (wr, mr, p.range.end);
        work.push((p, w, m, &grads[p.range.clone()]));
    }
    work.into_par_iter().for_each(|(p, w, m, g)| {
        let plain = p.role.is_bias_or_bn();
        let wd = if plain { 0.0 } else { cfg.weight_decay };
        let trust = if plain {
            1.0
        } else {
            let w_norm = w.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            let g_norm = w
                .iter()
                .zip(g)
                .map(|(&x, &d)| ((d + wd * x) as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            if w_norm > 0.0 && g_norm > 0.0 {
                (cfg.trust_coefficient as f64 * w_norm / g_norm) as f32
            } else {
                1.0
            }
        };
        let step = lr * lr_scale(p);
        for ((x, v), &d) in w.iter_mut().zip(m.iter_mut()).zip(g) {
            *v = cfg.momentum * *v + trust * (d + wd * *x);
            *x -= step * *v;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Registry, Role};

    /// LARS written out in f64, tensor by tensor, from DESIGN.md §1.
    fn reference(w: &mut [f64], g: &[f64], m: &mut [f64], lr: f64, wd: f64, eta: f64, plain: bool) {
        let wd = if plain { 0.0 } else { wd };
        let d: Vec<f64> = w.iter().zip(g).map(|(w, g)| g + wd * w).collect();
        let wn = w.iter().map(|x| x * x).sum::<f64>().sqrt();
        let dn = d.iter().map(|x| x * x).sum::<f64>().sqrt();
        let trust = if plain || wn == 0.0 || dn == 0.0 {
            1.0
        } else {
            eta * wn / dn
        };
        for i in 0..w.len() {
            m[i] = 0.9 * m[i] + trust * d[i];
            w[i] -= lr * m[i];
        }
    }

    #[test]
    fn lars_should_match_the_reference_and_skip_biases_and_batchnorm() {
        let mut reg = Registry::default();
        reg.add_param("conv.weight".into(), vec![3, 4], Role::ConvWeight);
        reg.add_param("bn.bias".into(), vec![5], Role::BnBias);
        let mut w: Vec<f32> = (0..17).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
        let g: Vec<f32> = (0..17).map(|i| ((i * 5 % 13) as f32 - 6.0) / 3.0).collect();
        let mut m = vec![0.0f32; 17];
        let cfg = LarsConfig {
            momentum: 0.9,
            trust_coefficient: 1e-3,
            weight_decay: 0.05,
        };
        let (mut rw, mut rm): (Vec<f64>, Vec<f64>) =
            (w.iter().map(|&x| x as f64).collect(), vec![0.0; 17]);
        let g64: Vec<f64> = g.iter().map(|&x| x as f64).collect();
        for _ in 0..3 {
            lars_step(&cfg, &reg.params, &mut w, &g, &mut m, 0.7, |_| 1.0);
            reference(
                &mut rw[..12],
                &g64[..12],
                &mut rm[..12],
                0.7,
                0.05,
                1e-3,
                false,
            );
            reference(
                &mut rw[12..],
                &g64[12..],
                &mut rm[12..],
                0.7,
                0.05,
                1e-3,
                true,
            );
        }
        for i in 0..17 {
            assert!(
                (w[i] as f64 - rw[i]).abs() < 1e-5 * (1.0 + rw[i].abs()),
                "w[{i}]: {} vs {}",
                w[i],
                rw[i]
            );
        }
        // A multiplier on one tensor scales its step only.
        let mut w2 = w.clone();
        let mut m2 = m.clone();
        lars_step(&cfg, &reg.params, &mut w2, &g, &mut m2, 0.7, |p| {
            if p.name == "bn.bias" {
                2.0
            } else {
                1.0
            }
        });
        let mut w1 = w.clone();
        let mut m1 = m.clone();
        lars_step(&cfg, &reg.params, &mut w1, &g, &mut m1, 0.7, |_| 1.0);
        assert_eq!(w2[..12], w1[..12]);
        for i in 12..17 {
            assert!(((w2[i] - w[i]) - 2.0 * (w1[i] - w[i])).abs() < 1e-5);
        }
    }
}

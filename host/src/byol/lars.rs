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

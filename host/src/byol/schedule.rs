//! BYOL's schedules (docs/DESIGN.md §1): the learning rate (linear warm-up, then cosine decay to 0)
//! and the target decay τ (cosine from τ_base up to 1, or to a chosen end), plus the official
//! presets by length.

use std::f64::consts::PI;

/// Learning rate at step `k` of `total`: `peak·k/warmup` during warm-up, then
/// `peak·(1 + cos(π·(k − warmup)/(total − warmup)))/2`. `peak = base_lr · batch / 256`.
pub fn learning_rate(peak: f64, k: usize, warmup: usize, total: usize) -> f64 {
    if k < warmup {
        peak * k as f64 / warmup as f64
    } else if total <= warmup {
        peak
    } else {
        let t = (k - warmup) as f64 / (total - warmup) as f64;
        peak * 0.5 * (1.0 + (PI * t.min(1.0)).cos())
    }
}

/// Target decay at step `k` of `total`: `τ_k = 1 − (1 − τ_base)·(cos(π·k/K) + 1)/2`.
pub fn tau(tau_base: f64, k: usize, total: usize) -> f64 {
    tau_to(tau_base, 1.0, k, total)
}

/// The same cosine ending at `tau_end` instead of 1: `τ_end − (τ_end − τ_base)·(cos(π·k/K) +
/// 1)/2`. In a short run a target that freezes (τ → 1) stops learning half-way; an end below
/// 1 keeps it moving. With `tau_end = 1` this is [`tau`], bit for bit.
pub fn tau_to(tau_base: f64, tau_end: f64, k: usize, total: usize) -> f64 {
    let t = if total == 0 {
        0.0
    } else {
        k as f64 / total as f64
    };
    tau_end - (tau_end - tau_base) * ((PI * t.min(1.0)).cos() + 1.0) / 2.0
}

/// Hyper-parameters the official configuration ties to the run's length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preset {
    pub epochs: usize,
    pub base_lr: f64,
    pub weight_decay: f64,
    pub tau_base: f64,
}

/// The official presets: 40, 100, 300 and 1000 epochs.
pub const PRESETS: [Preset; 4] = [
    Preset {
        epochs: 40,
        base_lr: 0.45,
        weight_decay: 1e-6,
        tau_base: 0.97,
    },
    Preset {
        epochs: 100,
        base_lr: 0.45,
        weight_decay: 1e-6,
        tau_base: 0.99,
    },
    Preset {
        epochs: 300,
        base_lr: 0.3,
        weight_decay: 1e-6,
        tau_base: 0.99,
    },
    Preset {
        epochs: 1000,
        base_lr: 0.2,
        weight_decay: 1.5e-6,
        tau_base: 0.996,
    },
];

/// The preset named by its epoch count ("40", "100", "300", "1000").
pub fn preset(name: &str) -> Option<Preset> {
    PRESETS
        .iter()
        .copied()
        .find(|p| p.epochs.to_string() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_should_warm_up_linearly_then_decay_to_zero() {
        let (peak, warmup, total) = (0.8, 10, 110);
        assert_eq!(learning_rate(peak, 0, warmup, total), 0.0);
        assert!((learning_rate(peak, 5, warmup, total) - 0.4).abs() < 1e-12);
        assert!((learning_rate(peak, 10, warmup, total) - 0.8).abs() < 1e-12);
        assert!((learning_rate(peak, 60, warmup, total) - 0.4).abs() < 1e-12); // half-way down the cosine
        assert!(learning_rate(peak, 110, warmup, total).abs() < 1e-12);
    }

    #[test]
    fn tau_should_rise_from_tau_base_to_one_along_a_cosine() {
        assert!((tau(0.996, 0, 100) - 0.996).abs() < 1e-12);
        assert!((tau(0.996, 50, 100) - 0.998).abs() < 1e-12);
        assert!((tau(0.996, 100, 100) - 1.0).abs() < 1e-12);
        assert_eq!(tau(1.0, 30, 100), 1.0);
        assert_eq!(tau(0.0, 0, 100), 0.0);
        assert!((tau_to(0.99, 0.995, 0, 100) - 0.99).abs() < 1e-12);
        assert!((tau_to(0.99, 0.995, 50, 100) - 0.9925).abs() < 1e-12);
        assert!((tau_to(0.99, 0.995, 100, 100) - 0.995).abs() < 1e-12);
        for k in [0, 7, 50, 99, 100] {
            assert_eq!(tau_to(0.97, 1.0, k, 100), tau(0.97, k, 100));
        }
    }

    #[test]
    fn presets_should_follow_the_official_configuration() {
        assert_eq!(preset("1000").unwrap().tau_base, 0.996);
        assert_eq!(preset("300").unwrap().base_lr, 0.3);
        assert_eq!(preset("40").unwrap().weight_decay, 1e-6);
        assert!(preset("50").is_none());
    }
}

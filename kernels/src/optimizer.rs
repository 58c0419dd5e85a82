//! The optimisers' arithmetic, one parameter (or one tensor's norms) at a time: LARS, SGD with
//! momentum and AdamW. The host walks its flat parameter buffer tensor by tensor and calls
//! these; the GPU runs one thread per parameter (see `grid`).
//!
//! - **LARS** as the official BYOL code runs it: per tensor `g ← ∇ + wd·w`, then `g ← r·g`
//!   with the trust ratio `r = η·‖w‖/‖g‖` (1 where either norm is 0), then
//!   `m ← momentum·m + g`, `w ← w − lr·m`. With `clip` the rate a tensor moves at is capped at
//!   the scheduled lr: `r ← min(r, lr)/lr`, so the step is `min(η‖w‖/‖g‖, lr)`, as LARC's
//!   clip mode and solo-learn's `clip_lr` do.
//! - **SGD** with momentum: LARS with `r = 1`.
//! - **AdamW** (PyTorch's): `w ← w·(1 − lr·wd)`, then the bias-corrected Adam step with
//!   β = (momentum, 0.999), ε = 1e-8.
//!
//! Norms are sums of squares in f64, so a tensor of millions of values keeps its trust ratio
//! to f32 precision whatever order its pieces are added in.

/// AdamW's second-moment decay and its denominator's guard (PyTorch's defaults).
pub const ADAM_BETA2: f32 = 0.999;
pub const ADAM_EPS: f32 = 1e-8;

/// `(Σ w², Σ (∇ + wd·w)²)` of a piece of a tensor, in f64.
#[inline(always)]
pub fn lars_square_sums(w: &[f32], g: &[f32], wd: f32) -> (f64, f64) {
    let (mut ww, mut gg) = (0.0f64, 0.0f64);
    for (&x, &d) in w.iter().zip(g) {
        let d = (d + wd * x) as f64;
        ww += (x as f64) * (x as f64);
        gg += d * d;
    }
    (ww, gg)
}

/// The trust ratio `η·‖w‖/‖∇ + wd·w‖` from the two sums of squares (1 where either norm is 0);
/// with `clip_lr > 0` the rate is capped at that lr: `min(r, lr)/lr`.
#[inline(always)]
pub fn trust_ratio(w_squares: f64, g_squares: f64, eta: f32, clip_lr: f32) -> f32 {
    let (w_norm, g_norm) = (
        crate::math::sqrt64(w_squares),
        crate::math::sqrt64(g_squares),
    );
    if !(w_norm > 0.0 && g_norm > 0.0) {
        return 1.0;
    }
    let r = eta as f64 * w_norm / g_norm;
    if clip_lr > 0.0 {
        let lr = clip_lr as f64;
        ((if r < lr { r } else { lr }) / lr) as f32
    } else {
        r as f32
    }
}

/// One parameter of LARS or SGD: `m ← μ·m + trust·(∇ + wd·w)`, `w ← w − step·m`.
#[inline(always)]
pub fn momentum_element(w: &mut f32, m: &mut f32, g: f32, wd: f32, trust: f32, mu: f32, step: f32) {
    *m = mu * *m + trust * (g + wd * *w);
    *w -= step * *m;
}

/// AdamW's bias corrections at step `t` folded into the step: `step_size = step / (1 − β₁ᵗ)`
/// and `√(1 − β₂ᵗ)`. Computed once per step on the host (it needs `powi`).
#[derive(Clone, Copy, Debug)]
pub struct AdamFactors {
    pub step_size: f32,
    pub bc2_sqrt: f32,
}

/// One parameter of AdamW at learning rate `step` with the step's [`AdamFactors`].
#[inline(always)]
#[allow(clippy::too_many_arguments)] // one argument per state, as the PTX entry point
pub fn adamw_element(
    w: &mut f32,
    m: &mut f32,
    v: &mut f32,
    g: f32,
    wd: f32,
    beta1: f32,
    step: f32,
    f: AdamFactors,
) {
    *w *= 1.0 - step * wd;
    *m = beta1 * *m + (1.0 - beta1) * g;
    *v = ADAM_BETA2 * *v + (1.0 - ADAM_BETA2) * g * g;
    *w -= f.step_size * *m / (crate::math::sqrt(*v) / f.bc2_sqrt + ADAM_EPS);
}

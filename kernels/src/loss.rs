//! BYOL's normalised mean squared error, one row (one sample) at a time.
//!
//! For a prediction `p` and a target projection `z` (both `[dim]`):
//! `L = 2 − 2·⟨p̄, z̄⟩ = 2 − 2·⟨p, z⟩ / (‖p‖·‖z‖)`, with `x̄ = x / max(‖x‖, ε)`, which is the
//! paper's `‖p̄ − z̄‖²` for non-zero rows. The ε is the one of PyTorch's `F.normalize` (1e-12):
//! a zero row normalises to zero, giving loss 2 (not the 1 of `‖p̄ − z̄‖²`: the two forms part
//! only there) and a finite gradient, never NaN. Only `p` gets a gradient; `z` comes
//! from the target network.

/// ε of the ℓ2-normalisation, as `torch.nn.functional.normalize`.
pub const NORM_EPS: f32 = 1e-12;

#[inline(always)]
fn dots(p: &[f32], z: &[f32]) -> (f32, f32, f32) {
    let (mut pz, mut pp, mut zz) = (0.0f32, 0.0f32, 0.0f32);
    for (&a, &b) in p.iter().zip(z) {
        pz += a * b;
        pp += a * a;
        zz += b * b;
    }
    (pz, pp, zz)
}

#[inline(always)]
fn clamped_norm(sum_of_squares: f32) -> f32 {
    let n = crate::math::sqrt(sum_of_squares);
    if n > NORM_EPS {
        n
    } else {
        NORM_EPS
    }
}

/// Loss of one row.
#[inline(always)]
pub fn nmse_row_forward(p: &[f32], z: &[f32]) -> f32 {
    let (pz, pp, zz) = dots(p, z);
    2.0 - 2.0 * pz / (clamped_norm(pp) * clamped_norm(zz))
}

/// Gradient of `scale · L(p, z)` with respect to `p`, written to `grad_p` (overwritten).
/// `scale` is 1/batch for a batch mean. With `n = ‖p‖ > ε`:
/// `∂L/∂p = −(2/n)·(z̄ − ⟨p̄, z̄⟩·p̄)`; where `‖p‖ ≤ ε` the normalisation is a constant
/// division by ε and `∂L/∂p = −2·z̄/ε`.
#[inline(always)]
pub fn nmse_row_backward(p: &[f32], z: &[f32], scale: f32, grad_p: &mut [f32]) {
    let (pz, pp, zz) = dots(p, z);
    let np = crate::math::sqrt(pp);
    let nz = clamped_norm(zz);
    if np > NORM_EPS {
        let cos = pz / (np * nz);
        let a = -2.0 * scale / (np * nz); // coefficient of z
        let b = 2.0 * scale * cos / (np * np); // coefficient of p
        for ((g, &pi), &zi) in grad_p.iter_mut().zip(p).zip(z) {
            *g = a * zi + b * pi;
        }
    } else {
        let a = -2.0 * scale / (NORM_EPS * nz);
        for (g, &zi) in grad_p.iter_mut().zip(z) {
            *g = a * zi;
        }
    }
}

//! Exponential moving average of the target network: `target ← τ·target + (1 − τ)·online`.
//!
//! Works on flat f32 buffers holding every parameter of a network, so one call (one launch
//! on the GPU) updates a whole network.

/// One parameter. Written as `τ·t + (1 − τ)·o` rather than `t + (1 − τ)·(o − t)` so that
/// τ = 1 keeps the target bit for bit and τ = 0 copies the online value bit for bit.
#[inline(always)]
pub fn ema_element(target: f32, online: f32, tau: f32) -> f32 {
    tau * target + (1.0 - tau) * online
}

/// A contiguous chunk of a network's parameters. `target` and `online` have equal length
/// (the host checks this and reports a mismatch as an error).
#[inline(always)]
pub fn ema_update(target: &mut [f32], online: &[f32], tau: f32) {
    for (t, &o) in target.iter_mut().zip(online) {
        *t = ema_element(*t, o, tau);
    }
}

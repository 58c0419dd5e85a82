//! The EMA of the target network on the CPU: one flat buffer, in chunks across threads.

use kernels::ema;
use rayon::prelude::*;

/// Elements per rayon task for element-wise kernels (large enough to amortise scheduling).
const ELEMENT_CHUNK: usize = 1 << 16;

/// `target ← τ·target + (1 − τ)·online` over equal-length slices.
pub fn ema_update(target: &mut [f32], online: &[f32], tau: f32) {
    target
        .par_chunks_mut(ELEMENT_CHUNK)
        .zip(online.par_chunks(ELEMENT_CHUNK))
        .for_each(|(t, o)| ema::ema_update(t, o, tau));
}

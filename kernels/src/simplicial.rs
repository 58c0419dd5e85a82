//! Simplicial embedding (Lavoie et al., 2022), the block byol-pytorch puts in front of its
//! projector by default: the features of a row are cut into groups of `group` consecutive
//! values and each group becomes a softmax at temperature `T`, `s = softmax(z / T)`, a point
//! on a simplex. The unit of work is one group of one row; in a row-major `[rows, cols]`
//! matrix with `cols = groups · group` the groups are the consecutive `group`-long slices.
//!
//! The softmax subtracts the group's maximum before `exp` (the same value, no overflow at
//! T = 0.1 where `z / T` reaches tens). Its backward needs only the output:
//! `∂L/∂z_i = (1/T)·s_i·(∂L/∂s_i − Σ_j s_j·∂L/∂s_j)`.

/// `s = softmax(z · inv_temperature)` of one group (`z` and `s` of the same length ≥ 1).
#[inline(always)]
pub fn softmax_group_forward(z: &[f32], inv_temperature: f32, s: &mut [f32]) {
    let mut max = z[0];
    for &v in &z[1..] {
        if v > max {
            max = v;
        }
    }
    let mut sum = 0.0f32;
    for (o, &v) in s.iter_mut().zip(z) {
        *o = crate::math::exp((v - max) * inv_temperature);
        sum += *o;
    }
    let inv_sum = 1.0 / sum;
    for o in s.iter_mut() {
        *o *= inv_sum;
    }
}

/// Backward of [`softmax_group_forward`] from its output `s`: `grad` goes from ∂L/∂s to
/// ∂L/∂z in place.
#[inline(always)]
pub fn softmax_group_backward(s: &[f32], inv_temperature: f32, grad: &mut [f32]) {
    let mut dot = 0.0f32;
    for (&si, &gi) in s.iter().zip(grad.iter()) {
        dot += si * gi;
    }
    for (g, &si) in grad.iter_mut().zip(s) {
        *g = inv_temperature * si * (*g - dot);
    }
}

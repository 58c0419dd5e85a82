//! Scalar math that `core` lacks on stable: `libm` on the CPU, the PTX instruction on the GPU.

#[cfg(target_arch = "nvptx64")]
#[inline(always)]
pub fn sqrt(x: f32) -> f32 {
    core::f32::math::sqrt(x)
}

#[cfg(not(target_arch = "nvptx64"))]
#[inline(always)]
pub fn sqrt(x: f32) -> f32 {
    libm::sqrtf(x)
}

#[cfg(target_arch = "nvptx64")]
#[inline(always)]
pub fn sqrt64(x: f64) -> f64 {
    core::f64::math::sqrt(x)
}

#[cfg(not(target_arch = "nvptx64"))]
#[inline(always)]
pub fn sqrt64(x: f64) -> f64 {
    libm::sqrt(x)
}

//! Scalar math that `core` lacks on stable: `libm` on the CPU, the PTX instruction on the GPU
//! where there is one (`sqrt`, `floor`), `libm` on both where there is none (`exp`).

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

#[cfg(target_arch = "nvptx64")]
#[inline(always)]
pub fn floor(x: f32) -> f32 {
    core::f32::math::floor(x)
}

#[cfg(not(target_arch = "nvptx64"))]
#[inline(always)]
pub fn floor(x: f32) -> f32 {
    libm::floorf(x)
}

/// `x mod rhs` in `[0, |rhs|)`, as std's `f32::rem_euclid`.
#[inline(always)]
pub fn rem_euclid(x: f32, rhs: f32) -> f32 {
    let r = x % rhs;
    if r < 0.0 {
        r + rhs.abs()
    } else {
        r
    }
}

/// `e^x`: `libm`'s on the CPU and on the GPU alike (libm is plain Rust, so the PTX build
/// compiles the same function, and the two paths round the same way).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    libm::expf(x)
}

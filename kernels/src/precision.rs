//! bfloat16 storage for the GPU's bf16 mode: convolutions and GEMMs read bf16 copies of their
//! f32 inputs (and write bf16 outputs that come back to f32), while parameters, optimiser
//! state, BatchNorm and the loss stay f32. A bf16 is the top 16 bits of an f32; rounding is
//! to nearest, ties to even, as PyTorch's and CUDA's conversions; NaN stays NaN.

/// The bf16 nearest to `x` (ties to even), as its bits.
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        // Keep the sign, force a quiet NaN whose payload survives the truncation.
        return ((bits >> 16) | 0x0040) as u16;
    }
    let lsb = (bits >> 16) & 1;
    (bits.wrapping_add(0x7fff + lsb) >> 16) as u16
}

/// The f32 a bf16 stands for (exact).
#[inline(always)]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

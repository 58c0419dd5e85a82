//! The arithmetic of every BYOL kernel, written once for the CPU and the GPU.
//!
//! Each kernel is a plain function over one unit of work (an element, a row, a tile of
//! columns). The host calls these functions from rayon loops; on `nvptx64` the thin entry
//! points in `gpu` (compiled for that target only) compute their thread's unit and call the
//! very same functions, so the PTX and the CPU path cannot drift apart.
//!
//! Layouts: matrices are row-major `[rows, cols]` f32 with `rows` = batch and `cols` =
//! features, as PyTorch's `Linear` sees them. Parameter buffers are flat f32.
#![no_std]
#![cfg_attr(
    target_arch = "nvptx64",
    feature(abi_ptx, stdarch_nvptx, core_float_math)
)]

pub mod augment;
pub mod batchnorm;
pub mod conv;
pub mod ema;
pub mod grid;
pub mod linear;
pub mod loss;
mod math;
pub mod optimizer;
pub mod pool;
pub mod precision;
pub mod simplicial;

#[cfg(target_arch = "nvptx64")]
pub mod gpu;

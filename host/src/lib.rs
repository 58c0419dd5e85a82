//! BYOL host: the CPU and GPU backends over the `kernels` crate, the projector/predictor MLP,
//! and (in later milestones) the ResNet encoder, the training loop and evaluation.

pub mod ablate;
pub mod backend;
pub mod byol;
pub mod checkpoint;
pub mod cpu;
pub mod data;
pub mod error;
pub mod eval;
pub mod mlp;
pub mod nn;
pub mod plot;
pub mod ptx;
pub mod train;

pub use backend::cpu::Cpu;
#[cfg(feature = "cuda")]
pub use backend::cuda::Cuda;
pub use backend::{Backend, MlpSaved, MlpState};
pub use error::{Error, Result};
pub use mlp::{BnMode, Mlp};

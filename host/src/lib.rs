//! BYOL host, by layer:
//! - [`cpu`] and [`backend`]: the kernels' CPU drivers, and the CPU and CUDA backends;
//! - [`nn`]: the ResNet encoder, the projector/predictor MLP and their parameter registry,
//!   generic over the backend;
//! - [`byol`]: the networks, the training step, LARS and the schedules;
//! - [`dist`]: the collectives of a data-parallel run (one process, threads, MPI);
//! - [`data`]: data sets, their readers and downloads, the augmentations;
//! - [`eval`]: kNN monitor, collapse diagnostics, linear evaluation;
//! - [`config`] and [`recipe`]: what defines a run, and its starting values;
//! - [`train`], [`checkpoint`], [`plot`], [`ablate`], [`files`]: runs, their files, studies.

pub mod ablate;
pub mod backend;
pub mod byol;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod data;
pub mod dist;
pub mod embed;
pub mod error;
pub mod eval;
pub mod files;
pub mod nn;
pub mod plot;
pub mod recipe;
pub mod train;

pub use backend::cpu::Cpu;
#[cfg(feature = "cuda")]
pub use backend::cuda::Cuda;
pub use backend::{Backend, BnMode};
pub use error::{Error, Result};
pub use nn::mlp::{Mlp, MlpAt, MlpSaved, MlpState};

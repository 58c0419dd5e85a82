//! The networks: the ResNet encoder (activations NHWC) and the projector/predictor MLP
//! (activations `[batch, features]`), their parameter registry, and their forward and backward
//! passes composed from the ops of [`crate::backend`], so they run on every backend.

pub mod mlp;
pub mod registry;
pub mod resnet;

pub use registry::{Buffer, Param, Registry, Role};
pub use resnet::{Activations, Arch, ResNet, ResNetConfig, Stem};

//! The ResNet encoder on the CPU: layers (conv, pooling; BatchNorm and Linear come from
//! [`crate::cpu`]), the parameter registry, and the network. Activations are NHWC.

pub mod conv;
pub mod pool;
pub mod registry;
pub mod resnet;

pub use registry::{Buffer, Param, Registry, Role};
pub use resnet::{Activations, Arch, ResNet, ResNetConfig, Stem};

//! The networks: the ResNet encoder (activations NHWC) and the projector/predictor MLP
//! (activations `[batch, features]`), their parameter registry, and their forward and backward
//! passes composed from the ops of [`crate::backend`], so they run on every backend.

pub mod mlp;
pub mod registry;
pub mod resnet;

pub use registry::{Buffer, Param, Registry, Role};
pub use resnet::{Activations, Arch, ResNet, ResNetConfig, Stem};

use crate::error::{Error, Result};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// How a fresh network's weights are drawn.
///
/// - `Torchvision` (the default): what PyTorch ports of BYOL start from. Convolutions
///   Kaiming-normal with fan-out and ReLU gain, Linear weights and biases uniform in
///   `±1/√fan_in`, every BatchNorm γ = 1.
/// - `Official`: what the official BYOL code gets from Haiku's defaults. Convolutions and Linear
///   weights normal with σ = 1/√fan_in, truncated at ±2σ (not rescaled, so their spread is
///   about 0.88σ), biases 0, and γ = 0 on the BatchNorm that closes each bottleneck block's
///   residual branch (ResNet-50), so every such block starts as its shortcut. A basic block
///   (ResNet-18/34) keeps γ = 1 there, as Haiku's does.
///
/// BatchNorm follows every convolution and hidden Linear, so the two differ in scale only where
/// scale still matters: the clipped LARS trust ratio, weight decay, the last Linear of each MLP
/// and the zeroed residual branches. Measured on Fashion-MNIST (README "Recipes"), `Official`
/// trained the ResNet-18 worse at 10 epochs, so no recipe picks it; it is there to reproduce
/// the official code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightInit {
    #[default]
    Torchvision,
    Official,
}

impl std::str::FromStr for WeightInit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "torchvision" => Ok(WeightInit::Torchvision),
            "official" => Ok(WeightInit::Official),
            _ => Err(Error::InvalidArgument(format!(
                "init {s:?}: expected torchvision or official"
            ))),
        }
    }
}

/// A draw from N(0, σ²) truncated at ±2σ by rejection, as Haiku's `TruncatedNormal` (which
/// does not rescale σ afterwards).
pub(crate) fn truncated_normal(rng: &mut impl Rng, std: f32) -> f32 {
    loop {
        let x: f32 = StandardNormal.sample(rng);
        if x.abs() <= 2.0 {
            return x * std;
        }
    }
}

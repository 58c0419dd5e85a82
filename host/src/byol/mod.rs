//! The BYOL method: the networks and their training step, the loss and its ablations, the
//! closed-form predictor, the optimisers (LARS, SGD, AdamW), and the schedules.

pub mod closed_form;
pub mod network;
pub mod objective;
pub mod optimizer;
pub mod schedule;

pub use network::{
    Byol, ByolConfig, ByolState, ByolWork, LrMultipliers, PredictorKind, StepReport, TargetInit,
};
pub use objective::{Normalisation, Objective};
pub use optimizer::{Optimizer, OptimizerKind};

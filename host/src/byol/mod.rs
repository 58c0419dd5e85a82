//! The BYOL method: the networks and their training step, the loss and its ablations, the
//! closed-form predictor, the optimisers (LARS, SGD, AdamW), and the schedules.

pub mod closed_form;
pub mod network;
pub mod schedule;

pub use network::{
    Byol, ByolConfig, ByolState, ByolWork, LrMultipliers, PredictorKind, StepReport, TargetInit,
};
// The loss's and the optimisers' parameter types are the backend's (their arithmetic is an op).
pub use crate::backend::{Normalisation, Objective, Optimizer, OptimizerKind};

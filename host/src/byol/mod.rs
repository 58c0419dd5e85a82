//! The BYOL method: the networks and their training step, the loss and its ablations, the
//! closed-form predictor, LARS, and the schedules.

pub mod closed_form;
pub mod lars;
pub mod network;
pub mod objective;
pub mod schedule;

pub use lars::{lars_step, LarsConfig};
pub use network::{
    Byol, ByolConfig, ByolState, ByolWork, LrMultipliers, PredictorKind, StepReport,
};
pub use objective::{Normalisation, Objective};

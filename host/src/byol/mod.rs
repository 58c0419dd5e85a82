//! The BYOL method: the networks and their training step, LARS, and the schedules.

pub mod lars;
pub mod network;
pub mod schedule;

pub use lars::{lars_step, LarsConfig};
pub use network::{Byol, ByolConfig, ByolState, ByolWork, LrMultipliers, StepReport};

//! Evaluation of representations: the kNN monitor, collapse diagnostics, linear evaluation.

pub mod collapse;
pub mod knn;
pub mod linear;

pub use collapse::{diagnose, Collapse};
pub use knn::{embed, knn_accuracy};
pub use linear::{linear_eval, LinearConfig, LinearReport};

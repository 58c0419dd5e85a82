//! Evaluation of representations: the kNN monitor and linear evaluation.

pub mod knn;
pub mod linear;

pub use knn::{embed, knn_accuracy};
pub use linear::{linear_eval, LinearConfig, LinearReport};

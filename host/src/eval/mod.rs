//! Evaluation of representations: the kNN monitor, collapse diagnostics, linear evaluation,
//! and BatchNorm statistics of the data for reading an untrained encoder.

pub mod batchnorm;
pub mod collapse;
pub mod knn;
pub mod linear;

pub use batchnorm::data_statistics;
pub use collapse::{diagnose, Collapse};
pub use knn::{embed, knn_accuracy};
pub use linear::{linear_eval, LinearConfig, LinearReport};

//! Evaluation of representations: the kNN monitor.

pub mod knn;

pub use knn::{embed, knn_accuracy};

//! BatchNorm statistics of the data ("precise BatchNorm"): the running statistics an encoder
//! would have if its running buffers held the mean of its training-mode batch statistics over
//! unaugmented images, instead of what training left there (or, before training, the
//! placeholder mean 0, variance 1).
//!
//! Why it matters: an untrained encoder in evaluation mode with placeholder statistics is a
//! ResNet without normalisation, and on 28-px grayscale images that reads far better with
//! kNN than the same weights normalised by the data (Fashion-MNIST, seed 0: 66.6% against
//! 52.9%). Training fills the buffers within its first steps, so kNN after the first epoch
//! falls below "kNN at initialisation" even where nothing is learned (66.6% → 53.8% after one
//! epoch with the encoder's weights frozen); this second baseline separates what training
//! learns from what the statistics change (docs/comparisons.md, "What the first epoch loses").
//!
//! Tested in `tests/resnet.rs` (with the other BatchNorm modes).
//!
//! Layout: the encoder's running buffer `[registry.buffer_len()]` (each BatchNorm's mean,
//! then its variance), as [`crate::nn::ResNet::init_running`] lays it out.

use crate::backend::{Backend, BnMode, BN_MOMENTUM};
use crate::data::augment::Augmenter;
use crate::data::Dataset;
use crate::error::Result;
use crate::nn::ResNet;

/// Running statistics of `encoder` (parameters `params`) that are the mean, over the batches
/// `batches` of `data`'s unaugmented images, of its training-mode batch statistics (each
/// BatchNorm's batch mean and unbiased batch variance, as training accumulates them).
/// Every batch must have the same length; in a data-parallel run each rank passes its part
/// of the same global batches, so cross-replica BatchNorm sees the global batch as training
/// does.
pub fn data_statistics<B: Backend>(
    be: &B,
    encoder: &ResNet,
    params: &B::Buffer,
    data: &Dataset,
    batches: &[Vec<usize>],
    aug: &Augmenter,
) -> Result<B::Buffer> {
    let len = encoder.registry.buffer_len();
    let n = batches.first().map_or(0, Vec::len);
    let mut acts = encoder.activations(be, n, aug.size, aug.size)?;
    let mut images = vec![0.0f32; n * aug.size * aug.size * 3];
    let mut sum = vec![0.0f64; len];
    for batch in batches {
        aug.plain(data, batch, &mut images);
        let x = be.upload(&images)?;
        // From zero, one training-mode update leaves momentum · (batch statistic): the
        // statistic itself once divided by the momentum below.
        let mut running = be.zeros(len)?;
        encoder.forward(be, params, &mut running, &x, BnMode::Train, &mut acts)?;
        for (s, r) in sum.iter_mut().zip(be.download(&running)?) {
            *s += r as f64;
        }
    }
    let scale = 1.0 / (BN_MOMENTUM as f64 * batches.len() as f64);
    let mean: Vec<f32> = sum.iter().map(|s| (s * scale) as f32).collect();
    be.upload(&mean)
}

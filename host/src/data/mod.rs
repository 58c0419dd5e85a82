//! Data: in-memory image data sets (`u8` NHWC, RGB) and the augmentations of BYOL.

pub mod augment;
pub mod download;
pub mod formats;
pub mod synthetic;

/// Images `[n, h, w, 3]` (RGB, `u8`) with labels in `0..classes`.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub name: String,
    pub images: Vec<u8>,
    pub labels: Vec<u16>,
    pub h: usize,
    pub w: usize,
    pub classes: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Image `i`, `[h, w, 3]`.
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.h * self.w * 3;
        &self.images[i * size..][..size]
    }
    /// Per-channel mean and standard deviation of the pixels, in `[0, 1]` units: the
    /// normalisation of the data set (computed on the training split).
    pub fn channel_stats(&self) -> ([f32; 3], [f32; 3]) {
        let (mut sum, mut sq) = ([0.0f64; 3], [0.0f64; 3]);
        for px in self.images.chunks_exact(3) {
            for c in 0..3 {
                let v = px[c] as f64 / 255.0;
                sum[c] += v;
                sq[c] += v * v;
            }
        }
        let n = (self.images.len() / 3).max(1) as f64;
        let mean = sum.map(|s| s / n);
        let std = [0, 1, 2].map(|c| (sq[c] / n - mean[c] * mean[c]).max(1e-12).sqrt() as f32);
        (mean.map(|m| m as f32), std)
    }
}

/// Writes a training and a held-out split to one safetensors file (atomically), so that
/// other programs (the PyTorch reference, `scripts/torch/byol_pytorch_reference.py`) train
/// and evaluate on exactly the pixels this program sees: `train.images`, `test.images` as
/// `U8 [n, h, w, 3]`, `train.labels`, `test.labels` as `U16 [n]` (65535: unlabelled).
pub fn write_splits(path: &std::path::Path, train: &Dataset, test: &Dataset) -> crate::Result<()> {
    use crate::files::Tensor;
    let shape = |d: &Dataset| vec![d.len(), d.h, d.w, 3];
    let tensors = [
        Tensor::u8("train.images", shape(train), &train.images),
        Tensor::u16("train.labels", vec![train.len()], &train.labels),
        Tensor::u8("test.images", shape(test), &test.images),
        Tensor::u16("test.labels", vec![test.len()], &test.labels),
    ];
    let meta = std::collections::HashMap::from([
        ("dataset".to_string(), train.name.clone()),
        ("classes".to_string(), train.classes.to_string()),
    ]);
    crate::files::write_safetensors(path, &tensors, meta)
}

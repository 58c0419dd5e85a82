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
    /// The images `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        Dataset {
            name: self.name.clone(),
            images: indices
                .iter()
                .flat_map(|&i| self.image(i))
                .copied()
                .collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            ..*self
        }
    }

    /// A seeded stratified sample of `n` images (every class, and the unlabelled images as
    /// one more group, keeps its share, rounded by largest remainder), in the data set's
    /// order.
    pub fn stratified(&self, n: usize, seed: u64) -> Dataset {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut groups: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
        for (i, &label) in self.labels.iter().enumerate() {
            groups.entry(label).or_default().push(i);
        }
        let total = self.len();
        // Quotas: the floor of each share, then one more for the largest remainders.
        let mut quotas: Vec<(usize, usize, u16)> = groups
            .iter()
            .map(|(&label, g)| (g.len() * n / total, g.len() * n % total, label))
            .collect();
        let short = n - quotas.iter().map(|q| q.0).sum::<usize>();
        let mut by_remainder: Vec<usize> = (0..quotas.len()).collect();
        by_remainder.sort_by_key(|&k| std::cmp::Reverse(quotas[k].1)); // stable: ties by label
        for &k in &by_remainder[..short] {
            quotas[k].0 += 1;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut chosen = Vec::with_capacity(n);
        for (quota, _, label) in quotas {
            let group = groups.get_mut(&label).expect("a quota per group");
            group.shuffle(&mut rng);
            chosen.extend_from_slice(&group[..quota]);
        }
        chosen.sort_unstable();
        self.subset(&chosen)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn labelled(labels: &[u16]) -> Dataset {
        Dataset {
            name: "t".into(),
            // Each pixel holds its image's index, to tell samples apart.
            images: (0..labels.len()).flat_map(|i| [i as u8; 3]).collect(),
            labels: labels.to_vec(),
            h: 1,
            w: 1,
            classes: 3,
        }
    }

    #[test]
    fn stratified_samples_should_keep_each_class_share() {
        // 60 of class 0, 30 of class 1, 10 unlabelled: 20 → 12, 6, 2.
        let labels: Vec<u16> = (0..100)
            .map(|i| match i % 10 {
                0..=5 => 0,
                6..=8 => 1,
                _ => u16::MAX,
            })
            .collect();
        let d = labelled(&labels);
        let s = d.stratified(20, 7);
        let count = |l: u16| s.labels.iter().filter(|&&x| x == l).count();
        assert_eq!((count(0), count(1), count(u16::MAX)), (12, 6, 2));
        let in_order: Vec<u8> = s.images.chunks(3).map(|px| px[0]).collect();
        assert!(
            in_order.windows(2).all(|w| w[0] < w[1]),
            "in the data set's order"
        );
        assert!(in_order
            .iter()
            .zip(&s.labels)
            .all(|(&i, &l)| labels[i as usize] == l));
        // Largest remainders: 7 of (60, 30, 10) → 4.2, 2.1, 0.7 → 4, 2, 1.
        let s7 = d.stratified(7, 7);
        assert_eq!(s7.labels.iter().filter(|&&x| x == u16::MAX).count(), 1);
        assert_eq!(s7.len(), 7);
        // The seed fixes the sample; another seed, another sample; all of it is everything.
        assert_eq!(d.stratified(20, 7).images, s.images);
        assert_ne!(d.stratified(20, 8).images, s.images);
        assert_eq!(d.stratified(100, 3).images, d.images);
    }
}

//! The kNN monitor of the self-supervised literature (as lightly and solo-learn run it):
//! representations ℓ2-normalised, cosine similarity to every training image, the `k` nearest
//! vote for their class with weight `exp(similarity / temperature)`; accuracy on the held-out
//! split. Representations come from the encoder in evaluation mode on unaugmented images.

use crate::backend::cpu::Cpu;
use crate::backend::{Backend, BnMode, Gemm};
use crate::data::augment::Augmenter;
use crate::data::Dataset;
use crate::error::Result;
use crate::nn::ResNet;
use rayon::prelude::*;

/// Representations `[indices.len(), repr_dim]` of the images `indices` of `data`, in batches
/// of `batch`, by the encoder on backend `be` (evaluation mode).
#[allow(clippy::too_many_arguments)]
pub fn embed<B: Backend>(
    be: &B,
    encoder: &ResNet,
    params: &B::Buffer,
    running: &B::Buffer,
    data: &Dataset,
    indices: &[usize],
    aug: &Augmenter,
    batch: usize,
) -> Result<Vec<f32>> {
    let dim = encoder.repr_dim();
    let mut out = Vec::with_capacity(indices.len() * dim);
    // Evaluation mode reads the running statistics and leaves them as they are; a copy keeps
    // the caller's untouched all the same.
    let mut running = be.upload(&be.download(running)?)?;
    let px = aug.size * aug.size * 3;
    let mut images = vec![0.0f32; batch * px];
    let mut acts: Option<crate::nn::Activations<B>> = None;
    for start in (0..indices.len()).step_by(batch) {
        let idx = &indices[start..indices.len().min(start + batch)];
        let n = idx.len();
        aug.plain(data, idx, &mut images);
        if acts.as_ref().is_none_or(|a| a.n != n) {
            acts = Some(encoder.activations(be, n, aug.size, aug.size)?);
        }
        let acts = acts.as_mut().unwrap();
        let x = be.upload(&images[..n * px])?;
        encoder.forward(be, params, &mut running, &x, BnMode::Eval, acts)?;
        out.extend(be.download(acts.representation())?);
    }
    Ok(out)
}

fn normalised(v: &[f32], dim: usize) -> Vec<f32> {
    let mut out = v.to_vec();
    out.par_chunks_mut(dim).for_each(|r| {
        let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        r.iter_mut().for_each(|x| *x /= norm);
    });
    out
}

/// Weighted kNN top-1 accuracy of `queries` against the `bank`, both `[·, dim]`.
#[allow(clippy::too_many_arguments)]
pub fn knn_accuracy(
    bank: &[f32],
    bank_labels: &[u16],
    queries: &[f32],
    query_labels: &[u16],
    dim: usize,
    classes: usize,
    k: usize,
    temperature: f32,
) -> f64 {
    let (bank, queries) = (normalised(bank, dim), normalised(queries, dim));
    let (n, k) = (bank_labels.len(), k.min(bank_labels.len()));
    const CHUNK: usize = 256;
    let mut correct = 0usize;
    let mut sims = vec![0.0f32; CHUNK * n];
    for (c, q) in queries.chunks(CHUNK * dim).enumerate() {
        let m = q.len() / dim;
        let g = Gemm {
            m,
            n,
            k: dim,
            lhs_t: false,
            rhs_t: true,
            accumulate: false,
        };
        Cpu.matmul(g, &mut sims, &q.to_vec(), &bank)
            .expect("the similarity buffers fit the product");
        correct += sims[..m * n]
            .par_chunks(n)
            .enumerate()
            .filter(|&(i, row)| {
                predict(row, bank_labels, classes, k, temperature)
                    == query_labels[c * CHUNK + i] as usize
            })
            .count();
    }
    correct as f64 / query_labels.len().max(1) as f64
}

/// The class with the largest sum of `exp(s / T)` over the `k` most similar bank entries
/// (ties to the smaller class index).
fn predict(sims: &[f32], labels: &[u16], classes: usize, k: usize, temperature: f32) -> usize {
    let mut order: Vec<usize> = (0..sims.len()).collect();
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, |&a, &b| sims[b].total_cmp(&sims[a]).then(a.cmp(&b)));
    }
    let mut votes = vec![0.0f64; classes];
    for &j in &order[..k] {
        votes[labels[j] as usize] += ((sims[j] / temperature) as f64).exp();
    }
    (0..classes).fold(0, |best, c| if votes[c] > votes[best] { c } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Brute force in f64: sort every similarity, sum the weights of the k best per class.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        bank: &[f32],
        bl: &[u16],
        q: &[f32],
        ql: &[u16],
        dim: usize,
        classes: usize,
        k: usize,
        t: f64,
    ) -> f64 {
        let norm = |v: &[f32]| -> Vec<f64> {
            let n = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            v.iter().map(|&x| x as f64 / n).collect()
        };
        let bank: Vec<Vec<f64>> = bank.chunks(dim).map(norm).collect();
        let mut correct = 0;
        for (qi, qv) in q.chunks(dim).map(norm).enumerate() {
            let mut s: Vec<(f64, usize)> = bank
                .iter()
                .enumerate()
                .map(|(j, b)| (b.iter().zip(&qv).map(|(a, c)| a * c).sum(), j))
                .collect();
            s.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
            let mut votes = vec![0.0; classes];
            for &(sim, j) in &s[..k] {
                votes[bl[j] as usize] += (sim / t).exp();
            }
            let best = (0..classes).fold(0, |b, c| if votes[c] > votes[b] { c } else { b });
            correct += (best == ql[qi] as usize) as usize;
        }
        correct as f64 / ql.len() as f64
    }

    #[test]
    fn knn_should_match_a_brute_force_reference() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (dim, classes) = (8, 3);
        // Three noisy clusters, so accuracy is neither 0 nor 1.
        let centres: Vec<Vec<f32>> = (0..classes)
            .map(|_| (0..dim).map(|_| r.random_range(-1.0..1.0)).collect())
            .collect();
        let mut sample = |n: usize| {
            let labels: Vec<u16> = (0..n).map(|i| (i % classes) as u16).collect();
            let feats: Vec<f32> = labels
                .iter()
                .flat_map(|&l| {
                    centres[l as usize]
                        .iter()
                        .map(|c| c + r.random_range(-1.2..1.2))
                        .collect::<Vec<_>>()
                })
                .collect();
            (feats, labels)
        };
        let (bank, bl) = sample(300);
        let (q, ql) = sample(290);
        for (k, t) in [(1, 0.1), (20, 0.1), (200, 0.07), (300, 1.0)] {
            let ours = knn_accuracy(&bank, &bl, &q, &ql, dim, classes, k, t as f32);
            let expected = reference(&bank, &bl, &q, &ql, dim, classes, k, t);
            assert!(
                (ours - expected).abs() <= 1.0 / 290.0 + 1e-12,
                "k {k}: {ours} vs {expected}"
            );
            assert!(ours > 0.4 && ours < 1.0, "k {k}: {ours}");
        }
    }
}

//! Linear evaluation: a linear classifier (softmax regression) on the frozen encoder's
//! representations, as the paper evaluates (docs/DESIGN.md §1): SGD with Nesterov momentum 0.9,
//! learning rate swept over {0.4, 0.3, 0.2, 0.1, 0.05} and chosen on a validation part of the
//! training split (10%), then trained on the whole training split and scored on the held-out
//! one. Unlike the paper's ImageNet protocol, representations are computed once, without
//! augmentation (the common small-data variant); they are standardised per dimension.

use crate::backend::cpu::Cpu;
use crate::backend::{Backend, Linear};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The paper's learning-rate sweep.
pub const LEARNING_RATES: [f32; 5] = [0.4, 0.3, 0.2, 0.1, 0.05];

/// Settings of the classifier's training.
#[derive(Clone, Copy, Debug)]
pub struct LinearConfig {
    pub epochs: usize,
    pub batch: usize,
    pub seed: u64,
}

impl Default for LinearConfig {
    fn default() -> Self {
        LinearConfig {
            epochs: 80,
            batch: 256,
            seed: 0,
        }
    }
}

/// The outcome: the learning rate chosen, its validation accuracy, and the test accuracy.
#[derive(Clone, Copy, Debug)]
pub struct LinearReport {
    pub lr: f32,
    pub val_accuracy: f64,
    pub test_accuracy: f64,
}

/// A softmax classifier, trained on `x [n, dim]`, `y [n]`: its parameters are one buffer,
/// the weight `[classes, dim]` then the bias `[classes]`. The features are in host memory, so
/// it runs on the CPU backend.
pub struct Classifier {
    dim: usize,
    classes: usize,
    params: Vec<f32>,
}

/// The classifier's Linear layer on `rows` rows.
fn layer(dim: usize, classes: usize, rows: usize) -> Linear {
    Linear {
        rows,
        input: dim,
        output: classes,
        weight: 0..classes * dim,
        bias: Some(classes * dim..classes * dim + classes),
    }
}

impl Classifier {
    /// Minibatch SGD with Nesterov momentum on the mean cross-entropy, cosine-decayed lr.
    pub fn train(
        x: &[f32],
        y: &[u16],
        dim: usize,
        classes: usize,
        lr: f32,
        cfg: &LinearConfig,
    ) -> Self {
        let n = y.len();
        let mut c = Classifier {
            dim,
            classes,
            params: vec![0.0; classes * dim + classes],
        };
        let mut velocity = vec![0.0f32; c.params.len()];
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let steps = cfg.epochs * n.div_ceil(cfg.batch);
        let mut step = 0;
        let (mut xb, mut logits) = (
            vec![0.0f32; cfg.batch * dim],
            vec![0.0f32; cfg.batch * classes],
        );
        for _ in 0..cfg.epochs {
            order.shuffle(&mut rng);
            for chunk in order.chunks(cfg.batch) {
                let m = chunk.len();
                for (row, &i) in xb.chunks_mut(dim).zip(chunk) {
                    row.copy_from_slice(&x[i * dim..][..dim]);
                }
                let l = layer(dim, classes, m);
                Cpu.linear_forward(&l, &c.params, &xb, &mut logits)
                    .expect("the classifier's buffers fit its layer");
                // ∂(mean cross-entropy)/∂logits = (softmax − one-hot) / m.
                for (row, &i) in logits.chunks_mut(classes).zip(chunk) {
                    softmax(row);
                    row[y[i] as usize] -= 1.0;
                    row.iter_mut().for_each(|v| *v /= m as f32);
                }
                let mut grads = vec![0.0f32; c.params.len()];
                Cpu.linear_backward(&l, &c.params, &xb, &logits, &mut grads, None)
                    .expect("the classifier's buffers fit its layer");
                let rate =
                    lr * 0.5 * (1.0 + (std::f32::consts::PI * step as f32 / steps as f32).cos());
                for (p, (v, g)) in c.params.iter_mut().zip(velocity.iter_mut().zip(&grads)) {
                    *v = 0.9 * *v + g;
                    *p -= rate * (g + 0.9 * *v); // Nesterov
                }
                step += 1;
            }
        }
        c
    }

    /// Top-1 accuracy on `x [n, dim]`, `y [n]`.
    pub fn accuracy(&self, x: &[f32], y: &[u16]) -> f64 {
        let n = y.len();
        let mut logits = vec![0.0f32; n * self.classes];
        let l = layer(self.dim, self.classes, n);
        Cpu.linear_forward(&l, &self.params, &x.to_vec(), &mut logits)
            .expect("the classifier's buffers fit its layer");
        let correct = logits
            .chunks(self.classes)
            .zip(y)
            .filter(|(row, &label)| {
                (0..self.classes).fold(0, |best, c| if row[c] > row[best] { c } else { best })
                    == label as usize
            })
            .count();
        correct as f64 / n.max(1) as f64
    }
}

fn softmax(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    row.iter_mut().for_each(|v| *v = (*v - max).exp());
    let total: f32 = row.iter().sum();
    row.iter_mut().for_each(|v| *v /= total);
}

/// Per-dimension mean and standard deviation of `x [n, dim]`.
fn standardiser(x: &[f32], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (x.len() / dim).max(1) as f64;
    let mut mean = vec![0.0f64; dim];
    let mut sq = vec![0.0f64; dim];
    for row in x.chunks(dim) {
        for (j, &v) in row.iter().enumerate() {
            mean[j] += v as f64;
            sq[j] += (v as f64).powi(2);
        }
    }
    let mean: Vec<f64> = mean.iter().map(|m| m / n).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(s, m)| ((s / n - m * m).max(0.0).sqrt().max(1e-6)) as f32)
        .collect();
    (mean.iter().map(|&m| m as f32).collect(), std)
}

fn standardise(x: &[f32], dim: usize, (mean, std): &(Vec<f32>, Vec<f32>)) -> Vec<f32> {
    x.chunks(dim)
        .flat_map(|row| row.iter().zip(mean).zip(std).map(|((v, m), s)| (v - m) / s))
        .collect()
}

/// The whole protocol: sweep on a validation split, retrain on all training data, test.
pub fn linear_eval(
    train_x: &[f32],
    train_y: &[u16],
    test_x: &[f32],
    test_y: &[u16],
    dim: usize,
    classes: usize,
    cfg: &LinearConfig,
) -> LinearReport {
    let stats = standardiser(train_x, dim);
    let (train_x, test_x) = (
        standardise(train_x, dim, &stats),
        standardise(test_x, dim, &stats),
    );
    let n = train_y.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x0076_616c));
    let (val, fit) = order.split_at(n / 10);
    let gather = |idx: &[usize]| -> (Vec<f32>, Vec<u16>) {
        (
            idx.iter()
                .flat_map(|&i| train_x[i * dim..][..dim].to_vec())
                .collect(),
            idx.iter().map(|&i| train_y[i]).collect(),
        )
    };
    let ((fx, fy), (vx, vy)) = (gather(fit), gather(val));
    let (lr, val_accuracy) = LEARNING_RATES
        .iter()
        .map(|&lr| {
            (
                lr,
                Classifier::train(&fx, &fy, dim, classes, lr, cfg).accuracy(&vx, &vy),
            )
        })
        .fold((LEARNING_RATES[0], -1.0), |best, cand| {
            if cand.1 > best.1 {
                cand
            } else {
                best
            }
        });
    let test_accuracy =
        Classifier::train(&train_x, train_y, dim, classes, lr, cfg).accuracy(&test_x, test_y);
    LinearReport {
        lr,
        val_accuracy,
        test_accuracy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn clusters(
        n: usize,
        dim: usize,
        classes: usize,
        spread: f32,
        seed: u64,
    ) -> (Vec<f32>, Vec<u16>) {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let centres: Vec<f32> = (0..classes * dim)
            .map(|_| r.random_range(-1.0..1.0))
            .collect();
        let y: Vec<u16> = (0..n).map(|i| (i % classes) as u16).collect();
        let x = y
            .iter()
            .flat_map(|&c| {
                (0..dim)
                    .map(|j| centres[c as usize * dim + j] + r.random_range(-spread..spread))
                    .collect::<Vec<_>>()
            })
            .collect();
        (x, y)
    }

    #[test]
    fn linear_eval_should_separate_separable_classes_and_not_invent_signal() {
        let cfg = LinearConfig {
            epochs: 30,
            batch: 64,
            seed: 1,
        };
        let (x, y) = clusters(600, 16, 4, 0.3, 1);
        let (tx, ty) = clusters(200, 16, 4, 0.3, 1);
        let r = linear_eval(&x, &y, &tx[..], &ty, 16, 4, &cfg);
        assert!(r.test_accuracy > 0.95, "{r:?}");
        assert!(LEARNING_RATES.contains(&r.lr));
        // Labels unrelated to the features: chance level on held-out data.
        let shuffled: Vec<u16> = (0..600).map(|i| ((i * 7 + i / 3) % 4) as u16).collect();
        let (nx, _) = clusters(600, 16, 4, 2.0, 3);
        let r = linear_eval(&nx, &shuffled, &tx, &ty, 16, 4, &cfg);
        assert!(r.test_accuracy < 0.45, "{r:?}");
    }

    #[test]
    fn cross_entropy_gradient_should_match_finite_differences() {
        // One step of training from zero moves the weights along −lr·∂L/∂W; compare the
        // gradient the classifier uses with a difference quotient of the mean cross-entropy.
        let (x, y) = clusters(8, 3, 3, 0.5, 5);
        let loss = |w: &[f32], b: &[f32]| -> f64 {
            let mut total = 0.0;
            for (row, &label) in x.chunks(3).zip(&y) {
                let logits: Vec<f64> = (0..3)
                    .map(|c| {
                        b[c] as f64
                            + (0..3)
                                .map(|j| w[c * 3 + j] as f64 * row[j] as f64)
                                .sum::<f64>()
                    })
                    .collect();
                let max = logits.iter().cloned().fold(f64::MIN, f64::max);
                let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
                total += lse - logits[label as usize];
            }
            total / 8.0
        };
        let w0: Vec<f32> = (0..9).map(|i| (i as f32 - 4.0) / 10.0).collect();
        let b0 = vec![0.1f32, -0.2, 0.05];
        let mut logits = vec![0.0f32; 8 * 3];
        let (l, params) = (layer(3, 3, 8), [&w0[..], &b0[..]].concat());
        Cpu.linear_forward(&l, &params, &x, &mut logits).unwrap();
        for (row, &label) in logits.chunks_mut(3).zip(&y) {
            softmax(row);
            row[label as usize] -= 1.0;
            row.iter_mut().for_each(|v| *v /= 8.0);
        }
        let mut grads = vec![0.0f32; 12];
        Cpu.linear_backward(&l, &params, &x, &logits, &mut grads, None)
            .unwrap();
        let (gw, gb) = grads.split_at(9);
        for k in 0..9 {
            let (mut p, mut m) = (w0.clone(), w0.clone());
            p[k] += 1e-3;
            m[k] -= 1e-3;
            let fd = (loss(&p, &b0) - loss(&m, &b0)) / 2e-3;
            assert!(
                (fd - gw[k] as f64).abs() < 1e-4,
                "dW[{k}]: {} vs {fd}",
                gw[k]
            );
        }
        for k in 0..3 {
            let (mut p, mut m) = (b0.clone(), b0.clone());
            p[k] += 1e-3;
            m[k] -= 1e-3;
            let fd = (loss(&w0, &p) - loss(&w0, &m)) / 2e-3;
            assert!(
                (fd - gb[k] as f64).abs() < 1e-4,
                "db[{k}]: {} vs {fd}",
                gb[k]
            );
        }
    }
}

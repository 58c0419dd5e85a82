//! The BYOL training step and its data pipeline, beside PyTorch in the same run.
//!
//! - Augmentation: both views (T and T′) of a batch, images/s at 32×32 and 96×96.
//! - The step: ResNet-18 (CIFAR stem) online and target, projector 512→4096→256, predictor
//!   256→4096→256, batch 128 of 32×32 images: two target passes, two online passes with
//!   backward, LARS, EMA. Images/s (each image seen in two views), peak memory, and PyTorch's
//!   same step (`scripts/torch/bench_byol_step.py`) with the ratio.
//!
//! Run: `cargo bench --bench byol` (`-- --no-torch`, `--batch N`, `--width N`, `--iters N`,
//! `--mlp N` for the MLPs' hidden units, 4096 unless given: `--width 16 --batch 64 --mlp 1024`
//! is the default run's step;
//! `BYOL_BENCH_THREADS` sets the threads, default 2).

use host::byol::{Byol, ByolConfig, LrMultipliers, Optimizer};
use host::data::augment::{Augmenter, ViewConfig};
use host::data::Dataset;
use host::nn::{Arch, ResNetConfig, Stem};
use rand::{Rng, SeedableRng};
use std::time::Instant;

mod common;
use common::{arg, flag, median_secs, peak_rss_mib, torch_baseline};

fn bench_augmentation(side: usize) {
    let n = 256;
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let data = Dataset {
        name: "random".into(),
        images: (0..n * side * side * 3).map(|_| r.random()).collect(),
        labels: vec![0; n],
        h: side,
        w: side,
        classes: 1,
    };
    let aug = Augmenter {
        views: [ViewConfig::BYOL_T, ViewConfig::BYOL_T_PRIME],
        size: side,
        mean: [0.5; 3],
        std: [0.25; 3],
    };
    let idx: Vec<usize> = (0..n).collect();
    let (mut a, mut b) = (
        vec![0.0; n * side * side * 3],
        vec![0.0; n * side * side * 3],
    );
    aug.batch(&data, &idx, 0, [&mut a, &mut b]);
    let t = Instant::now();
    let reps = 3;
    for s in 0..reps {
        aug.batch(&data, &idx, s + 1, [&mut a, &mut b]);
    }
    let ips = (reps as usize * n) as f64 / t.elapsed().as_secs_f64();
    println!("augment {side}x{side}: {ips:.0} images/s (both views of each)");
}

fn main() {
    let threads = common::threads();
    bench_augmentation(32);
    bench_augmentation(96);

    let batch: usize = arg("--batch", "128").parse().unwrap();
    let width: usize = arg("--width", "64").parse().unwrap();
    let iters: usize = arg("--iters", "3").parse().unwrap();
    let encoder = ResNetConfig {
        arch: Arch::ResNet18,
        stem: Stem::Cifar,
        width,
        in_channels: 3,
    };
    let mlp: usize = arg("--mlp", "4096").parse().unwrap();
    let cfg = ByolConfig::byol(encoder, mlp, 256, mlp);
    let byol = Byol::new(cfg).unwrap();
    let mut state = byol.init(0);
    let mut work = byol.work(batch, 32, 32).unwrap();
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let views: Vec<Vec<f32>> = (0..2)
        .map(|_| {
            (0..batch * 32 * 32 * 3)
                .map(|_| r.random_range(-1.0..1.0))
                .collect()
        })
        .collect();
    let lars = Optimizer::official_lars(1.5e-6);
    let median = median_secs(1, iters, || {
        byol.step(
            &mut state,
            &mut work,
            [&views[0], &views[1]],
            0.1,
            0.99,
            &lars,
            LrMultipliers::default(),
        )
        .unwrap();
    });
    let (ips, rss) = (batch as f64 / median, peak_rss_mib());
    println!("rust  byol-step batch={batch} width={width} threads={threads} images_per_s={ips:.2} step_s={median:.3} peak_rss_mib={rss:.0}");
    if !flag("--no-torch") && width == 64 {
        let args: Vec<String> = [
            "--batch",
            &batch.to_string(),
            "--threads",
            &threads.to_string(),
            "--iters",
            &iters.to_string(),
        ]
        .into_iter()
        .map(String::from)
        .collect();
        torch_baseline("bench_byol_step.py", &args, ips, rss);
    }
}

//! ResNet forward + backward on the CPU, beside the machine's GEMM peak and PyTorch, in one run.
//!
//! Configuration (issue: ResNet engine): ResNet-18, CIFAR stem, 32×32 images, batch 128,
//! training mode, `J = Σ repr ⊙ R`. Reports images/s, achieved GFLOP/s (3.33 GFLOP per image
//! forward + backward), the GEMM peak measured in the same run (2048³ through the same GEMM
//! crate), peak memory (VmHWM), and, when `python3` has torch, the same configuration in
//! PyTorch (`scripts/torch/bench_resnet.py`) and the ratio.
//!
//! Run: `cargo bench --bench resnet` (`-- --arch resnet50 --batch 32` and so on to vary it;
//! `--no-torch` skips PyTorch; `BYOL_BENCH_THREADS` sets the thread count, default 2).

use host::cpu::gemm::matmul;
use host::nn::{Arch, ResNet, ResNetConfig, Stem, WeightInit};
use host::{BnMode, Cpu};
use rand::{Rng, SeedableRng};
use std::time::Instant;

mod common;
use common::{arg, flag, median_secs, peak_rss_mib, torch_baseline};

/// Forward + backward FLOPs per image of ResNet-18 at 32×32 with the CIFAR stem (3 × the
/// forward's 1.11 GFLOP, counting a multiply-add as 2).
const GFLOP_PER_IMAGE_R18_CIFAR32: f64 = 3.33;

fn gemm_peak_gflops() -> f64 {
    let n = 2048;
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let a: Vec<f32> = (0..n * n).map(|_| r.random_range(-1.0..1.0)).collect();
    let b = a.clone();
    let mut c = vec![0.0f32; n * n];
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let t = Instant::now();
        matmul(&mut c, n, n, n, &a, false, &b, false, false);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / best / 1e9
}

fn main() {
    let threads = common::threads();
    let arch: Arch = arg("--arch", "resnet18").parse().unwrap();
    let batch: usize = arg("--batch", "128").parse().unwrap();
    let size: usize = arg("--size", "32").parse().unwrap();
    let iters: usize = arg("--iters", "5").parse().unwrap();

    let net = ResNet::new(ResNetConfig::new(arch, Stem::Cifar)).unwrap();
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let params = net.init_params(WeightInit::Torchvision, &mut r);
    let mut running = net.init_running();
    let x: Vec<f32> = (0..batch * size * size * 3)
        .map(|_| r.random_range(-1.0..1.0))
        .collect();
    let weights: Vec<f32> = (0..batch * net.repr_dim())
        .map(|_| r.random_range(-1.0..1.0))
        .collect();
    let mut grads = vec![0.0; params.len()];
    let mut acts = net.activations(&Cpu, batch, size, size).unwrap();
    let median = median_secs(1, iters, || {
        grads.fill(0.0);
        net.forward(&Cpu, &params, &mut running, &x, BnMode::Train, &mut acts)
            .unwrap();
        net.backward(&Cpu, &params, &x, &mut acts, &weights, &mut grads, None)
            .unwrap();
    });
    let (ips, rss, peak, name) = (
        batch as f64 / median,
        peak_rss_mib(),
        gemm_peak_gflops(),
        arch.name(),
    );
    print!("rust  {name} batch={batch} size={size} threads={threads} images_per_s={ips:.2} step_s={median:.3} peak_rss_mib={rss:.0}");
    if arch == Arch::ResNet18 && size == 32 {
        let achieved = ips * GFLOP_PER_IMAGE_R18_CIFAR32;
        println!(
            " gflops={achieved:.0} gemm_peak_gflops={peak:.0} ({:.0}% of peak)",
            100.0 * achieved / peak
        );
    } else {
        println!(" gemm_peak_gflops={peak:.0}");
    }
    if !flag("--no-torch") {
        let args = [
            "--arch",
            name,
            "--batch",
            &batch.to_string(),
            "--size",
            &size.to_string(),
        ]
        .into_iter()
        .map(String::from)
        .chain([
            "--threads".into(),
            threads.to_string(),
            "--iters".into(),
            iters.to_string(),
        ])
        .collect::<Vec<_>>();
        torch_baseline("bench_resnet.py", &args, ips, rss);
    }
}

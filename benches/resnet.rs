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
use host::nn::{Arch, ResNet, ResNetConfig, Stem};
use host::BnMode;
use rand::{Rng, SeedableRng};
use std::time::Instant;

/// Forward + backward FLOPs per image of ResNet-18 at 32×32 with the CIFAR stem (3 × the
/// forward's 1.11 GFLOP, counting a multiply-add as 2).
const GFLOP_PER_IMAGE_R18_CIFAR32: f64 = 3.33;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.into())
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

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
    let threads: usize = std::env::var("BYOL_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let arch: Arch = arg("--arch", "resnet18").parse().unwrap();
    let batch: usize = arg("--batch", "128").parse().unwrap();
    let size: usize = arg("--size", "32").parse().unwrap();
    let iters: usize = arg("--iters", "5").parse().unwrap();

    let net = ResNet::new(ResNetConfig::new(arch, Stem::Cifar)).unwrap();
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let params = net.init_params(&mut r);
    let mut running = net.init_running();
    let x: Vec<f32> = (0..batch * size * size * 3)
        .map(|_| r.random_range(-1.0..1.0))
        .collect();
    let weights: Vec<f32> = (0..batch * net.repr_dim())
        .map(|_| r.random_range(-1.0..1.0))
        .collect();
    let mut grads = vec![0.0; params.len()];
    let mut acts = net.activations(batch, size, size).unwrap();
    let mut step = || {
        grads.fill(0.0);
        net.forward(&params, &mut running, &x, BnMode::Train, &mut acts)
            .unwrap();
        net.backward(&params, &x, &mut acts, &weights, &mut grads, None)
            .unwrap();
    };
    step(); // warm-up
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            step();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = times[iters / 2];
    let ips = batch as f64 / median;
    let rss = peak_rss_mib();
    let peak = gemm_peak_gflops();
    let name = arch.name();
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

    if std::env::args().any(|a| a == "--no-torch") {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/torch/bench_resnet.py");
    let out = std::process::Command::new("python3")
        .args([
            script,
            "--arch",
            name,
            "--batch",
            &batch.to_string(),
            "--size",
            &size.to_string(),
        ])
        .args([
            "--threads",
            &threads.to_string(),
            "--iters",
            &iters.to_string(),
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let line = String::from_utf8_lossy(&o.stdout).trim().to_string();
            println!("{line}");
            let field = |k: &str| -> Option<f64> {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix(k)?.parse().ok())
            };
            if let (Some(t_ips), Some(t_rss)) = (field("images_per_s="), field("peak_rss_mib=")) {
                println!(
                    "ratio rust/torch: throughput {:.2}x, peak memory {:.2}x",
                    ips / t_ips,
                    rss / t_rss
                );
            }
        }
        _ => println!("torch baseline skipped: python3 with torch and torchvision not found"),
    }
}

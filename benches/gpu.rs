//! The GPU beside PyTorch on the same GPU, in the same run, as ratios:
//!
//! - the BYOL step: ResNet-18 (CIFAR stem), projector 512→4096→256, predictor 256→4096→256,
//!   batch 512 of 32×32 images (two target passes, two online passes with backward, LARS,
//!   EMA), ours in f32, TF32 and bf16 against PyTorch eager in the same (bf16: AMP autocast
//!   with channels_last) (`scripts/torch/bench_byol_step.py`);
//! - ResNet-50 forward+backward, ImageNet stem, batch 128 of 224×224
//!   (`scripts/torch/bench_resnet.py`), same modes.
//!
//! The EMA against a device-to-device copy is `cargo bench --bench kernels` (its GPU part).
//! Run on a GPU machine: `cargo bench --features cuda --bench gpu` (`-- --no-torch`,
//! `--iters N`, `--batch N` for the step). Without a GPU it says so and exits.

use host::backend::Precision;
use host::byol::{Byol, ByolConfig, LrMultipliers, Optimizer};
use host::nn::{Arch, ResNet, ResNetConfig, Stem, WeightInit};
use host::{Backend, BnMode, Cuda};
use rand::{Rng, SeedableRng};

mod common;
use common::{arg, flag, median_secs, torch_baseline};

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-1.0..1.0)).collect()
}

/// Images/s of the BYOL step on `gpu`.
fn byol_step(gpu: Cuda, batch: usize, iters: usize) -> f64 {
    let encoder = ResNetConfig::new(Arch::ResNet18, Stem::Cifar);
    let byol = Byol::on(gpu, ByolConfig::byol(encoder, 4096, 256, 4096)).unwrap();
    let mut state = byol.init(0).to_backend(&byol.backend).unwrap();
    let mut work = byol.work(batch, 32, 32).unwrap();
    let be = &byol.backend;
    let views = [1, 2].map(|s| be.upload(&random(batch * 32 * 32 * 3, s)).unwrap());
    let lars = Optimizer::official_lars(1.5e-6);
    // The step returns its loss, read back from the GPU: each timed step has finished.
    let median = median_secs(2, iters, || {
        let views = [&views[0], &views[1]];
        let m = LrMultipliers::default();
        byol.step(&mut state, &mut work, views, 0.1, 0.99, &lars, m)
            .unwrap();
    });
    batch as f64 / median
}

/// Images/s of ResNet-50 forward+backward at 224×224 on `gpu`.
fn resnet50(gpu: &Cuda, batch: usize, iters: usize) -> f64 {
    let net = ResNet::new(ResNetConfig::new(Arch::ResNet50, Stem::ImageNet)).unwrap();
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let params = gpu
        .upload(&net.init_params(WeightInit::Torchvision, &mut r))
        .unwrap();
    let mut running = gpu.upload(&net.init_running()).unwrap();
    let x = gpu.upload(&random(batch * 224 * 224 * 3, 3)).unwrap();
    let weights = gpu.upload(&random(batch * net.repr_dim(), 4)).unwrap();
    let mut grads = gpu.zeros(net.registry.param_len()).unwrap();
    let mut acts = net.activations(gpu, batch, 224, 224).unwrap();
    let median = median_secs(2, iters, || {
        gpu.fill_zero(&mut grads).unwrap();
        net.forward(gpu, &params, &mut running, &x, BnMode::Train, &mut acts)
            .unwrap();
        net.backward(gpu, &params, &x, &mut acts, &weights, &mut grads, None)
            .unwrap();
        gpu.synchronize().unwrap();
    });
    batch as f64 / median
}

fn torch(script: &str, args: &[&str], ours: f64) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    torch_baseline(script, &args, ours, f64::NAN);
}

fn main() {
    let gpu = match Cuda::new(0) {
        Ok(g) => g,
        Err(e) => {
            println!("gpu bench skipped: {e}");
            return;
        }
    };
    println!("gpu  device: {}", gpu.device_name().unwrap());
    drop(gpu);
    let iters: usize = arg("--iters", "10").parse().unwrap();
    let batch: usize = arg("--batch", "512").parse().unwrap();
    let (it, b) = (iters.to_string(), batch.to_string());
    for precision in [Precision::F32, Precision::Tf32, Precision::Bf16] {
        let ips = byol_step(Cuda::with_precision(0, precision).unwrap(), batch, iters);
        let p = format!("{precision:?}").to_lowercase();
        println!("rust  byol-step batch={batch} device=cuda precision={p} images_per_s={ips:.1}");
        if !flag("--no-torch") {
            let base = [
                "--device",
                "cuda",
                "--batch",
                &b,
                "--iters",
                &it,
                "--precision",
            ];
            torch("bench_byol_step.py", &[&base[..], &[&p]].concat(), ips);
        }
    }
    for precision in [Precision::F32, Precision::Tf32, Precision::Bf16] {
        let gpu = Cuda::with_precision(0, precision).unwrap();
        let ips = resnet50(&gpu, 128, iters);
        let p = format!("{precision:?}").to_lowercase();
        println!(
            "rust  resnet50 batch=128 size=224 device=cuda precision={p} images_per_s={ips:.1}"
        );
        if !flag("--no-torch") {
            let base = [
                "--arch",
                "resnet50",
                "--stem",
                "imagenet",
                "--size",
                "224",
                "--batch",
                "128",
                "--device",
                "cuda",
                "--iters",
                &it,
                "--precision",
            ];
            torch("bench_resnet.py", &[&base[..], &[&p]].concat(), ips);
        }
    }
}

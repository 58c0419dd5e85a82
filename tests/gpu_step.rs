//! Whole BYOL steps on the GPU against the CPU: a step of a tiny ResNet-18 (both stems, so
//! max-pooling too) from the same state and views gives the same loss, gradient, parameters
//! and running statistics in f32, and lands as near in TF32 and bf16 as rounding allows; a
//! state moved between the devices mid-run (what resuming a checkpoint on the other device
//! does) continues as if it had stayed. Built with `--features cuda`; ignored without a GPU
//! (`scripts/gpu-bundle.sh` runs them with `--ignored`).
//!
//! The tolerances are calibrated, in the test, by the CPU itself: this tiny network at batch
//! 12 amplifies rounding strongly (inputs moved by 5e-4 of their value move its first
//! gradient by 4–13% and its state after two steps by 1e-2 to 6e-2, measured on the CPU),
//! so a fixed tolerance is either loose enough to hide a bug or tight enough to fail on
//! rounding, as the fixed ones of the first GPU run (2026-11-30) did. Each quantity's
//! tolerance is ten times what the CPU's own result moves when its input views and parameters
//! are rounded at the precision's unit roundoff (f32 2⁻²⁴, TF32 2⁻¹¹, bf16 2⁻⁸). A wrong
//! kernel moves the f32 result by orders of magnitude more than rounding does.
#![cfg(feature = "cuda")]

#[macro_use]
mod common;

use common::*;
use host::backend::Precision;
use host::byol::{Byol, ByolState};
use host::nn::Stem;
use host::{Backend, Cpu, Cuda};
use rand::Rng;

/// What `steps` BYOL steps give: the last loss, the last gradient, the state after them.
struct Outcome {
    loss: f32,
    grads: Vec<f32>,
    state: ByolState<Cpu>,
}

fn steps<B: Backend>(
    backend: B,
    stem: Stem,
    state: &ByolState<Cpu>,
    views: &[Vec<f32>; 2],
    size: usize,
    steps: usize,
) -> Outcome {
    let byol = Byol::on(backend, tiny_byol(stem)).unwrap();
    let (losses, state, grads) = byol_steps(&byol, state, [&views[0], &views[1]], size, steps);
    Outcome {
        loss: *losses.last().unwrap(),
        grads,
        state,
    }
}

/// The online network's tensors by name (`encoder.conv1.weight`, …).
fn byol_registry(stem: Stem) -> host::nn::Registry {
    Byol::new(tiny_byol(stem)).unwrap().registry
}

fn setup(stem: Stem) -> (ByolState<Cpu>, [Vec<f32>; 2], usize) {
    let size = match stem {
        Stem::Cifar => 8,
        Stem::ImageNet => 32,
    };
    let batch = 12;
    let mut r = rng(9);
    let views = [
        uniform(&mut r, batch * size * size * 3, 1.0),
        uniform(&mut r, batch * size * size * 3, 1.0),
    ];
    let state = Byol::new(tiny_byol(stem)).unwrap().init(7);
    (state, views, size)
}

/// Relative distances of `a` from `b`: loss, gradient, online and target parameters, online
/// running statistics.
fn distances(a: &Outcome, b: &Outcome) -> [f64; 5] {
    [
        ((a.loss - b.loss) / b.loss).abs() as f64,
        relative(&a.grads, &b.grads),
        relative(&a.state.online, &b.state.online),
        relative(&a.state.target, &b.state.target),
        relative(&a.state.online_running, &b.state.online_running),
    ]
}
const QUANTITIES: [&str; 5] = ["loss", "gradient", "online", "target", "running statistics"];

/// `values`, each rounded as a precision of relative unit roundoff `unit` might: at f32's
/// (2⁻²⁴) its last bit flipped or not, at random (a product by `1 ± 2⁻²⁵` would round back
/// to the value itself), at coarser ones multiplied by a random `1 + unit·(u − ½)`.
fn rounded(values: &[f32], unit: f32, r: &mut rand_chacha::ChaCha8Rng) -> Vec<f32> {
    values
        .iter()
        .map(|&x| {
            if unit <= f32::EPSILON {
                f32::from_bits(x.to_bits() ^ r.random::<bool>() as u32)
            } else {
                x * (1.0 + unit * (r.random::<f32>() - 0.5))
            }
        })
        .collect()
}

/// Ten times how far the CPU's own `steps`-step outcome `want` from `state` and `views` moves
/// when the views and the parameters (online and target) are rounded at relative precision
/// `unit`, plus 1e-7. The
/// parameters matter as much as the views: TF32 and bf16 round a convolution's weights as
/// well as its input (the first GPU run, which rounded only the views, saw the loss move two
/// to four times further than the views alone explained).
fn tolerances(
    stem: Stem,
    (state, views, size): (&ByolState<Cpu>, &[Vec<f32>; 2], usize),
    steps_: usize,
    unit: f32,
    want: &Outcome,
) -> [f64; 5] {
    let mut r = rng(3);
    let views = views.each_ref().map(|v| rounded(v, unit, &mut r));
    let mut state = state.to_backend(&Cpu).unwrap();
    state.online = rounded(&state.online, unit, &mut r);
    state.target = rounded(&state.target, unit, &mut r);
    let moved = steps(Cpu, stem, &state, &views, size, steps_);
    distances(&moved, want).map(|d| 10.0 * d + 1e-7)
}

/// Failures of `got` against `want` within `tol`, each naming the quantity; a gradient or
/// parameter failure names the tensors furthest off.
fn check(tag: &str, stem: Stem, got: &Outcome, want: &Outcome, tol: [f64; 5]) -> Vec<String> {
    let d = distances(got, want);
    let registry = byol_registry(stem);
    let line: Vec<String> = (0..5)
        .map(|k| format!("{} {:.1e} (tolerance {:.1e})", QUANTITIES[k], d[k], tol[k]))
        .collect();
    println!("{tag}: {}", line.join(", "));
    (0..5)
        .filter(|&k| d[k] >= tol[k])
        .map(|k| {
            let worst = match k {
                1 => worst_params(&registry, &got.grads, &want.grads, 4),
                2 => worst_params(&registry, &got.state.online, &want.state.online, 4),
                _ => String::new(),
            };
            format!("{tag}: {}; worst tensors: {worst}", line[k])
        })
        .collect()
}

/// One step, GPU against CPU, in every precision. Only f32 is held to the gradient: TF32 and
/// bf16 round every convolution's and GEMM's inputs, and on this network that moves the
/// gradient by about as much as its own size (the CPU's gradient moves by 1.4 to 4 times its
/// norm when its inputs and weights are rounded so; a pre-BatchNorm bias's true gradient is
/// zero, so its computed one is rounding alone).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn one_gpu_step_should_match_the_cpu() {
    // Every stem and precision runs before the verdict, so one GPU run measures all six.
    let mut failures = Vec::new();
    for stem in [Stem::Cifar, Stem::ImageNet] {
        let (state, views, size) = setup(stem);
        let want = steps(Cpu, stem, &state, &views, size, 1);
        for (precision, unit) in [
            (Precision::F32, 2f32.powi(-24)),
            (Precision::Tf32, 2f32.powi(-11)),
            (Precision::Bf16, 2f32.powi(-8)),
        ] {
            let mut tol = tolerances(stem, (&state, &views, size), 1, unit, &want);
            if precision != Precision::F32 {
                tol[1] = f64::INFINITY;
                // TF32 and bf16 also round every layer's input activations, which rounding
                // the views and weights does not imitate: the first GPU run's loss moved by
                // 0.7 (TF32) and 1.8 (bf16) units of roundoff with the ImageNet stem.
                tol[0] = tol[0].max(4.0 * unit as f64);
            }
            let gpu = Cuda::with_precision(0, precision).unwrap();
            let got = steps(gpu, stem, &state, &views, size, 1);
            failures.extend(check(
                &format!("{stem:?} {precision:?}"),
                stem,
                &got,
                &want,
                tol,
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// One step on one device, then one on the other, equals two on the CPU (either way): the
/// momentum, the step count and the running statistics travel with the state. Losing the
/// momentum moves the parameters by 3.8e-2 of their norm (measured on the CPU by zeroing it
/// between the two steps), hundreds of times the online tolerance (4.6e-5 on the H200).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_state_should_move_between_cpu_and_gpu_mid_run() {
    let stem = Stem::Cifar;
    let (state, views, size) = setup(stem);
    let want = steps(Cpu, stem, &state, &views, size, 2);
    let tol = tolerances(stem, (&state, &views, size), 2, 2f32.powi(-24), &want);
    let gpu = || Cuda::new(0).unwrap();
    let after_cpu = steps(Cpu, stem, &state, &views, size, 1).state;
    let cpu_then_gpu = steps(gpu(), stem, &after_cpu, &views, size, 1);
    let after_gpu = steps(gpu(), stem, &state, &views, size, 1).state;
    let gpu_then_cpu = steps(Cpu, stem, &after_gpu, &views, size, 1);
    let mut failures = Vec::new();
    for (what, got) in [
        ("CPU then GPU", &cpu_then_gpu),
        ("GPU then CPU", &gpu_then_cpu),
    ] {
        assert_eq!(got.state.step, want.state.step, "{what}: step count");
        failures.extend(check(what, stem, got, &want, tol));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The data-parallel GPU backend with NCCL's gradient average, at world size 1 (one GPU can
/// check it): the same steps as the plain GPU backend.
#[test]
#[ignore = "needs an NVIDIA GPU and NCCL"]
fn nccl_at_world_size_one_should_equal_the_plain_gpu_step() {
    use host::backend::distributed::Distributed;
    use host::dist::{nccl::Nccl, Single};
    use std::sync::Arc;
    let stem = Stem::Cifar;
    let (state, views, size) = setup(stem);
    let want = steps(Cuda::new(0).unwrap(), stem, &state, &views, size, 3);
    let gpu = Cuda::new(0).unwrap();
    let nccl = Nccl::new(gpu.stream(), &Single).unwrap();
    let backend = Distributed::new(gpu, Arc::new(Single), true)
        .with_device_average(Box::new(move |buf| nccl.average(buf)));
    let got = steps(backend, stem, &state, &views, size, 3);
    let d = relative(&got.state.online, &want.state.online);
    println!("NCCL world 1: parameters {d:.1e} from the plain GPU step");
    assert!(d < 1e-6, "NCCL world 1: {d:.1e}");
}

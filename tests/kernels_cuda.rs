//! The same checks as `kernels_cpu.rs`, on the GPU backend, plus GPU against CPU on the same
//! inputs. Ignored by default (they need an NVIDIA GPU); `scripts/gpu-bundle.sh` builds them
//! for a GPU machine, which runs them with `--include-ignored`.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use host::{Backend, BnMode, Cpu, Cuda, Error, Mlp};

fn gpu() -> Cuda {
    Cuda::new(0).unwrap_or_else(|e| panic!("these tests need a GPU: {e}"))
}

#[test]
fn opening_a_gpu_without_one_should_be_a_clear_error_not_a_panic() {
    // On a machine without the driver this is the error; with a GPU it opens.
    match Cuda::new(0) {
        Ok(gpu) => println!("GPU present: {}", gpu.device_name().unwrap()),
        Err(e) => {
            assert!(matches!(e, Error::GpuUnavailable(_)), "{e}");
            println!("{e}");
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_ema_should_match_formula_and_keep_or_copy_at_the_ends() {
    ema_matches_formula(&gpu());
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_nmse_loss_should_match_f64_reference() {
    nmse_matches_reference(&gpu());
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_mlp_train_forward_and_backward_should_match_f64_reference() {
    mlp_train_matches_reference(&gpu());
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_mlp_eval_mode_should_use_running_statistics() {
    mlp_eval_uses_running_statistics(&gpu());
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_mlp_running_statistics_should_follow_the_pytorch_recurrence() {
    mlp_running_statistics_follow_recurrence(&gpu());
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_bad_input_should_be_a_clear_error() {
    bad_input_is_an_error(&gpu());
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_mlp_step_should_match_cpu_at_the_byol_projector_shape() {
    let gpu = gpu();
    let (mlp, batch) = (Mlp::byol(512), 256);
    let case = MlpCase::new(mlp, 42);
    let mut r = rng(43);
    let x = uniform(&mut r, batch * mlp.input, 1.0);
    let dout = uniform(&mut r, batch * mlp.output, 1.0);
    let mut results = Vec::new();
    fn run<B: Backend>(
        be: &B,
        case: &MlpCase,
        x: &[f32],
        dout: &[f32],
        batch: usize,
    ) -> [Vec<f32>; 4] {
        let mlp = case.mlp;
        let mut st = case.state(be);
        let mut saved = be.mlp_saved(&mlp, batch).unwrap();
        let xb = be.upload(x).unwrap();
        let mut out = be.zeros(batch * mlp.output).unwrap();
        be.mlp_forward(&mut st, &xb, BnMode::Train, &mut saved, &mut out)
            .unwrap();
        let mut grads = be.zeros(mlp.num_params()).unwrap();
        let mut gx = be.zeros(batch * mlp.input).unwrap();
        be.mlp_backward(
            &st,
            &xb,
            &mut saved,
            &be.upload(dout).unwrap(),
            &mut grads,
            &mut gx,
        )
        .unwrap();
        [out, st.running, grads, gx].map(|b| be.download(&b).unwrap())
    }
    results.push(run(&Cpu, &case, &x, &dout, batch));
    results.push(run(&gpu, &case, &x, &dout, batch));
    for (k, name) in [
        "output",
        "running statistics",
        "parameter gradients",
        "input gradient",
    ]
    .iter()
    .enumerate()
    {
        assert_close(
            &format!("GPU vs CPU {name}"),
            &results[1][k],
            &to_f64(&results[0][k]),
            1e-3,
            1e-4,
        );
    }
}

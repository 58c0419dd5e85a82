//! The kernels through the backends: one body per check (`tests/common`), run on every backend
//! compiled in by [`test_device!`] (as candle's `test_device!`): against the independent f64
//! references, and on bad input (a NaN gradient behind a finite loss included). The GPU
//! versions are ignored by default (they need an NVIDIA GPU); `scripts/gpu-bundle.sh` builds
//! them for a GPU machine, which runs them with `--include-ignored`, together with the
//! GPU-against-CPU check at BYOL's projector shape.
//! Finite-difference checks run on the CPU; the GPU is then held to the CPU.

#[macro_use]
mod common;

use common::*;
use host::nn::mlp::SimplicialEmbedding;
use host::{Backend, BnMode, Cpu, Mlp, MlpState};
#[cfg(feature = "cuda")]
use host::{Cuda, Error};

test_device!(
    ema_should_match_formula_and_keep_or_copy_at_the_ends,
    ema_matches_formula
);
test_device!(nmse_loss_should_match_f64_reference, nmse_matches_reference);
test_device!(
    mlp_train_forward_and_backward_should_match_f64_reference,
    mlp_train_matches_reference
);
test_device!(
    mlp_eval_mode_should_use_running_statistics,
    mlp_eval_uses_running_statistics
);
test_device!(
    mlp_running_statistics_should_follow_the_pytorch_recurrence,
    mlp_running_statistics_follow_recurrence
);
test_device!(
    simplicial_embedding_should_match_f64_reference,
    simplicial_matches_reference
);
test_device!(
    byol_pytorch_projector_should_match_its_pytorch_values,
    byol_pytorch_projector_matches
);
test_device!(bad_input_should_be_a_clear_error, bad_input_is_an_error);

/// byol-pytorch's default projector, its simplicial embedding then its MLP, as byol-pytorch's
/// own `NetWrapper` builds it (`scripts/torch/make_fixtures.py`: 10 → 4 groups of 3 at
/// T 0.1 → 16 → 6, a bias on the last Linear, batch 9): the training forward, the running
/// statistics, every gradient of `Σ out ⊙ R`, and the evaluation forward that follows.
fn byol_pytorch_projector_matches<B: Backend>(be: &B) {
    let bytes = std::fs::read(fixtures().join("byol_pytorch_sem_projector.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let batch = 9;
    let mlp = Mlp {
        input: 10,
        hidden: 16,
        output: 6,
        last_bias: true,
        depth: 2,
        embedding: Some(SimplicialEmbedding {
            groups: 4,
            group: 3,
            temperature: 0.1,
        }),
    };
    // byol-pytorch's names: `0.0` the embedding's Linear, `0.1` its BatchNorm; `2.0`, `2.1`,
    // `2.3` the MLP's Linear, BatchNorm and last Linear.
    let (embed, hidden) = (mlp.block(0), mlp.block(1));
    let params = [
        ("0.0.weight", embed.weight),
        ("0.0.bias", embed.bias),
        ("0.1.weight", embed.gamma),
        ("0.1.bias", embed.beta),
        ("2.0.weight", hidden.weight),
        ("2.0.bias", hidden.bias),
        ("2.1.weight", hidden.gamma),
        ("2.1.bias", hidden.beta),
        ("2.3.weight", mlp.last_weight()),
        ("2.3.bias", mlp.last_bias_range()),
    ];
    let running = [
        ("0.1.running_mean", mlp.running_mean_of(0)),
        ("0.1.running_var", mlp.running_var_of(0)),
        ("2.1.running_mean", mlp.running_mean_of(1)),
        ("2.1.running_var", mlp.running_var_of(1)),
    ];
    let gather = |prefix: &str, table: &[(&str, std::ops::Range<usize>)], len: usize| {
        let mut flat = vec![0.0f32; len];
        for (name, range) in table {
            flat[range.clone()].copy_from_slice(&tensor(&st, &format!("{prefix}{name}")));
        }
        flat
    };
    let mut st_mlp = MlpState::upload(
        be,
        mlp,
        &gather("param.", &params, mlp.num_params()),
        &gather("initial.", &running, mlp.running_len()),
    )
    .unwrap();
    let x = be.upload(&tensor(&st, "input")).unwrap();
    let mut saved = mlp.saved(be, batch).unwrap();
    let mut out = be.zeros(batch * mlp.output).unwrap();
    st_mlp
        .forward(be, &x, BnMode::Train, &mut saved, &mut out)
        .unwrap();
    let expect = |name: &str| to_f64(&tensor(&st, name));
    let got = be.download(&out).unwrap();
    assert_close("training output", &got, &expect("output"), 1e-4, 1e-5);
    let running_got = be.download(&st_mlp.running).unwrap();
    for (name, range) in &running {
        let want = expect(&format!("running.{name}"));
        assert_close(name, &running_got[range.clone()], &want, 1e-5, 1e-6);
    }
    let weights = be.upload(&tensor(&st, "output_weights")).unwrap();
    let mut grads = be.zeros(mlp.num_params()).unwrap();
    let mut grad_x = be.zeros(batch * mlp.input).unwrap();
    st_mlp
        .backward(be, &x, &mut saved, &weights, &mut grads, &mut grad_x)
        .unwrap();
    let grads = be.download(&grads).unwrap();
    for (name, range) in &params {
        let want = expect(&format!("grad.{name}"));
        // The Linear biases that feed a BatchNorm have gradient 0 up to rounding.
        if *name == "0.0.bias" || *name == "2.0.bias" {
            assert!(
                grads[range.clone()].iter().all(|g| g.abs() < 1e-5),
                "{name}"
            );
            continue;
        }
        assert_norm_close(&format!("grad {name}"), &grads[range.clone()], &want, 1e-4);
    }
    let gx = be.download(&grad_x).unwrap();
    assert_norm_close("grad input", &gx, &expect("grad_input"), 1e-4);
    st_mlp
        .forward(be, &x, BnMode::Eval, &mut saved, &mut out)
        .unwrap();
    let got = be.download(&out).unwrap();
    assert_close(
        "evaluation output",
        &got,
        &expect("output_eval"),
        1e-4,
        1e-5,
    );
}

#[test]
fn a_non_finite_gradient_should_stop_the_step_before_any_parameter() {
    non_finite_gradient_stops_the_step(Cpu);
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_non_finite_gradient_should_stop_the_gpu_step_before_any_parameter() {
    non_finite_gradient_stops_the_step(gpu());
}

#[cfg(feature = "cuda")]
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
fn nmse_gradient_should_match_finite_differences() {
    let (rows, dim) = (3, 6);
    let mut r = rng(5);
    let mut p = uniform(&mut r, rows * dim, 1.0);
    let z = uniform(&mut r, rows * dim, 1.0);
    let mut g = vec![0.0; rows * dim];
    Cpu.nmse_loss(&p, &z, rows, dim, Some(&mut g)).unwrap();
    let eps = 1e-3;
    for (k, &analytic) in g.iter().enumerate() {
        let (plus, minus) = perturbed(&mut p, k, eps, |p| {
            Cpu.nmse_loss(&p.to_vec(), &z, rows, dim, None).unwrap()
        });
        let fd = (plus as f64 - minus as f64) / (2.0 * eps as f64);
        assert!(
            (fd - analytic as f64).abs() <= 2e-3 + 1e-2 * fd.abs(),
            "∂L/∂p[{k}]: analytic {analytic} vs numeric {fd}"
        );
    }
}

/// `J = Σ out ⊙ R` after a training-mode forward, and the ReLU pattern it went through.
fn mlp_objective(
    mlp: Mlp,
    params: &[f32],
    x: &[f32],
    batch: usize,
    weights: &[f32],
) -> (f64, Vec<bool>) {
    let mut st = host::MlpState {
        mlp,
        params: params.to_vec(),
        running: mlp.init_running(),
    };
    let mut saved = mlp.saved(&Cpu, batch).unwrap();
    let mut out = vec![0.0; batch * mlp.output];
    st.forward(&Cpu, &x.to_vec(), BnMode::Train, &mut saved, &mut out)
        .unwrap();
    let j = out
        .iter()
        .zip(weights)
        .map(|(&o, &w)| o as f64 * w as f64)
        .sum();
    let hidden = (0..mlp.hidden_layers()).flat_map(|k| saved.activation(k).iter());
    (j, hidden.map(|&a| a > 0.0).collect())
}

#[test]
fn mlp_gradients_should_match_finite_differences() {
    // Depth 2 is BYOL's MLP; 1 and 3 are the depth ablation's; then byol-pytorch's projector,
    // a simplicial embedding first (2 groups of 3 at T 0.5, where the softmax is far from
    // saturated, so the difference quotients see its curvature).
    let embedding = SimplicialEmbedding {
        groups: 2,
        group: 3,
        temperature: 0.5,
    };
    for (depth, embedding) in [
        (1, None),
        (2, None),
        (3, None),
        (2, Some(embedding)),
        (1, Some(embedding)),
    ] {
        mlp_gradients_match_finite_differences(Mlp {
            input: 5,
            hidden: 6,
            output: 4,
            last_bias: true,
            depth,
            embedding,
        });
    }
}

/// Which tensor of `mlp`'s layout holds parameter `k`.
fn param_name(mlp: &Mlp, k: usize) -> String {
    for b in 0..mlp.hidden_layers() {
        let block = mlp.block(b);
        for (name, r) in [
            ("weight", block.weight),
            ("bias", block.bias),
            ("gamma", block.gamma),
            ("beta", block.beta),
        ] {
            if r.contains(&k) {
                return format!("block{b}.{name}");
            }
        }
    }
    if mlp.last_weight().contains(&k) {
        "last.weight".into()
    } else {
        "last.bias".into()
    }
}

fn mlp_gradients_match_finite_differences(mlp: Mlp) {
    let batch = 5;
    let case = MlpCase::new(mlp, 3);
    let mut r = rng(4);
    let mut x = uniform(&mut r, batch * mlp.input, 1.0);
    let weights = uniform(&mut r, batch * mlp.output, 1.0);

    let mut st = case.state(&Cpu);
    let mut saved = mlp.saved(&Cpu, batch).unwrap();
    let mut out = vec![0.0; batch * mlp.output];
    st.forward(&Cpu, &x, BnMode::Train, &mut saved, &mut out)
        .unwrap();
    let mut grads = vec![0.0; mlp.num_params()];
    let mut gx = vec![0.0; batch * mlp.input];
    st.backward(&Cpu, &x, &mut saved, &weights, &mut grads, &mut gx)
        .unwrap();

    let eps = 1e-3;
    let (mut checked, mut skipped) = (0, 0);
    let mut check = |name: &str,
                     k: usize,
                     analytic: f32,
                     (plus, minus): ((f64, Vec<bool>), (f64, Vec<bool>))| {
        if plus.1 != minus.1 {
            skipped += 1; // the step crossed a ReLU kink: a difference quotient means nothing there
            return;
        }
        checked += 1;
        let fd = (plus.0 - minus.0) / (2.0 * eps as f64);
        assert!(
            (fd - analytic as f64).abs() <= 3e-3 + 2e-2 * fd.abs(),
            "depth {}, embedding {:?}: {name}[{k}]: analytic {analytic} vs numeric {fd}",
            mlp.depth,
            mlp.embedding
        );
    };
    let mut params = case.params.clone();
    for (k, &analytic) in grads.iter().enumerate() {
        let pm = perturbed(&mut params, k, eps, |p| {
            mlp_objective(mlp, p, &x, batch, &weights)
        });
        check(&param_name(&mlp, k), k, analytic, pm);
    }
    for (k, &analytic) in gx.iter().enumerate() {
        let pm = perturbed(&mut x, k, eps, |x| {
            mlp_objective(mlp, &params, x, batch, &weights)
        });
        check("x", k, analytic, pm);
    }
    assert!(
        checked >= mlp.num_params(),
        "depth {}: only {checked} coordinates checked",
        mlp.depth
    );
    assert!(
        skipped * 10 <= checked,
        "too many ReLU kinks crossed: {skipped} skipped, {checked} checked"
    );
}

#[cfg(feature = "cuda")]
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
        let mut saved = mlp.saved(be, batch).unwrap();
        let xb = be.upload(x).unwrap();
        let mut out = be.zeros(batch * mlp.output).unwrap();
        st.forward(be, &xb, BnMode::Train, &mut saved, &mut out)
            .unwrap();
        let mut grads = be.zeros(mlp.num_params()).unwrap();
        let mut gx = be.zeros(batch * mlp.input).unwrap();
        st.backward(
            be,
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

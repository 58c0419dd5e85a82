//! Test helpers shared by the CPU and GPU test files: random data, the tolerance check, and
//! the check bodies, each generic over [`Backend`] so one body runs on every device.
#![allow(dead_code)]

pub mod reference;

use host::backend::Simplicial;
use host::nn::WeightInit;
use host::{Backend, BnMode, Error, Mlp, MlpState};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reference::RefMlp;

/// The GPU the `cuda` variants of [`test_device!`] run on.
#[cfg(feature = "cuda")]
pub fn gpu() -> host::Cuda {
    host::Cuda::new(0).unwrap_or_else(|e| panic!("these tests need a GPU: {e}"))
}

/// `test_device!(name, body)`: the tests `name::cpu` and, with the `cuda` feature, `name::cuda`,
/// each calling `body(&backend)` (as candle's `test_device!`). The GPU variants are ignored
/// by default: `scripts/gpu-bundle.sh` runs them with `--ignored` on a GPU machine.
#[macro_export]
macro_rules! test_device {
    ($name:ident, $body:ident) => {
        mod $name {
            #[test]
            fn cpu() {
                super::$body(&host::Cpu);
            }
            #[cfg(feature = "cuda")]
            #[test]
            #[ignore = "needs an NVIDIA GPU"]
            fn cuda() {
                super::$body(&$crate::common::gpu());
            }
        }
    };
}

/// `Some(value)`, or `None` where the backend answers that it has no kernel for the op yet
/// (said on stderr): the check stops there on that backend, and runs in full the day the
/// backend has the op. Any other error fails the test.
pub fn supported<T>(op: &str, result: Result<T, Error>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(Error::Unsupported(why)) => {
            eprintln!("{op}: skipped on this backend: {why}");
            None
        }
        Err(e) => panic!("{op}: {e}"),
    }
}

/// The fixtures folder: `BYOL_FIXTURES` when set (a test binary run away from its source
/// tree, as `scripts/gpu-bundle.sh` ships them), else the source tree's.
pub fn fixtures() -> std::path::PathBuf {
    std::env::var_os("BYOL_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
}

/// Tensor `name` of a safetensors fixture (f32, little-endian), flat.
pub fn tensor(st: &safetensors::SafeTensors, name: &str) -> Vec<f32> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("fixture lacks {name}: {e}"));
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn uniform(rng: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// `n` random RGB images of `h × w` (one class), a data set for the augmentation tests.
pub fn random_images(n: usize, h: usize, w: usize, seed: u64) -> host::data::Dataset {
    let mut r = rng(seed);
    host::data::Dataset {
        name: "random".into(),
        images: (0..n * h * w * 3).map(|_| r.random::<u8>()).collect(),
        labels: vec![0; n],
        h,
        w,
        classes: 1,
    }
}

/// A BYOL of a width-4 ResNet-18 with the given stem, 32-16-32 MLPs: small enough for whole
/// steps in tests, every kind of layer of the real one.
pub fn tiny_byol(stem: host::nn::Stem) -> host::byol::ByolConfig {
    let encoder = host::nn::ResNetConfig {
        arch: host::nn::Arch::ResNet18,
        stem,
        width: 4,
        in_channels: 3,
    };
    host::byol::ByolConfig::byol(encoder, 32, 16, 32)
}

/// `steps` BYOL steps of `byol` (official LARS, lr 0.2, τ 0.99) from `state` on the views
/// `[batch, size, size, 3]`: the losses, the state after them and the last step's gradient
/// (of the online network, laid out as `byol.registry`), on the host.
pub fn byol_steps<B: Backend>(
    byol: &host::byol::Byol<B>,
    state: &host::byol::ByolState<host::Cpu>,
    views: [&[f32]; 2],
    size: usize,
    steps: usize,
) -> (Vec<f32>, host::byol::ByolState<host::Cpu>, Vec<f32>) {
    let batch = views[0].len() / (size * size * 3);
    let be = &byol.backend;
    let mut s = state.to_backend(be).unwrap();
    let mut work = byol.work(batch, size, size).unwrap();
    let (v1, v2) = (be.upload(views[0]).unwrap(), be.upload(views[1]).unwrap());
    let lars = host::byol::Optimizer::official_lars(1.5e-6);
    let losses = (0..steps)
        .map(|_| {
            let m = host::byol::LrMultipliers::default();
            let out = byol.step(&mut s, &mut work, [&v1, &v2], 0.2, 0.99, &lars, m);
            out.unwrap().loss
        })
        .collect();
    let grads = be.download(&work.grads).unwrap();
    (losses, s.to_host(be).unwrap(), grads)
}

/// A NaN in one weight of the first convolution: its BatchNorm makes the channel NaN and the
/// ReLU after it 0, so the loss stays finite while the gradient of that convolution is NaN.
/// The step must stop with [`Error::Diverged`] at step 0 and leave the parameters, the
/// target and the optimiser's state as they were, bit for bit.
pub fn non_finite_gradient_stops_the_step<B: Backend>(backend: B) {
    let byol = host::byol::Byol::on(backend, tiny_byol(host::nn::Stem::Cifar)).unwrap();
    let mut start = byol.init(7);
    let conv1 = byol.registry.param("encoder.conv1.weight").unwrap();
    start.online[conv1.range.start + 5] = f32::NAN;
    let be = &byol.backend;
    let (batch, size) = (6, 8);
    let mut r = rng(5);
    let v1 = be
        .upload(&uniform(&mut r, batch * size * size * 3, 1.0))
        .unwrap();
    let v2 = be
        .upload(&uniform(&mut r, batch * size * size * 3, 1.0))
        .unwrap();
    let mut state = start.to_backend(be).unwrap();
    let mut work = byol.work(batch, size, size).unwrap();
    let lars = host::byol::Optimizer::official_lars(1.5e-6);
    let m = host::byol::LrMultipliers::default();
    match byol.step(&mut state, &mut work, [&v1, &v2], 0.2, 0.99, &lars, m) {
        Err(Error::Diverged { step: 0, cause }) => {
            let loss = cause
                .strip_prefix("the gradient is not finite (the loss is ")
                .and_then(|rest| rest.strip_suffix(')'))
                .and_then(|l| l.parse::<f32>().ok());
            assert!(loss.is_some_and(f32::is_finite), "{cause}");
        }
        Err(e) => panic!("expected a divergence at step 0, got {e}"),
        Ok(out) => panic!("the step went on with a NaN gradient (loss {})", out.loss),
    }
    let after = state.to_host(be).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (what, a, b) in [
        ("online", &after.online, &start.online),
        ("target", &after.target, &start.target),
        ("momentum", &after.momentum, &start.momentum),
    ] {
        assert!(bits(a) == bits(b), "the {what} parameters changed");
    }
    assert_eq!(after.step, 0);
}

/// `‖a − b‖ / ‖b‖`.
pub fn relative(a: &[f32], b: &[f32]) -> f64 {
    let (err, norm) = norm_error(a, &to_f64(b));
    err / norm.max(1e-30)
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// llm.c's `validate_result`: every element within `atol + rtol·|expected|`, where `atol`
/// is `atol_frac` of the largest |expected| (so it scales with the tensor's magnitude).
pub fn assert_close(what: &str, actual: &[f32], expected: &[f64], rtol: f64, atol_frac: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let scale = expected.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let atol = atol_frac * scale.max(1e-30);
    let mut worst = (0usize, 0.0f64);
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        assert!(a.is_finite(), "{what}[{i}] is {a}");
        let excess = (a as f64 - e).abs() - (atol + rtol * e.abs());
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    let i = worst.0;
    assert!(
        worst.1 <= 0.0,
        "{what}[{i}]: got {}, expected {} (atol {atol:e}, rtol {rtol:e}; {} values, largest |expected| {scale:e})",
        actual[i],
        expected[i],
        actual.len()
    );
}

/// Norm-wise relative error `‖actual − expected‖ / ‖expected‖ ≤ tol`: the measure for
/// gradients of deep networks, whose individual small entries carry the rounding of every
/// layer the gradient went through.
pub fn assert_norm_close(what: &str, actual: &[f32], expected: &[f64], tol: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let (err, norm) = norm_error(actual, expected);
    assert!(
        err <= tol * norm,
        "{what}: relative error {:.2e} > {tol:e} (norm {norm:.3e})",
        err / norm
    );
}

/// The `k` tensors of `registry` whose values in `actual` are furthest, norm-wise relative,
/// from `expected` (both flat buffers laid out by the registry), as `name 1.2e-3, …`: what a
/// whole network's comparison names when it fails, so the failing layer shows in one run.
pub fn worst_params(
    registry: &host::nn::Registry,
    actual: &[f32],
    expected: &[f32],
    k: usize,
) -> String {
    let mut errs: Vec<(f64, &str)> = registry
        .params
        .iter()
        .map(|p| {
            let r = p.range.clone();
            (relative(&actual[r.clone()], &expected[r]), p.name.as_str())
        })
        .collect();
    errs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let worst: Vec<String> = errs
        .iter()
        .take(k)
        .map(|(e, name)| format!("{name} {e:.1e}"))
        .collect();
    worst.join(", ")
}

/// `(‖actual − expected‖, ‖expected‖)`, in f64.
pub fn norm_error(actual: &[f32], expected: &[f64]) -> (f64, f64) {
    let err: f64 = actual
        .iter()
        .zip(expected)
        .map(|(&a, &e)| (a as f64 - e).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = expected.iter().map(|e| e * e).sum::<f64>().sqrt();
    (err, norm)
}

/// An MLP with random parameters and running statistics, on the host and as a reference.
pub struct MlpCase {
    pub mlp: Mlp,
    pub params: Vec<f32>,
    pub running: Vec<f32>,
}

impl MlpCase {
    pub fn new(mlp: Mlp, seed: u64) -> Self {
        let mut r = rng(seed);
        let mut params = mlp.init_params(WeightInit::Torchvision, &mut r);
        // Random γ and β (not 1 and 0) so the affine's gradients are exercised.
        let mut running = mlp.init_running();
        for k in 0..mlp.hidden_layers() {
            let block = mlp.block(k);
            for v in &mut params[block.gamma] {
                *v = r.random_range(0.5..1.5);
            }
            for v in &mut params[block.beta] {
                *v = r.random_range(-0.3..0.3);
            }
            for v in &mut running[mlp.running_mean_of(k)] {
                *v = r.random_range(-0.2..0.2);
            }
            for v in &mut running[mlp.running_var_of(k)] {
                *v = r.random_range(0.5..2.0);
            }
        }
        MlpCase {
            mlp,
            params,
            running,
        }
    }

    pub fn reference(&self) -> RefMlp {
        let (m, p) = (&self.mlp, &self.params);
        RefMlp {
            input: m.input,
            hidden: m.hidden,
            output: m.output,
            w1: to_f64(&p[m.w1()]),
            b1: to_f64(&p[m.b1()]),
            gamma: to_f64(&p[m.gamma()]),
            beta: to_f64(&p[m.beta()]),
            w2: to_f64(&p[m.w2()]),
            b2: m.last_bias.then(|| to_f64(&p[m.b2()])),
        }
    }

    pub fn state<B: Backend>(&self, be: &B) -> MlpState<B> {
        MlpState {
            mlp: self.mlp,
            params: be.upload(&self.params).unwrap(),
            running: be.upload(&self.running).unwrap(),
        }
    }
}

/// The MLP shapes every backend is checked on: odd sizes, batch 2, and the BYOL projector.
pub fn mlp_shapes() -> Vec<(Mlp, usize)> {
    vec![
        (
            Mlp {
                input: 3,
                hidden: 5,
                output: 7,
                last_bias: false,
                depth: 2,
                embedding: None,
            },
            2,
        ),
        (
            Mlp {
                input: 13,
                hidden: 33,
                output: 9,
                last_bias: true,
                depth: 2,
                embedding: None,
            },
            7,
        ),
        (
            Mlp {
                input: 40,
                hidden: 17,
                output: 31,
                last_bias: false,
                depth: 2,
                embedding: None,
            },
            65,
        ),
        (
            Mlp {
                input: 64,
                hidden: 4096,
                output: 256,
                last_bias: false,
                depth: 2,
                embedding: None,
            },
            12,
        ),
    ]
}

/// `f` evaluated with `v[k]` moved by `+eps` and by `−eps` (then restored).
pub fn perturbed<T>(v: &mut [f32], k: usize, eps: f32, mut f: impl FnMut(&[f32]) -> T) -> (T, T) {
    let orig = v[k];
    v[k] = orig + eps;
    let plus = f(v);
    v[k] = orig - eps;
    let minus = f(v);
    v[k] = orig;
    (plus, minus)
}

// ---------------------------------------------------------------- check bodies

pub fn ema_matches_formula<B: Backend>(be: &B) {
    for n in [1usize, 7, 1000, 70_001] {
        let mut r = rng(n as u64);
        let (t0, o) = (uniform(&mut r, n, 1.0), uniform(&mut r, n, 1.0));
        let (mut t, ob) = (be.upload(&t0).unwrap(), be.upload(&o).unwrap());
        be.ema_update(&mut t, &ob, 0.996).unwrap();
        let expected: Vec<f64> = t0
            .iter()
            .zip(&o)
            .map(|(&t, &o)| 0.996 * t as f64 + (1.0 - 0.996f32) as f64 * o as f64)
            .collect();
        assert_close(
            &format!("EMA n={n}"),
            &be.download(&t).unwrap(),
            &expected,
            1e-6,
            1e-7,
        );

        let mut t = be.upload(&t0).unwrap();
        be.ema_update(&mut t, &ob, 1.0).unwrap();
        assert_eq!(
            be.download(&t).unwrap(),
            t0,
            "τ = 1 must leave the target unchanged"
        );
        be.ema_update(&mut t, &ob, 0.0).unwrap();
        assert_eq!(
            be.download(&t).unwrap(),
            o,
            "τ = 0 must copy the online parameters"
        );
    }
}

pub fn nmse_matches_reference<B: Backend>(be: &B) {
    for (rows, dim) in [(2usize, 1usize), (3, 7), (17, 256), (5, 33)] {
        let mut r = rng((rows * 1000 + dim) as u64);
        let mut p = uniform(&mut r, rows * dim, 2.0);
        let z = uniform(&mut r, rows * dim, 2.0);
        p[..dim].fill(0.0); // a zero prediction row: loss 2, finite gradient
        let (pb, zb) = (be.upload(&p).unwrap(), be.upload(&z).unwrap());
        let mut gb = be.zeros(rows * dim).unwrap();
        let loss = be.nmse_loss(&pb, &zb, rows, dim, Some(&mut gb)).unwrap();
        let (p64, z64) = (to_f64(&p), to_f64(&z));
        let expected: f64 = (0..rows)
            .map(|i| reference::nmse_row(&p64[i * dim..][..dim], &z64[i * dim..][..dim]))
            .sum::<f64>()
            / rows as f64;
        assert!(
            (loss as f64 - expected).abs() < 1e-5,
            "loss {rows}x{dim}: {loss} vs {expected}"
        );
        let grad = be.download(&gb).unwrap();
        // The zero row's gradient is −2ẑ/ε/rows (≈1e11): check the other rows at tight tolerance.
        let g_ref = reference::nmse_grad(&p64, &z64, rows, dim);
        assert_close(
            &format!("loss gradient {rows}x{dim}"),
            &grad[dim..],
            &g_ref[dim..],
            1e-4,
            1e-5,
        );
        assert_close(
            &format!("zero-row gradient {rows}x{dim}"),
            &grad[..dim],
            &g_ref[..dim],
            1e-4,
            1e-6,
        );
    }
}

/// The simplicial embedding's softmax and its backward against the f64 definition, at
/// byol-pytorch's shape and temperature and at odd ones (a group of 1 has gradient 0).
pub fn simplicial_matches_reference<B: Backend>(be: &B) {
    for (rows, cols, group, t) in [
        (7, 256, 8, 0.1),
        (5, 12, 3, 0.1),
        (4, 10, 5, 2.0),
        (2, 3, 1, 1.0),
    ] {
        let what = format!("{rows}×{cols} in groups of {group} at T {t}");
        let op = Simplicial {
            rows,
            cols,
            group,
            temperature: t as f32,
        };
        let mut r = rng((rows * cols + group) as u64);
        let z = uniform(&mut r, rows * cols, 3.0);
        let ds = uniform(&mut r, rows * cols, 1.0);
        let mut s = be.zeros(rows * cols).unwrap();
        be.simplicial_forward(&op, &be.upload(&z).unwrap(), &mut s)
            .unwrap();
        let s_ref = reference::grouped_softmax(&to_f64(&z), group, t);
        assert_close(
            &format!("softmax {what}"),
            &be.download(&s).unwrap(),
            &s_ref,
            1e-5,
            1e-6,
        );
        let mut grad = be.upload(&ds).unwrap();
        be.simplicial_backward(&op, &s, &mut grad).unwrap();
        let dz_ref = reference::grouped_softmax_backward(&s_ref, &to_f64(&ds), group, t);
        assert_close(
            &format!("softmax backward {what}"),
            &be.download(&grad).unwrap(),
            &dz_ref,
            1e-4,
            1e-5,
        );
    }
    // Bad shapes and temperatures are errors, not NaNs or overruns.
    let op = Simplicial {
        rows: 2,
        cols: 12,
        group: 5,
        temperature: 0.1,
    };
    let (a, mut b) = (be.zeros(24).unwrap(), be.zeros(24).unwrap());
    let e = be.simplicial_forward(&op, &a, &mut b).unwrap_err();
    assert!(
        e.to_string()
            .contains("12 features do not split into groups of 5"),
        "{e}"
    );
    for t in [0.0, -1.0, f32::NAN] {
        let op = Simplicial {
            group: 4,
            temperature: t,
            ..op
        };
        let e = be.simplicial_backward(&op, &a, &mut b).unwrap_err();
        assert!(
            e.to_string().contains("temperature must be positive"),
            "{e}"
        );
    }
    let op = Simplicial { group: 4, ..op };
    let short = be.zeros(23).unwrap();
    assert!(matches!(
        be.simplicial_forward(&op, &short, &mut b),
        Err(Error::Length {
            expected: 24,
            got: 23,
            ..
        })
    ));
}

/// Training forward: output, running statistics; then backward: every gradient.
pub fn mlp_train_matches_reference<B: Backend>(be: &B) {
    for (i, (mlp, batch)) in mlp_shapes().into_iter().enumerate() {
        let case = MlpCase::new(mlp, 10 + i as u64);
        let mut r = rng(100 + i as u64);
        let x = uniform(&mut r, batch * mlp.input, 1.0);
        let dout = uniform(&mut r, batch * mlp.output, 1.0);
        let mut st = case.state(be);
        let mut saved = mlp.saved(be, batch).unwrap();
        let xb = be.upload(&x).unwrap();
        let mut out = be.zeros(batch * mlp.output).unwrap();
        st.forward(be, &xb, BnMode::Train, &mut saved, &mut out)
            .unwrap();

        let rf = case.reference();
        let x64 = to_f64(&x);
        let f = rf.forward(&x64, batch, None);
        let tag = format!("{mlp:?} batch {batch}");
        assert_close(
            &format!("out {tag}"),
            &be.download(&out).unwrap(),
            &f.out,
            1e-4,
            1e-5,
        );
        let running = be.download(&st.running).unwrap();
        let n = batch as f64;
        let rm: Vec<f64> = (0..mlp.hidden)
            .map(|j| 0.9 * case.running[j] as f64 + 0.1 * f.mean[j])
            .collect();
        let rv: Vec<f64> = (0..mlp.hidden)
            .map(|j| 0.9 * case.running[mlp.hidden + j] as f64 + 0.1 * f.var[j] * n / (n - 1.0))
            .collect();
        assert_close(
            &format!("running mean {tag}"),
            &running[mlp.running_mean()],
            &rm,
            1e-4,
            1e-5,
        );
        assert_close(
            &format!("running var {tag}"),
            &running[mlp.running_var()],
            &rv,
            1e-4,
            1e-5,
        );

        // Gradients accumulate into a non-zero buffer: start from a known offset.
        let offset = 0.25f32;
        let mut grads = be.upload(&vec![offset; mlp.num_params()]).unwrap();
        let mut gx = be.zeros(batch * mlp.input).unwrap();
        let db = be.upload(&dout).unwrap();
        st.backward(be, &xb, &mut saved, &db, &mut grads, &mut gx)
            .unwrap();
        let g = be.download(&grads).unwrap();
        let rg = rf.backward(&x64, batch, &f, &to_f64(&dout));
        let plus = |v: &[f64]| v.iter().map(|x| x + offset as f64).collect::<Vec<_>>();
        assert_close(
            &format!("dW1 {tag}"),
            &g[mlp.w1()],
            &plus(&rg.w1),
            1e-3,
            1e-4,
        );
        // ∂L/∂b1 is zero up to rounding (BN removes shifts): compare at the scale of ∂L/∂β.
        let db1: Vec<f32> = g[mlp.b1()].iter().map(|v| v - offset).collect();
        let beta_scale = rg.beta.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        assert!(
            db1.iter()
                .all(|v| (*v as f64).abs() <= 1e-4 * beta_scale.max(1e-3)),
            "db1 {tag}"
        );
        assert_close(
            &format!("dgamma {tag}"),
            &g[mlp.gamma()],
            &plus(&rg.gamma),
            1e-3,
            1e-4,
        );
        assert_close(
            &format!("dbeta {tag}"),
            &g[mlp.beta()],
            &plus(&rg.beta),
            1e-3,
            1e-4,
        );
        assert_close(
            &format!("dW2 {tag}"),
            &g[mlp.w2()],
            &plus(&rg.w2),
            1e-3,
            1e-4,
        );
        if mlp.last_bias {
            assert_close(
                &format!("db2 {tag}"),
                &g[mlp.b2()],
                &plus(&rg.b2),
                1e-3,
                1e-4,
            );
        }
        assert_close(
            &format!("dx {tag}"),
            &be.download(&gx).unwrap(),
            &rg.x,
            1e-3,
            1e-4,
        );
    }
}

/// Evaluation mode normalises with the running statistics and leaves them unchanged;
/// training mode ignores them for the output.
pub fn mlp_eval_uses_running_statistics<B: Backend>(be: &B) {
    let mlp = Mlp {
        input: 6,
        hidden: 19,
        output: 5,
        last_bias: true,
        depth: 2,
        embedding: None,
    };
    let case = MlpCase::new(mlp, 7);
    let rf = case.reference();
    for batch in [1usize, 3] {
        let x = uniform(&mut rng(batch as u64), batch * mlp.input, 1.0);
        let mut st = case.state(be);
        let mut saved = mlp.saved(be, batch).unwrap();
        let mut out = be.zeros(batch * mlp.output).unwrap();
        st.forward(
            be,
            &be.upload(&x).unwrap(),
            BnMode::Eval,
            &mut saved,
            &mut out,
        )
        .unwrap();
        let r64 = to_f64(&case.running);
        let f = rf.forward(
            &to_f64(&x),
            batch,
            Some((&r64[mlp.running_mean()], &r64[mlp.running_var()])),
        );
        assert_close("eval out", &be.download(&out).unwrap(), &f.out, 1e-4, 1e-5);
        assert_eq!(
            be.download(&st.running).unwrap(),
            case.running,
            "eval must not touch running stats"
        );
    }
    // Training output is the same whatever the running statistics hold.
    let batch = 4;
    let x = be
        .upload(&uniform(&mut rng(3), batch * mlp.input, 1.0))
        .unwrap();
    let mut outs = Vec::new();
    for running in [case.running.clone(), mlp.init_running()] {
        let mut st = MlpState {
            mlp,
            params: be.upload(&case.params).unwrap(),
            running: be.upload(&running).unwrap(),
        };
        let mut saved = mlp.saved(be, batch).unwrap();
        let mut out = be.zeros(batch * mlp.output).unwrap();
        st.forward(be, &x, BnMode::Train, &mut saved, &mut out)
            .unwrap();
        outs.push(be.download(&out).unwrap());
    }
    assert_eq!(outs[0], outs[1]);
}

/// Running statistics after several training steps equal the recurrence computed in f64.
pub fn mlp_running_statistics_follow_recurrence<B: Backend>(be: &B) {
    let mlp = Mlp {
        input: 5,
        hidden: 21,
        output: 3,
        last_bias: false,
        depth: 2,
        embedding: None,
    };
    let case = MlpCase::new(mlp, 11);
    let rf = case.reference();
    let batch = 6;
    let mut st = case.state(be);
    let mut saved = mlp.saved(be, batch).unwrap();
    let mut out = be.zeros(batch * mlp.output).unwrap();
    let mut rm = to_f64(&case.running[mlp.running_mean()]);
    let mut rv = to_f64(&case.running[mlp.running_var()]);
    for step in 0..5 {
        let x = uniform(&mut rng(50 + step), batch * mlp.input, 1.0 + step as f32);
        st.forward(
            be,
            &be.upload(&x).unwrap(),
            BnMode::Train,
            &mut saved,
            &mut out,
        )
        .unwrap();
        let f = rf.forward(&to_f64(&x), batch, None);
        for j in 0..mlp.hidden {
            rm[j] = 0.9 * rm[j] + 0.1 * f.mean[j];
            rv[j] = 0.9 * rv[j] + 0.1 * f.var[j] * batch as f64 / (batch as f64 - 1.0);
        }
    }
    let running = be.download(&st.running).unwrap();
    assert_close(
        "running mean after 5 steps",
        &running[mlp.running_mean()],
        &rm,
        1e-4,
        1e-5,
    );
    assert_close(
        "running var after 5 steps",
        &running[mlp.running_var()],
        &rv,
        1e-4,
        1e-5,
    );
}

/// Bad input is a clear error from the host API, never a panic or NaN.
pub fn bad_input_is_an_error<B: Backend>(be: &B) {
    let z = |n| be.zeros(n).unwrap();
    let mut t = z(10);
    assert!(matches!(
        be.ema_update(&mut t, &z(9), 0.5),
        Err(Error::Length {
            expected: 10,
            got: 9,
            ..
        })
    ));
    assert!(matches!(
        be.ema_update(&mut t, &z(10), 1.5),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        be.ema_update(&mut t, &z(10), f32::NAN),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        be.nmse_loss(&z(12), &z(10), 3, 4, None),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        be.nmse_loss(&z(12), &z(12), 3, 4, Some(&mut z(11))),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        be.nmse_loss(&z(0), &z(0), 0, 4, None),
        Err(Error::InvalidArgument(_))
    ));

    let mlp = Mlp {
        input: 4,
        hidden: 8,
        output: 3,
        last_bias: false,
        depth: 2,
        embedding: None,
    };
    let case = MlpCase::new(mlp, 1);
    let mut st = case.state(be);
    let mut saved1 = mlp.saved(be, 1).unwrap();
    let e = st
        .forward(be, &z(4), BnMode::Train, &mut saved1, &mut z(3))
        .unwrap_err();
    assert!(matches!(e, Error::BatchTooSmall(1)), "{e}");
    assert!(e.to_string().contains("at least 2"), "{e}");
    let mut saved = mlp.saved(be, 4).unwrap();
    let e = st
        .forward(be, &z(15), BnMode::Train, &mut saved, &mut z(12))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("MLP input x [batch, input]: expected 16 f32 values, got 15"),
        "{e}"
    );
    assert!(st
        .forward(be, &z(16), BnMode::Train, &mut saved, &mut z(13))
        .is_err());
    let mut wrong = MlpState {
        mlp,
        params: z(mlp.num_params() - 1),
        running: z(mlp.running_len()),
    };
    assert!(wrong
        .forward(be, &z(16), BnMode::Train, &mut saved, &mut z(12))
        .is_err());
    // Backward before any training forward, or after an evaluation forward, is refused.
    let mut fresh = mlp.saved(be, 4).unwrap();
    let mut grads = z(mlp.num_params());
    assert!(st
        .backward(be, &z(16), &mut fresh, &z(12), &mut grads, &mut z(16))
        .is_err());
    st.forward(be, &z(16), BnMode::Eval, &mut fresh, &mut z(12))
        .unwrap();
    assert!(st
        .backward(be, &z(16), &mut fresh, &z(12), &mut grads, &mut z(16))
        .is_err());
    st.forward(be, &z(16), BnMode::Train, &mut fresh, &mut z(12))
        .unwrap();
    assert!(st
        .backward(be, &z(16), &mut fresh, &z(12), &mut z(5), &mut z(16))
        .is_err());
    // A constant batch (variance 0) stays finite thanks to ε.
    let mut out = z(12);
    st.forward(
        be,
        &be.upload(&[0.5; 16]).unwrap(),
        BnMode::Train,
        &mut saved,
        &mut out,
    )
    .unwrap();
    assert!(be.download(&out).unwrap().iter().all(|v| v.is_finite()));
}

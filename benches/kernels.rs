//! Kernel throughput, each beside its baseline in the same run:
//! - EMA over a ResNet-18-sized parameter buffer, in GB/s, beside a plain copy of the same bytes;
//! - the normalised-MSE loss, forward + backward;
//! - the fused projector MLP forward + backward at BYOL's shape (batch 256, 512 → 4096 → 256)
//!   beside the same computation unfused (every BN/ReLU step its own pass over memory);
//! - the CPU's direct convolution (16 or 32 output channels, stride 1) beside im2col + GEMM
//!   on the width-16 ResNet's layers it runs, at batch 64, forward and backward.
//!
//! With `--features cuda` and a GPU: EMA beside a device-to-device copy, loss and MLP on the GPU.
//!
//! Run: `cargo bench --bench kernels` (add `--features cuda` on a GPU machine).

use host::cpu::gemm::matmul;
use host::nn::WeightInit;
use host::{Backend, BnMode, Cpu, Mlp, MlpState};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::hint::black_box;

mod common;
use common::median_secs;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-1.0..1.0)).collect()
}

/// ResNet-18 (CIFAR stem) + projector + predictor: the buffer one BYOL EMA call updates.
const EMA_PARAMS: usize = 11_168_832 + 4_198_400 + 1_056_768 + 2 * 4096 * 2;

fn bench_ema_cpu() {
    let n = EMA_PARAMS;
    let (mut target, online) = (random(n, 1), random(n, 2));
    let mut dst = vec![0.0f32; n];
    let ema = median_secs(3, 15, || {
        Cpu.ema_update(&mut target, &online, 0.996).unwrap()
    });
    let copy = median_secs(3, 15, || {
        dst.par_chunks_mut(1 << 16)
            .zip(online.par_chunks(1 << 16))
            .for_each(|(d, s)| d.copy_from_slice(s))
    });
    // Bytes read + written: EMA reads target and online and writes target; the copy reads and writes once.
    let gbs = |bytes: usize, s: f64| bytes as f64 / s / 1e9;
    println!(
        "cpu  ema    {n} params: {:.2} ms, {:.1} GB/s | plain copy {:.2} ms, {:.1} GB/s | EMA/copy time {:.2}",
        ema * 1e3,
        gbs(12 * n, ema),
        copy * 1e3,
        gbs(8 * n, copy),
        ema / copy
    );
}

fn bench_loss_cpu() {
    let (rows, dim) = (256, 256);
    let (p, z) = (random(rows * dim, 3), random(rows * dim, 4));
    let mut g = vec![0.0; rows * dim];
    let t = median_secs(5, 50, || {
        black_box(Cpu.nmse_loss(&p, &z, rows, dim, Some(&mut g)).unwrap());
    });
    println!(
        "cpu  loss   {rows}x{dim} forward+backward: {:.1} µs",
        t * 1e6
    );
}

/// The projector step done unfused, as a framework without the fused epilogue runs it:
/// mean, variance, x̂, y, a each a pass that materialises its tensor, and the same for backward.
struct Unfused {
    h: Vec<f32>,
    xhat: Vec<f32>,
    y: Vec<f32>,
    a: Vec<f32>,
    dy: Vec<f32>,
    dxhat: Vec<f32>,
    dh: Vec<f32>,
    da: Vec<f32>,
}

/// Column sums of `f(r, c)` over the rows of a `[rows, cols]` matrix: per-thread partial
/// sums over blocks of rows, then reduced.
fn column_sums(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f32 + Sync) -> Vec<f32> {
    const BLOCK: usize = 16;
    (0..rows.div_ceil(BLOCK))
        .into_par_iter()
        .map(|blk| {
            let mut s = vec![0.0f32; cols];
            for r in blk * BLOCK..rows.min((blk + 1) * BLOCK) {
                s.iter_mut()
                    .enumerate()
                    .for_each(|(c, acc)| *acc += f(r, c));
            }
            s
        })
        .reduce(
            || vec![0.0; cols],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

fn map_rows(dst: &mut [f32], cols: usize, f: impl Fn(usize, usize) -> f32 + Sync) {
    dst.par_chunks_mut(cols)
        .enumerate()
        .for_each(|(r, row)| row.iter_mut().enumerate().for_each(|(c, v)| *v = f(r, c)));
}

#[allow(clippy::too_many_arguments)]
fn unfused_step(
    mlp: Mlp,
    b: usize,
    p: &[f32],
    x: &[f32],
    dout: &[f32],
    u: &mut Unfused,
    out: &mut [f32],
    grads: &mut [f32],
    gx: &mut [f32],
) {
    let (i, hd, o) = (mlp.input, mlp.hidden, mlp.output);
    let (b1, gamma, beta) = (&p[mlp.b1()], &p[mlp.gamma()], &p[mlp.beta()]);
    map_rows(&mut u.h, hd, |_, c| b1[c]);
    matmul(&mut u.h, b, hd, i, x, false, &p[mlp.w1()], true, true);
    let h = &u.h;
    let mean: Vec<f32> = column_sums(b, hd, |r, c| h[r * hd + c])
        .iter()
        .map(|s| s / b as f32)
        .collect();
    let var: Vec<f32> = column_sums(b, hd, |r, c| (h[r * hd + c] - mean[c]).powi(2))
        .iter()
        .map(|s| s / b as f32)
        .collect();
    let invstd: Vec<f32> = var.iter().map(|v| 1.0 / (v + 1e-5).sqrt()).collect();
    map_rows(&mut u.xhat, hd, |r, c| {
        (h[r * hd + c] - mean[c]) * invstd[c]
    });
    let xhat = &u.xhat;
    map_rows(&mut u.y, hd, |r, c| gamma[c] * xhat[r * hd + c] + beta[c]);
    let y = &u.y;
    map_rows(&mut u.a, hd, |r, c| y[r * hd + c].max(0.0));
    matmul(out, b, o, hd, &u.a, false, &p[mlp.w2()], true, false);
    // Backward.
    matmul(
        &mut grads[mlp.w2()],
        o,
        hd,
        b,
        dout,
        true,
        &u.a,
        false,
        true,
    );
    matmul(&mut u.da, b, hd, o, dout, false, &p[mlp.w2()], false, false);
    let da = &u.da;
    map_rows(&mut u.dy, hd, |r, c| {
        if y[r * hd + c] > 0.0 {
            da[r * hd + c]
        } else {
            0.0
        }
    });
    let dy = &u.dy;
    let dbeta = column_sums(b, hd, |r, c| dy[r * hd + c]);
    let dgamma = column_sums(b, hd, |r, c| dy[r * hd + c] * xhat[r * hd + c]);
    map_rows(&mut u.dxhat, hd, |r, c| dy[r * hd + c] * gamma[c]);
    let dxhat = &u.dxhat;
    let s1 = column_sums(b, hd, |r, c| dxhat[r * hd + c]);
    let s2 = column_sums(b, hd, |r, c| dxhat[r * hd + c] * xhat[r * hd + c]);
    let n = b as f32;
    map_rows(&mut u.dh, hd, |r, c| {
        invstd[c] / n * (n * dxhat[r * hd + c] - s1[c] - xhat[r * hd + c] * s2[c])
    });
    let dh = &u.dh;
    let db1 = column_sums(b, hd, |r, c| dh[r * hd + c]);
    for (range, v) in [(mlp.gamma(), dgamma), (mlp.beta(), dbeta), (mlp.b1(), db1)] {
        grads[range].iter_mut().zip(v).for_each(|(g, d)| *g += d);
    }
    matmul(&mut grads[mlp.w1()], hd, i, b, &u.dh, true, x, false, true);
    matmul(gx, b, i, hd, &u.dh, false, &p[mlp.w1()], false, false);
}

fn bench_mlp_cpu() {
    let (mlp, b) = (Mlp::byol(512), 256);
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let params = mlp.init_params(WeightInit::Torchvision, &mut r);
    let (x, dout) = (random(b * mlp.input, 6), random(b * mlp.output, 7));
    let mut st = MlpState {
        mlp,
        params: params.clone(),
        running: mlp.init_running(),
    };
    let mut saved = mlp.saved(&Cpu, b).unwrap();
    let mut out = vec![0.0; b * mlp.output];
    let mut grads = vec![0.0; mlp.num_params()];
    let mut gx = vec![0.0; b * mlp.input];
    let fused = median_secs(2, 11, || {
        st.forward(&Cpu, &x, BnMode::Train, &mut saved, &mut out)
            .unwrap();
        st.backward(&Cpu, &x, &mut saved, &dout, &mut grads, &mut gx)
            .unwrap();
    });
    let bh = b * mlp.hidden;
    let mut u = Unfused {
        h: vec![0.0; bh],
        xhat: vec![0.0; bh],
        y: vec![0.0; bh],
        a: vec![0.0; bh],
        dy: vec![0.0; bh],
        dxhat: vec![0.0; bh],
        dh: vec![0.0; bh],
        da: vec![0.0; bh],
    };
    let mut out2 = vec![0.0; b * mlp.output];
    let unfused = median_secs(2, 11, || {
        unfused_step(
            mlp, b, &params, &x, &dout, &mut u, &mut out2, &mut grads, &mut gx,
        )
    });
    // The five GEMMs alone, shared by both paths: subtracting them isolates the epilogue.
    let (mut h, mut da) = (vec![0.0; bh], vec![0.0; bh]);
    let (i, hd, o, p) = (mlp.input, mlp.hidden, mlp.output, &params);
    let gemms = median_secs(2, 11, || {
        matmul(&mut h, b, hd, i, &x, false, &p[mlp.w1()], true, false);
        matmul(&mut out2, b, o, hd, &h, false, &p[mlp.w2()], true, false);
        matmul(&mut grads[mlp.w2()], o, hd, b, &dout, true, &h, false, true);
        matmul(&mut da, b, hd, o, &dout, false, &p[mlp.w2()], false, false);
        matmul(&mut grads[mlp.w1()], hd, i, b, &da, true, &x, false, true);
        matmul(&mut gx, b, i, hd, &da, false, &p[mlp.w1()], false, false);
    });
    let gemm_flop =
        2.0 * 3.0 * b as f64 * (mlp.input * mlp.hidden + mlp.hidden * mlp.output) as f64;
    println!(
        "cpu  mlp    batch {b}, {i}→{hd}→{o} forward+backward: fused {:.2} ms | unfused {:.2} ms | unfused/fused {:.2}x",
        fused * 1e3,
        unfused * 1e3,
        unfused / fused
    );
    println!(
        "cpu  mlp    of which GEMMs {:.2} ms ({:.0} GFLOP/s); BN+ReLU+bias epilogue: fused {:.2} ms | unfused {:.2} ms | unfused/fused {:.2}x",
        gemms * 1e3,
        gemm_flop / gemms / 1e9,
        (fused - gemms) * 1e3,
        (unfused - gemms) * 1e3,
        (unfused - gemms) / (fused - gemms)
    );
}

#[cfg(feature = "cuda")]
fn bench_gpu() {
    let gpu = match host::Cuda::new(0) {
        Ok(g) => g,
        Err(e) => {
            println!("gpu  skipped: {e}");
            return;
        }
    };
    println!("gpu  device: {}", gpu.device_name().unwrap());
    let timed = |f: &mut dyn FnMut()| {
        median_secs(3, 21, || {
            f();
            gpu.synchronize().unwrap();
        })
    };
    let n = EMA_PARAMS;
    let mut target = gpu.upload(&random(n, 1)).unwrap();
    let online = gpu.upload(&random(n, 2)).unwrap();
    let mut dst = gpu.zeros(n).unwrap();
    let ema = timed(&mut || gpu.ema_update(&mut target, &online, 0.996).unwrap());
    let copy = timed(&mut || gpu.copy_all(&online, &mut dst).unwrap());
    let gbs = |bytes: usize, s: f64| bytes as f64 / s / 1e9;
    println!(
        "gpu  ema    {n} params: {:.1} µs, {:.0} GB/s | device copy {:.1} µs, {:.0} GB/s | EMA/copy time {:.2}",
        ema * 1e6,
        gbs(12 * n, ema),
        copy * 1e6,
        gbs(8 * n, copy),
        ema / copy
    );
    let (rows, dim) = (256, 256);
    let (p, z) = (
        gpu.upload(&random(rows * dim, 3)).unwrap(),
        gpu.upload(&random(rows * dim, 4)).unwrap(),
    );
    let mut g = gpu.zeros(rows * dim).unwrap();
    let t = timed(&mut || {
        black_box(gpu.nmse_loss(&p, &z, rows, dim, Some(&mut g)).unwrap());
    });
    println!("gpu  loss   {rows}x{dim} forward+backward (with the copy back of the row losses): {:.1} µs", t * 1e6);
    let (mlp, b) = (Mlp::byol(512), 256);
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut st = MlpState {
        mlp,
        params: gpu
            .upload(&mlp.init_params(WeightInit::Torchvision, &mut r))
            .unwrap(),
        running: gpu.upload(&mlp.init_running()).unwrap(),
    };
    let mut saved = mlp.saved(&gpu, b).unwrap();
    let x = gpu.upload(&random(b * mlp.input, 6)).unwrap();
    let dout = gpu.upload(&random(b * mlp.output, 7)).unwrap();
    let mut out = gpu.zeros(b * mlp.output).unwrap();
    let mut grads = gpu.zeros(mlp.num_params()).unwrap();
    let mut gx = gpu.zeros(b * mlp.input).unwrap();
    let t = timed(&mut || {
        st.forward(&gpu, &x, BnMode::Train, &mut saved, &mut out)
            .unwrap();
        st.backward(&gpu, &x, &mut saved, &dout, &mut grads, &mut gx)
            .unwrap();
    });
    let gemm_flop =
        2.0 * 3.0 * b as f64 * (mlp.input * mlp.hidden + mlp.hidden * mlp.output) as f64;
    println!(
        "gpu  mlp    batch {b}, 512→4096→256 forward+backward: {:.1} µs ({:.0} GFLOP/s)",
        t * 1e6,
        gemm_flop / t / 1e9
    );
}

/// The default run's convolutions that run directly (ResNet-18 width 16, CIFAR stem, batch
/// 64 of 32×32): direct and im2col + GEMM alternately, three rounds, median of each.
fn bench_direct_conv_cpu() {
    use host::cpu::conv::{conv_backward, conv_forward, Conv2d, ConvScratch};
    use host::cpu::direct_conv::{isa, runs};
    let Some(isa) = isa() else {
        return println!("cpu  direct conv: skipped, this machine has neither AVX2 nor AVX-512");
    };
    let n = 64;
    for (name, c, h) in [
        ("stem 3→16 at 32×32", Conv2d::new(3, 16, 3, 1, 1), 32),
        ("16→16 at 32×32", Conv2d::new(16, 16, 3, 1, 1), 32),
        ("32→32 at 16×16", Conv2d::new(32, 32, 3, 1, 1), 16),
    ] {
        if !runs(isa, c.cout) {
            println!("cpu  conv   {name}: runs as im2col + GEMM on {isa:?}");
            continue;
        }
        let w = h;
        let (x, weight, dout) = (
            random(n * h * w * c.cin, 7),
            random(c.weight_len(), 8),
            random(n * h * w * c.cout, 9),
        );
        let (mut out, mut dw, mut dx) = (
            vec![0.0; dout.len()],
            vec![0.0; weight.len()],
            vec![0.0; x.len()],
        );
        let mut time = |direct, backward: bool| {
            let mut scratch = ConvScratch::for_convs([(&c, n, h, w)]).with_direct(direct);
            median_secs(2, 10, || {
                conv_forward(&c, &x, n, h, w, &weight, &mut out, &mut scratch);
                if backward {
                    // The stem's input is the image: no input gradient.
                    let dx = (c.cin > 3).then_some((&mut dx[..], false));
                    conv_backward(&c, &x, n, h, w, &weight, &dout, &mut dw, dx, &mut scratch);
                }
            })
        };
        for backward in [false, true] {
            let (mut d, mut g) = (Vec::new(), Vec::new());
            for _ in 0..3 {
                d.push(time(Some(isa), backward));
                g.push(time(None, backward));
            }
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[1]
            };
            let (d, g) = (median(&mut d), median(&mut g));
            println!(
                "cpu  conv   {name} batch {n} {}: direct ({isa:?}) {:.2} ms | im2col + GEMM {:.2} ms | speed-up {:.2}×",
                if backward { "forward + backward" } else { "forward" },
                d * 1e3,
                g * 1e3,
                g / d
            );
        }
    }
}

fn main() {
    println!("threads: {}", common::threads());
    bench_ema_cpu();
    bench_loss_cpu();
    bench_mlp_cpu();
    bench_direct_conv_cpu();
    #[cfg(feature = "cuda")]
    bench_gpu();
}

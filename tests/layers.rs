//! ResNet layers on the CPU against naive f64 references (written here, independently) and by
//! finite differences: conv2d, BatchNorm2d with residual and ReLU, max-pool, average pool,
//! linear. Shapes include stride 2, padding, odd sizes and channel counts not a multiple of 8.

mod common;

use common::*;
use host::cpu::batchnorm::{batchnorm_backward, batchnorm_forward, BnLayer};
use host::cpu::conv::{conv_backward, conv_forward, Conv2d, ConvScratch};
use host::cpu::linear::{linear_backward, linear_forward};
use host::cpu::pool::{avgpool_backward, avgpool_forward, maxpool_backward, maxpool_forward};
use host::BnMode;
use kernels::batchnorm::BnGrads;
use kernels::conv::ConvGeometry;

/// Naive NHWC convolution in f64, weight OHWI.
fn conv_ref(
    c: &Conv2d,
    x: &[f64],
    n: usize,
    h: usize,
    w: usize,
    wt: &[f64],
) -> (Vec<f64>, usize, usize) {
    let oh = (h + 2 * c.pad - c.k) / c.stride + 1;
    let ow = (w + 2 * c.pad - c.k) / c.stride + 1;
    let mut out = vec![0.0; n * oh * ow * c.cout];
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for co in 0..c.cout {
                    let mut s = 0.0;
                    for ky in 0..c.k {
                        for kx in 0..c.k {
                            let iy = (oy * c.stride + ky) as isize - c.pad as isize;
                            let ix = (ox * c.stride + kx) as isize - c.pad as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            for ci in 0..c.cin {
                                s += x[((b * h + iy as usize) * w + ix as usize) * c.cin + ci]
                                    * wt[((co * c.k + ky) * c.k + kx) * c.cin + ci];
                            }
                        }
                    }
                    out[((b * oh + oy) * ow + ox) * c.cout + co] = s;
                }
            }
        }
    }
    (out, oh, ow)
}

/// Convolutions covered: 1×1 (pointwise and strided), 3×3 with padding and stride 2, 7×7
/// stride 2 padding 3, odd sizes and channel counts.
fn convs() -> Vec<(Conv2d, usize, usize, usize)> {
    vec![
        (
            Conv2d {
                cin: 5,
                cout: 7,
                k: 1,
                stride: 1,
                pad: 0,
            },
            2,
            5,
            3,
        ),
        (
            Conv2d {
                cin: 6,
                cout: 3,
                k: 1,
                stride: 2,
                pad: 0,
            },
            2,
            7,
            6,
        ),
        (
            Conv2d {
                cin: 3,
                cout: 5,
                k: 3,
                stride: 1,
                pad: 1,
            },
            3,
            6,
            7,
        ),
        (
            Conv2d {
                cin: 7,
                cout: 4,
                k: 3,
                stride: 2,
                pad: 1,
            },
            2,
            9,
            8,
        ),
        (
            Conv2d {
                cin: 3,
                cout: 6,
                k: 7,
                stride: 2,
                pad: 3,
            },
            2,
            11,
            10,
        ),
        (
            Conv2d {
                cin: 2,
                cout: 3,
                k: 3,
                stride: 2,
                pad: 0,
            },
            1,
            7,
            7,
        ),
    ]
}

#[test]
fn conv2d_forward_should_match_f64_reference() {
    for (i, (c, n, h, w)) in convs().into_iter().enumerate() {
        let mut r = rng(i as u64);
        let x = uniform(&mut r, n * h * w * c.cin, 1.0);
        let wt = uniform(&mut r, c.weight_len(), 0.5);
        let (expected, oh, ow) = conv_ref(&c, &to_f64(&x), n, h, w, &to_f64(&wt));
        let mut out = vec![0.0; n * oh * ow * c.cout];
        let mut scratch = ConvScratch::for_convs([(&c, n, h, w)]);
        conv_forward(&c, &x, n, h, w, &wt, &mut out, &mut scratch);
        assert_close(
            &format!("conv {c:?} {n}x{h}x{w}"),
            &out,
            &expected,
            1e-5,
            1e-6,
        );
    }
}

#[test]
fn conv2d_gradients_should_match_finite_differences() {
    for (i, (c, n, h, w)) in convs().into_iter().enumerate() {
        let mut r = rng(10 + i as u64);
        let mut x = uniform(&mut r, n * h * w * c.cin, 1.0);
        let mut wt = uniform(&mut r, c.weight_len(), 0.5);
        let g = c.geometry(h, w);
        let out_len = n * g.out_h() * g.out_w() * c.cout;
        let weights = uniform(&mut r, out_len, 1.0);
        let mut scratch = ConvScratch::for_convs([(&c, n, h, w)]);
        // Objective J = Σ out ⊙ R, in f64 from the exact f64 reference (conv is linear in
        // each argument, so the difference quotient is exact up to rounding).
        let objective = |x: &[f32], wt: &[f32]| -> f64 {
            let (out, _, _) = conv_ref(&c, &to_f64(x), n, h, w, &to_f64(wt));
            out.iter().zip(&weights).map(|(o, &r)| o * r as f64).sum()
        };
        let mut dw = vec![0.5f32; c.weight_len()]; // accumulates onto 0.5
        let mut dx = vec![9.0f32; x.len()]; // overwritten
        conv_backward(
            &c,
            &x,
            n,
            h,
            w,
            &wt,
            &weights,
            &mut dw,
            Some((&mut dx, false)),
            &mut scratch,
        );
        let eps = 1e-2;
        for (k, &g) in dw.iter().enumerate() {
            let (p, m) = perturbed(&mut wt, k, eps, |wt| objective(&x, wt));
            let fd = (p - m) / (2.0 * eps as f64);
            let g = g - 0.5;
            assert!(
                (fd - g as f64).abs() < 1e-3 * (1.0 + fd.abs()),
                "dW[{k}] of {c:?}: {g} vs {fd}"
            );
        }
        for (k, &g) in dx.iter().enumerate() {
            let (p, m) = perturbed(&mut x, k, eps, |x| objective(x, &wt));
            let fd = (p - m) / (2.0 * eps as f64);
            assert!(
                (fd - g as f64).abs() < 1e-3 * (1.0 + fd.abs()),
                "dx[{k}] of {c:?}: {g} vs {fd}"
            );
        }
        // Accumulating mode adds to what is there.
        let mut dx2 = vec![1.0f32; x.len()];
        conv_backward(
            &c,
            &x,
            n,
            h,
            w,
            &wt,
            &weights,
            &mut dw,
            Some((&mut dx2, true)),
            &mut scratch,
        );
        assert!(dx2.iter().zip(&dx).all(|(a, b)| (a - 1.0 - b).abs() < 1e-5));
    }
}

/// BatchNorm2d as `[N·H·W, C]`, tall enough for the two-pass row-block path, with residual
/// and ReLU, against the f64 reference; eval mode too.
#[test]
fn batchnorm2d_with_residual_should_match_f64_reference_on_tall_inputs() {
    for (rows, cols, residual, relu) in [
        (3001usize, 13usize, true, true),
        (2500, 7, false, false),
        (600, 5, true, true),
    ] {
        let mut r = rng(rows as u64);
        let h = uniform(&mut r, rows * cols, 2.0)
            .iter()
            .map(|v| v + 3.0)
            .collect::<Vec<_>>(); // mean ≫ spread
        let res = uniform(&mut r, rows * cols, 1.0);
        let gamma = uniform(&mut r, cols, 0.5)
            .iter()
            .map(|v| v + 1.0)
            .collect::<Vec<_>>();
        let beta = uniform(&mut r, cols, 0.3);
        let (mut rm, mut rv) = (vec![0.1f32; cols], vec![1.5f32; cols]);
        let (mut mean, mut invstd) = (vec![0.0; cols], vec![0.0; cols]);
        let mut a = vec![0.0; rows * cols];
        let layer = BnLayer {
            gamma: &gamma,
            beta: &beta,
            running_mean: &mut rm,
            running_var: &mut rv,
            mean: &mut mean,
            invstd: &mut invstd,
        };
        batchnorm_forward(
            &h,
            &mut a,
            rows,
            cols,
            BnMode::Train,
            layer,
            residual.then_some(&res[..]),
            relu,
        );
        // Reference, f64.
        let n = rows as f64;
        let mut e_a = vec![0.0; rows * cols];
        let (mut e_mean, mut e_var) = (vec![0.0; cols], vec![0.0; cols]);
        for c in 0..cols {
            e_mean[c] = (0..rows).map(|i| h[i * cols + c] as f64).sum::<f64>() / n;
            e_var[c] = (0..rows)
                .map(|i| (h[i * cols + c] as f64 - e_mean[c]).powi(2))
                .sum::<f64>()
                / n;
            for i in 0..rows {
                let y = gamma[c] as f64 * (h[i * cols + c] as f64 - e_mean[c])
                    / (e_var[c] + 1e-5).sqrt()
                    + beta[c] as f64
                    + if residual {
                        res[i * cols + c] as f64
                    } else {
                        0.0
                    };
                e_a[i * cols + c] = if relu { y.max(0.0) } else { y };
            }
        }
        let tag = format!("{rows}x{cols} residual {residual} relu {relu}");
        assert_close(&format!("BN2d out {tag}"), &a, &e_a, 1e-4, 1e-5);
        let e_rm: Vec<f64> = e_mean
            .iter()
            .map(|m| 0.9 * 0.1f32 as f64 + 0.1 * m)
            .collect();
        let e_rv: Vec<f64> = e_var
            .iter()
            .map(|v| 0.9 * 1.5 + 0.1 * v * n / (n - 1.0))
            .collect();
        assert_close(&format!("BN2d running mean {tag}"), &rm, &e_rm, 1e-5, 1e-6);
        assert_close(&format!("BN2d running var {tag}"), &rv, &e_rv, 1e-4, 1e-5);

        // Backward against the reference's derivation.
        let dout = uniform(&mut r, rows * cols, 1.0);
        let mut grad = dout.clone();
        let (mut dg, mut db) = (vec![0.0; cols], vec![0.0; cols]);
        let mut dres = vec![0.0; rows * cols];
        let grads = BnGrads {
            gamma: &mut dg,
            beta: &mut db,
            linear_bias: &mut [],
        };
        batchnorm_backward(
            &h,
            &a,
            &mut grad,
            rows,
            cols,
            relu,
            &gamma,
            (&mean, &invstd),
            grads,
            residual.then_some(&mut dres[..]),
        );
        let (mut e_dh, mut e_dg, mut e_db, mut e_dres) = (
            vec![0.0; rows * cols],
            vec![0.0; cols],
            vec![0.0; cols],
            vec![0.0; rows * cols],
        );
        for c in 0..cols {
            let std = (e_var[c] + 1e-5).sqrt();
            let dy: Vec<f64> = (0..rows)
                .map(|i| {
                    if !relu || e_a[i * cols + c] > 0.0 {
                        dout[i * cols + c] as f64
                    } else {
                        0.0
                    }
                })
                .collect();
            let xhat: Vec<f64> = (0..rows)
                .map(|i| (h[i * cols + c] as f64 - e_mean[c]) / std)
                .collect();
            e_db[c] = dy.iter().sum();
            e_dg[c] = dy.iter().zip(&xhat).map(|(d, x)| d * x).sum();
            for i in 0..rows {
                e_dres[i * cols + c] = dy[i];
                e_dh[i * cols + c] =
                    gamma[c] as f64 / std / n * (n * dy[i] - e_db[c] - xhat[i] * e_dg[c]);
            }
        }
        assert_close(&format!("BN2d dh {tag}"), &grad, &e_dh, 1e-3, 1e-4);
        assert_close(&format!("BN2d dgamma {tag}"), &dg, &e_dg, 1e-3, 1e-4);
        assert_close(&format!("BN2d dbeta {tag}"), &db, &e_db, 1e-4, 1e-5);
        if residual {
            assert_close(&format!("BN2d dresidual {tag}"), &dres, &e_dres, 0.0, 0.0);
        }

        // Eval mode: the running statistics normalise, and stay as they are.
        let (rm0, rv0) = (rm.clone(), rv.clone());
        let layer = BnLayer {
            gamma: &gamma,
            beta: &beta,
            running_mean: &mut rm,
            running_var: &mut rv,
            mean: &mut mean,
            invstd: &mut invstd,
        };
        batchnorm_forward(
            &h,
            &mut a,
            rows,
            cols,
            BnMode::Eval,
            layer,
            residual.then_some(&res[..]),
            relu,
        );
        let e_eval: Vec<f64> = (0..rows * cols)
            .map(|i| {
                let c = i % cols;
                let y = gamma[c] as f64 * (h[i] as f64 - rm0[c] as f64)
                    / (rv0[c] as f64 + 1e-5).sqrt()
                    + beta[c] as f64
                    + if residual { res[i] as f64 } else { 0.0 };
                if relu {
                    y.max(0.0)
                } else {
                    y
                }
            })
            .collect();
        assert_close(&format!("BN2d eval {tag}"), &a, &e_eval, 1e-4, 1e-5);
        assert_eq!(
            (rm, rv),
            (rm0, rv0),
            "eval mode must not touch the running statistics"
        );
    }
}

#[test]
fn batchnorm2d_results_should_not_depend_on_the_thread_count() {
    let (rows, cols) = (5000, 9);
    let mut r = rng(77);
    let h = uniform(&mut r, rows * cols, 1.0);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let (g, b) = (vec![1.0f32; cols], vec![0.0f32; cols]);
            let (mut rm, mut rv, mut m, mut s) = (
                vec![0.0; cols],
                vec![1.0; cols],
                vec![0.0; cols],
                vec![0.0; cols],
            );
            let mut a = vec![0.0; rows * cols];
            let layer = BnLayer {
                gamma: &g,
                beta: &b,
                running_mean: &mut rm,
                running_var: &mut rv,
                mean: &mut m,
                invstd: &mut s,
            };
            batchnorm_forward(&h, &mut a, rows, cols, BnMode::Train, layer, None, true);
            (a, rm, rv)
        })
    };
    assert!(run(1) == run(3), "BatchNorm must reduce in a fixed order");
}

#[test]
fn maxpool_should_match_reference_and_route_gradients_to_the_maximum() {
    let (n, h, w, c) = (2, 7, 6, 5);
    let g = ConvGeometry {
        h,
        w,
        cin: c,
        k: 3,
        stride: 2,
        pad: 1,
    };
    let (oh, ow) = (g.out_h(), g.out_w());
    assert_eq!((oh, ow), (4, 3));
    let mut r = rng(3);
    let x = uniform(&mut r, n * h * w * c, 1.0);
    let mut out = vec![0.0; n * oh * ow * c];
    let mut am = vec![0u32; out.len()];
    maxpool_forward(g, &x, n, &mut out, &mut am);
    let mut e_dx = vec![0.0f64; x.len()];
    let dout = uniform(&mut r, out.len(), 1.0);
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in 0..c {
                    let mut best = (f32::NEG_INFINITY, 0);
                    for iy in (oy * 2).saturating_sub(1)..(oy * 2 + 2).min(h) {
                        for ix in (ox * 2).saturating_sub(1)..(ox * 2 + 2).min(w) {
                            let i = ((b * h + iy) * w + ix) * c + ch;
                            if x[i] > best.0 {
                                best = (x[i], i);
                            }
                        }
                    }
                    let o = ((b * oh + oy) * ow + ox) * c + ch;
                    assert_eq!(out[o], best.0, "max at {o}");
                    e_dx[best.1] += dout[o] as f64;
                }
            }
        }
    }
    let mut dx = vec![7.0; x.len()];
    maxpool_backward(g, &dout, &am, n, &mut dx);
    assert_close("maxpool dx", &dx, &e_dx, 1e-6, 1e-7);
}

#[test]
fn avgpool_should_match_reference_and_finite_differences() {
    let (n, hw, c) = (3, 5, 4);
    let mut r = rng(4);
    let mut x = uniform(&mut r, n * hw * c, 1.0);
    let mut out = vec![0.0; n * c];
    avgpool_forward(&x, n, hw, c, &mut out);
    let e: Vec<f64> = (0..n * c)
        .map(|i| {
            (0..hw)
                .map(|p| x[(i / c * hw + p) * c + i % c] as f64)
                .sum::<f64>()
                / hw as f64
        })
        .collect();
    assert_close("avgpool", &out, &e, 1e-6, 1e-7);
    let wts = uniform(&mut r, n * c, 1.0);
    let mut dx = vec![0.0; x.len()];
    avgpool_backward(&wts, n, hw, c, &mut dx);
    for (k, &g) in dx.iter().enumerate() {
        let (p, m) = perturbed(&mut x, k, 1e-2, |x| {
            let mut o = vec![0.0; n * c];
            avgpool_forward(x, n, hw, c, &mut o);
            o.iter()
                .zip(&wts)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>()
        });
        assert!(((p - m) / 2e-2 - g as f64).abs() < 1e-4, "avgpool dx[{k}]");
    }
}

#[test]
fn linear_should_match_reference_and_finite_differences() {
    let (rows, k, n) = (5, 7, 3);
    let mut r = rng(5);
    let (mut x, mut w, mut b) = (
        uniform(&mut r, rows * k, 1.0),
        uniform(&mut r, n * k, 1.0),
        uniform(&mut r, n, 1.0),
    );
    let wts = uniform(&mut r, rows * n, 1.0);
    let objective = |x: &[f32], w: &[f32], b: &[f32]| -> f64 {
        (0..rows * n)
            .map(|i| {
                let (row, o) = (i / n, i % n);
                let y = b[o] as f64
                    + (0..k)
                        .map(|j| x[row * k + j] as f64 * w[o * k + j] as f64)
                        .sum::<f64>();
                y * wts[i] as f64
            })
            .sum()
    };
    let mut out = vec![0.0; rows * n];
    linear_forward(&mut out, &x, &w, &b, rows, k, n);
    let e: Vec<f64> = (0..rows * n)
        .map(|i| {
            b[i % n] as f64
                + (0..k)
                    .map(|j| x[i / n * k + j] as f64 * w[i % n * k + j] as f64)
                    .sum::<f64>()
        })
        .collect();
    assert_close("linear", &out, &e, 1e-5, 1e-6);
    let (mut dw, mut db, mut dx) = (vec![0.0; n * k], vec![0.0; n], vec![0.0; rows * k]);
    linear_backward(&mut dw, &mut db, Some(&mut dx), &x, &w, &wts, rows, k, n);
    let eps = 1e-2;
    for (name, grad, v) in [("w", &dw, 0usize), ("b", &db, 1), ("x", &dx, 2)] {
        for (i, &g) in grad.iter().enumerate() {
            let (p, m) = match v {
                0 => perturbed(&mut w, i, eps, |w| objective(&x, w, &b)),
                1 => perturbed(&mut b, i, eps, |b| objective(&x, &w, b)),
                _ => perturbed(&mut x, i, eps, |x| objective(x, &w, &b)),
            };
            let fd = (p - m) / (2.0 * eps as f64);
            assert!(
                (fd - g as f64).abs() < 1e-3 * (1.0 + fd.abs()),
                "linear d{name}[{i}]: {} vs {fd}",
                g
            );
        }
    }
}

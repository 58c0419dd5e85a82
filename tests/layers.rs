//! ResNet layers through the backend trait against naive f64 references (written here,
//! independently) and by finite differences: GEMM, conv2d, BatchNorm2d with residual and ReLU
//! (fused, and split into its partial sums and their finish), max-pool, average pool, Linear,
//! copies. Shapes include stride 2, padding, odd sizes and channel counts not a multiple of 8;
//! parameters sit at an offset inside larger flat buffers, as in a network. Each check is one
//! body run on every backend compiled in ([`test_device!`]).

#[macro_use]
mod common;

use common::*;
use host::backend::{BatchNorm, Conv2d, ConvGeometry, ConvOp, Gemm, Linear};
use host::{Backend, BnMode, Cpu};

/// Where the tests put a tensor inside a flat buffer: after `OFFSET` values of something else.
const OFFSET: usize = 3;

/// `v` behind `OFFSET` values of padding, and its range there.
fn placed(v: &[f32]) -> (Vec<f32>, std::ops::Range<usize>) {
    let mut buf = vec![0.25f32; OFFSET];
    buf.extend_from_slice(v);
    (buf, OFFSET..OFFSET + v.len())
}

fn up<B: Backend>(be: &B, v: &[f32]) -> B::Buffer {
    be.upload(v).unwrap()
}

fn down<B: Backend>(be: &B, b: &B::Buffer) -> Vec<f32> {
    be.download(b).unwrap()
}

/// Output height and width of `c` on `h × w` images.
fn out_size(c: &Conv2d, h: usize, w: usize) -> (usize, usize) {
    let side = |s: usize| (s + 2 * c.pad - c.k) / c.stride + 1;
    (side(h), side(w))
}

/// Visits every tap of a convolution of `n` images `h × w`: `f(out, x, w)` with the index of
/// the output value and the indices of the tap's first input channel in `x` and in the OHWI
/// weight (the channels follow contiguously in both). Taps in the padding are skipped.
fn for_each_tap(
    c: &Conv2d,
    (n, h, w): (usize, usize, usize),
    mut f: impl FnMut(usize, usize, usize),
) {
    let (oh, ow) = out_size(c, h, w);
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for co in 0..c.cout {
                    for ky in 0..c.k {
                        for kx in 0..c.k {
                            let iy = (oy * c.stride + ky) as isize - c.pad as isize;
                            let ix = (ox * c.stride + kx) as isize - c.pad as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            f(
                                ((b * oh + oy) * ow + ox) * c.cout + co,
                                ((b * h + iy as usize) * w + ix as usize) * c.cin,
                                ((co * c.k + ky) * c.k + kx) * c.cin,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Naive NHWC convolution in f64, weight OHWI.
fn conv_ref(
    c: &Conv2d,
    x: &[f64],
    n: usize,
    h: usize,
    w: usize,
    wt: &[f64],
) -> (Vec<f64>, usize, usize) {
    let (oh, ow) = out_size(c, h, w);
    let mut out = vec![0.0; n * oh * ow * c.cout];
    for_each_tap(c, (n, h, w), |o, xi, wi| {
        out[o] += (0..c.cin).map(|ci| x[xi + ci] * wt[wi + ci]).sum::<f64>();
    });
    (out, oh, ow)
}

/// Convolutions covered: 1×1 (pointwise and strided), 3×3 with padding and stride 2, 7×7
/// stride 2 padding 3, odd sizes and channel counts; and the shapes the CPU runs as a direct
/// convolution (16 or 32 output channels, or as many input channels for the input gradient,
/// stride 1): rows not a multiple of its pixel blocks, an unpadded one, a channel count it
/// does not specialise, a patch longer than the GEMM's depth block.
fn convs() -> Vec<(Conv2d, usize, usize, usize)> {
    vec![
        (Conv2d::new(16, 16, 3, 1, 1), 2, 5, 19),
        (Conv2d::new(5, 16, 3, 1, 0), 2, 6, 9),
        (Conv2d::new(16, 8, 3, 1, 1), 1, 7, 11),
        (Conv2d::new(40, 16, 3, 1, 1), 1, 4, 6),
        (Conv2d::new(8, 32, 3, 1, 1), 2, 4, 15),
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

fn conv_op(c: Conv2d, n: usize, h: usize, w: usize) -> ConvOp {
    ConvOp {
        conv: c,
        n,
        h,
        w,
        weight: OFFSET..OFFSET + c.weight_len(),
    }
}

/// Forward against the f64 reference, then both gradients against finite differences of the
/// reference (conv is linear in each argument, so the quotient is exact up to rounding), and
/// the accumulating input gradient.
fn conv2d_matches_reference<B: Backend>(be: &B) {
    for (i, (c, n, h, w)) in convs().into_iter().enumerate() {
        let mut r = rng(i as u64);
        let mut x = uniform(&mut r, n * h * w * c.cin, 1.0);
        let mut wt = uniform(&mut r, c.weight_len(), 0.5);
        let (expected, oh, ow) = conv_ref(&c, &to_f64(&x), n, h, w, &to_f64(&wt));
        let op = conv_op(c, n, h, w);
        let (params, _) = placed(&wt);
        let (xb, pb) = (up(be, &x), up(be, &params));
        let mut out = up(be, &vec![0.0; n * oh * ow * c.cout + 5]); // longer: the prefix is used
        let Some(mut ws) = supported(
            "conv_workspace",
            be.conv_workspace(std::slice::from_ref(&op)),
        ) else {
            return;
        };
        if supported(
            "conv2d_forward",
            be.conv2d_forward(&op, &pb, &xb, &mut out, &mut ws),
        )
        .is_none()
        {
            return;
        }
        let got = down(be, &out);
        assert_close(
            &format!("conv {c:?} {n}x{h}x{w}"),
            &got[..expected.len()],
            &expected,
            1e-5,
            1e-6,
        );
        assert!(
            got[expected.len()..].iter().all(|&v| v == 0.0),
            "conv wrote past its output"
        );

        let weights = uniform(&mut r, expected.len(), 1.0);
        let objective = |x: &[f32], wt: &[f32]| -> f64 {
            let (out, _, _) = conv_ref(&c, &to_f64(x), n, h, w, &to_f64(wt));
            out.iter().zip(&weights).map(|(o, &r)| o * r as f64).sum()
        };
        let mut grads = up(be, &vec![0.5f32; params.len()]); // accumulates onto 0.5
        let mut dx = up(be, &vec![9.0f32; x.len()]); // overwritten
        let dout = up(be, &weights);
        be.conv2d_backward(
            &op,
            &pb,
            &xb,
            &dout,
            &mut grads,
            Some((&mut dx, false)),
            &mut ws,
        )
        .unwrap();
        let (dw, dx_host) = (down(be, &grads), down(be, &dx));
        assert!(
            dw[..OFFSET].iter().all(|&v| v == 0.5),
            "conv touched other gradients"
        );
        let eps = 1e-2;
        for (k, &g) in dw[OFFSET..].iter().enumerate() {
            let (p, m) = perturbed(&mut wt, k, eps, |wt| objective(&x, wt));
            let fd = (p - m) / (2.0 * eps as f64);
            let g = g - 0.5;
            assert!(
                (fd - g as f64).abs() < 1e-3 * (1.0 + fd.abs()),
                "dW[{k}] of {c:?}: {g} vs {fd}"
            );
        }
        for (k, &g) in dx_host.iter().enumerate() {
            let (p, m) = perturbed(&mut x, k, eps, |x| objective(x, &wt));
            let fd = (p - m) / (2.0 * eps as f64);
            assert!(
                (fd - g as f64).abs() < 1e-3 * (1.0 + fd.abs()),
                "dx[{k}] of {c:?}: {g} vs {fd}"
            );
        }
        // Accumulating mode adds to what is there.
        let mut dx2 = up(be, &vec![1.0f32; x.len()]);
        be.conv2d_backward(
            &op,
            &pb,
            &xb,
            &dout,
            &mut grads,
            Some((&mut dx2, true)),
            &mut ws,
        )
        .unwrap();
        let dx2 = down(be, &dx2);
        assert!(dx2
            .iter()
            .zip(&dx_host)
            .all(|(a, b)| (a - 1.0 - b).abs() < 1e-5));
    }
}
test_device!(
    conv2d_should_match_f64_reference_and_finite_differences,
    conv2d_matches_reference
);

/// The adjoint of [`conv_ref`] in f64: `∂L/∂w` and `∂L/∂x` of `L = Σ out · dout`, summed
/// tap by tap.
fn conv_backward_ref(
    c: &Conv2d,
    x: &[f64],
    shape: (usize, usize, usize),
    wt: &[f64],
    dout: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let (mut dw, mut dx) = (vec![0.0; wt.len()], vec![0.0; x.len()]);
    for_each_tap(c, shape, |o, xi, wi| {
        for ci in 0..c.cin {
            dw[wi + ci] += dout[o] * x[xi + ci];
            dx[xi + ci] += dout[o] * wt[wi + ci];
        }
    });
    (dw, dx)
}

/// The CPU convolution splits each thread's images into chunks of about
/// [`host::cpu::conv::CHUNK_FLOATS`] column values: with a long patch and large images, every
/// part holds several chunks, whose weight gradients add up across chunks and whose input
/// gradients go by the transposed convolution (stride 1) or the gather (stride 2). Checked
/// against the f64 reference on one thread and on two.
#[test]
fn conv2d_over_several_chunks_per_thread_should_match_f64_reference() {
    use host::cpu::conv::{conv_backward, conv_forward, images_per_chunk, ConvScratch};
    let cases = [
        (Conv2d::new(64, 8, 3, 1, 1), 6, 16, 16),
        (Conv2d::new(64, 8, 3, 2, 1), 4, 32, 32),
        // More output than input channels: the transposed convolution's columns are wider
        // than the forward's.
        (Conv2d::new(8, 64, 3, 1, 1), 8, 32, 32),
    ];
    for (i, (c, n, h, w)) in cases.into_iter().enumerate() {
        let g = c.geometry(h, w);
        let image_rows = g.out_h() * g.out_w();
        assert!(
            n / 2 > images_per_chunk(g, n),
            "case {i} must give each of two threads more than one chunk"
        );
        let mut r = rng(100 + i as u64);
        let x = uniform(&mut r, n * h * w * c.cin, 1.0);
        let wt = uniform(&mut r, c.weight_len(), 0.5);
        let dout = uniform(&mut r, n * image_rows * c.cout, 1.0);
        let (out_ref, _, _) = conv_ref(&c, &to_f64(&x), n, h, w, &to_f64(&wt));
        let (dw_ref, dx_ref) =
            conv_backward_ref(&c, &to_f64(&x), (n, h, w), &to_f64(&wt), &to_f64(&dout));
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let what = format!("conv {c:?} {n}x{h}x{w} on {threads} threads");
                let mut scratch = ConvScratch::for_convs([(&c, n, h, w)]);
                let mut out = vec![0.0; out_ref.len()];
                conv_forward(&c, &x, n, h, w, &wt, &mut out, &mut scratch);
                assert_close(&format!("{what}: forward"), &out, &out_ref, 1e-5, 1e-6);
                let (mut dw, mut dx) = (vec![0.0; wt.len()], vec![9.0; x.len()]);
                conv_backward(
                    &c,
                    &x,
                    n,
                    h,
                    w,
                    &wt,
                    &dout,
                    &mut dw,
                    Some((&mut dx, false)),
                    &mut scratch,
                );
                assert_close(&format!("{what}: dW"), &dw, &dw_ref, 1e-4, 1e-5);
                assert_close(&format!("{what}: dx"), &dx, &dx_ref, 1e-4, 1e-5);
            });
        }
    }
}

/// The direct convolution (16 or 32 output channels, stride 1; see `host::cpu::direct_conv`)
/// gives the im2col + GEMM path's values bit for bit, on every instruction set this machine
/// has (where that set runs the shape), for the shapes of the width-16 ResNets' convolutions
/// it runs: the stems (3 and 1 input channels, 32 and 28 pixels wide), the 16→16 layers at
/// both sizes, the 32→32 ones at 16 and 14, and unspecialised channel counts with rows of
/// 1–15 pixels left over; forward, weight and input gradients (the latter by the transposed
/// convolution), overwritten and accumulated. On a machine with neither AVX2 nor AVX-512
/// there is nothing to compare and the test says so.
#[test]
fn direct_conv_should_give_the_gemm_path_bits() {
    use host::cpu::conv::{conv_backward, conv_forward, ConvScratch};
    use host::cpu::direct_conv::Isa;
    let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2]
        .into_iter()
        .filter(|isa| isa.available())
        .collect();
    if isas.is_empty() {
        return eprintln!("no AVX2 or AVX-512 here: the direct convolution does not run");
    }
    let cases = [
        (Conv2d::new(3, 16, 3, 1, 1), 3, 32, 32),
        (Conv2d::new(1, 16, 3, 1, 1), 2, 28, 28),
        (Conv2d::new(16, 16, 3, 1, 1), 3, 32, 32),
        (Conv2d::new(16, 16, 3, 1, 1), 2, 28, 28),
        (Conv2d::new(7, 16, 3, 1, 1), 2, 9, 31),
        (Conv2d::new(32, 32, 3, 1, 1), 3, 16, 16),
        (Conv2d::new(32, 32, 3, 1, 1), 2, 14, 14),
        (Conv2d::new(32, 16, 3, 1, 1), 1, 9, 23),
    ];
    for (i, (c, n, h, w)) in cases.into_iter().enumerate() {
        let (oh, ow) = out_size(&c, h, w);
        let mut r = rng(200 + i as u64);
        let x = uniform(&mut r, n * h * w * c.cin, 1.0);
        let wt = uniform(&mut r, c.weight_len(), 0.5);
        let dout = uniform(&mut r, n * oh * ow * c.cout, 1.0);
        let start = uniform(&mut r, x.len().max(dout.len()), 1.0);
        // (output, dW, dx overwritten, dx accumulated onto `start`)
        let run = |direct: Option<Isa>| {
            let mut scratch = ConvScratch::for_convs([(&c, n, h, w)]).with_direct(direct);
            let mut out = start[..dout.len()].to_vec();
            conv_forward(&c, &x, n, h, w, &wt, &mut out, &mut scratch);
            let (mut dw, mut dx) = (vec![0.0; wt.len()], vec![9.0; x.len()]);
            let backward = |dw: &mut [f32], dx, scratch: &mut ConvScratch| {
                conv_backward(&c, &x, n, h, w, &wt, &dout, dw, Some(dx), scratch)
            };
            backward(&mut dw, (&mut dx, false), &mut scratch);
            let mut dx_acc = start[..x.len()].to_vec();
            backward(&mut dw, (&mut dx_acc, true), &mut scratch);
            [out, dw, dx, dx_acc]
        };
        let gemm = run(None);
        for &isa in &isas {
            for (what, (a, b)) in ["forward", "dW", "dx", "dx accumulated"]
                .iter()
                .zip(run(Some(isa)).iter().zip(&gemm))
            {
                let differ = a.iter().zip(b).filter(|(p, q)| p.to_bits() != q.to_bits());
                assert_eq!(
                    differ.count(),
                    0,
                    "conv {c:?} {n}x{h}x{w}, {isa:?}: {what} differs from im2col + GEMM"
                );
            }
        }
    }
}

/// The BatchNorm layer of the tests: γ, β in a parameter buffer and the running statistics
/// in a running buffer, each behind `OFFSET` values.
fn bn_layer(rows: usize, cols: usize, relu: bool) -> BatchNorm {
    BatchNorm {
        rows,
        cols,
        relu,
        gamma: OFFSET..OFFSET + cols,
        beta: OFFSET + cols..OFFSET + 2 * cols,
        running_mean: OFFSET..OFFSET + cols,
        running_var: OFFSET + cols..OFFSET + 2 * cols,
        linear_bias: None,
    }
}

/// BatchNorm2d as `[N·H·W, C]`, tall enough for the two-pass row-block path, with residual
/// and ReLU, against the f64 reference; the split form (partial sums, then finish) gives the
/// fused form's bits; eval mode too.
fn batchnorm2d_matches_reference<B: Backend>(be: &B) {
    for (rows, cols, residual, relu) in [
        (3001usize, 13usize, true, true),
        (2500, 7, false, false),
        (600, 5, true, true),
        (500, 6, false, true), // one row block: the one-pass forward and backward
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
        let (params, _) = placed(&[gamma.clone(), beta.clone()].concat());
        let (running0, _) = placed(&[vec![0.1f32; cols], vec![1.5f32; cols]].concat());
        let bn = bn_layer(rows, cols, relu);
        let (hb, pb, resb) = (up(be, &h), up(be, &params), up(be, &res));
        let mut running = up(be, &running0);
        let mut stats = up(be, &vec![0.0; 2 * cols]);
        let mut a = up(be, &vec![0.0; rows * cols]);
        let res_arg = residual.then_some(&resb);
        let forward = be.batchnorm_forward(
            &bn,
            BnMode::Train,
            &pb,
            &mut running,
            &hb,
            res_arg,
            &mut stats,
            &mut a,
        );
        if supported("batchnorm_forward", forward).is_none() {
            return;
        }
        let a_host = down(be, &a);
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
        assert_close(&format!("BN2d out {tag}"), &a_host, &e_a, 1e-4, 1e-5);
        let run = down(be, &running);
        assert_eq!(
            run[..OFFSET],
            running0[..OFFSET],
            "BN touched other statistics"
        );
        let e_rm: Vec<f64> = e_mean
            .iter()
            .map(|m| 0.9 * 0.1f32 as f64 + 0.1 * m)
            .collect();
        let e_rv: Vec<f64> = e_var
            .iter()
            .map(|v| 0.9 * 1.5 + 0.1 * v * n / (n - 1.0))
            .collect();
        let (rm, rv) = run[OFFSET..].split_at(cols);
        assert_close(&format!("BN2d running mean {tag}"), rm, &e_rm, 1e-5, 1e-6);
        assert_close(&format!("BN2d running var {tag}"), rv, &e_rv, 1e-4, 1e-5);

        // The split form: the partial sums are the shifted sums of the reference, and their
        // finish gives the fused forward's bits.
        let mut sums = up(be, &vec![0.0; 3 * cols]);
        if let Some(()) = supported("batchnorm_sums", be.batchnorm_sums(&bn, &hb, &mut sums)) {
            let sums_host = down(be, &sums);
            let shift = &h[..cols];
            let e_s1: Vec<f64> = (0..cols)
                .map(|c| (0..rows).map(|i| (h[i * cols + c] - shift[c]) as f64).sum())
                .collect();
            let e_s2: Vec<f64> = (0..cols)
                .map(|c| {
                    (0..rows)
                        .map(|i| ((h[i * cols + c] - shift[c]) as f64).powi(2))
                        .sum()
                })
                .collect();
            assert_eq!(&sums_host[..cols], shift, "BN sums: the shift is row 0");
            assert_close(
                &format!("BN2d Σ(h−shift) {tag}"),
                &sums_host[cols..2 * cols],
                &e_s1,
                1e-4,
                1e-5,
            );
            assert_close(
                &format!("BN2d Σ(h−shift)² {tag}"),
                &sums_host[2 * cols..],
                &e_s2,
                1e-4,
                1e-5,
            );
            let mut running2 = up(be, &running0);
            let (mut stats2, mut a2) = (
                up(be, &vec![0.0; 2 * cols]),
                up(be, &vec![0.0; rows * cols]),
            );
            be.batchnorm_finish(
                &bn,
                rows,
                &sums,
                &pb,
                &mut running2,
                &hb,
                res_arg,
                &mut stats2,
                &mut a2,
            )
            .unwrap();
            assert!(
                down(be, &a2) == a_host,
                "split BN output differs from fused {tag}"
            );
            assert!(
                down(be, &stats2) == down(be, &stats),
                "split BN statistics {tag}"
            );
            assert!(
                down(be, &running2) == run,
                "split BN running statistics {tag}"
            );
        }

        // Backward against the reference's derivation.
        let dout = uniform(&mut r, rows * cols, 1.0);
        let mut grad = up(be, &dout);
        let mut grads = up(be, &vec![0.0; params.len()]);
        let mut dres = up(be, &vec![0.0; rows * cols]);
        let backward = be.batchnorm_backward(
            &bn,
            &pb,
            &hb,
            &a,
            &stats,
            &mut grad,
            &mut grads,
            residual.then_some(&mut dres),
        );
        if supported("batchnorm_backward", backward).is_none() {
            return;
        }
        let (grad, grads, dres) = (down(be, &grad), down(be, &grads), down(be, &dres));
        // The split backward (sums, then finish with local = global) gives the same bits.
        let (dout_b, mut sums) = (up(be, &dout), up(be, &vec![0.0; 2 * cols]));
        let mut dres2 = up(be, &vec![0.0; rows * cols]);
        let split = be.batchnorm_backward_sums(
            &bn,
            &hb,
            &a,
            &stats,
            &dout_b,
            &mut sums,
            residual.then_some(&mut dres2),
        );
        if supported("batchnorm_backward_sums", split).is_some() {
            let (mut grad2, mut grads2) = (up(be, &dout), up(be, &vec![0.0; params.len()]));
            be.batchnorm_backward_finish(
                &bn,
                rows,
                &sums,
                &sums,
                &pb,
                &hb,
                &a,
                &stats,
                &mut grad2,
                &mut grads2,
            )
            .unwrap();
            assert!(down(be, &grad2) == grad, "split BN backward dh {tag}");
            assert!(down(be, &grads2) == grads, "split BN backward dγ, dβ {tag}");
            assert!(down(be, &dres2) == dres, "split BN backward residual {tag}");
            let sums = down(be, &sums);
            let dy = |i: usize| {
                if !relu || e_a[i] > 0.0 {
                    dout[i] as f64
                } else {
                    0.0
                }
            };
            let e_sum_dy: Vec<f64> = (0..cols)
                .map(|c| (0..rows).map(|i| dy(i * cols + c)).sum())
                .collect();
            assert_close(
                &format!("BN2d Σdy {tag}"),
                &sums[..cols],
                &e_sum_dy,
                1e-4,
                1e-5,
            );
        }
        let (dg, db) = grads[OFFSET..].split_at(cols);
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
        assert_close(&format!("BN2d dgamma {tag}"), dg, &e_dg, 1e-3, 1e-4);
        assert_close(&format!("BN2d dbeta {tag}"), db, &e_db, 1e-4, 1e-5);
        if residual {
            assert_close(&format!("BN2d dresidual {tag}"), &dres, &e_dres, 0.0, 0.0);
        }

        // Eval mode: the running statistics normalise, and stay as they are.
        let before = down(be, &running);
        be.batchnorm_forward(
            &bn,
            BnMode::Eval,
            &pb,
            &mut running,
            &hb,
            res_arg,
            &mut stats,
            &mut a,
        )
        .unwrap();
        let (rm0, rv0) = before[OFFSET..].split_at(cols);
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
        assert_close(
            &format!("BN2d eval {tag}"),
            &down(be, &a),
            &e_eval,
            1e-4,
            1e-5,
        );
        assert_eq!(
            down(be, &running),
            before,
            "eval mode must not touch the running statistics"
        );
    }
}
test_device!(
    batchnorm2d_with_residual_should_match_f64_reference_on_tall_inputs,
    batchnorm2d_matches_reference
);

#[test]
fn batchnorm2d_results_should_not_depend_on_the_thread_count() {
    let (rows, cols) = (5000, 9);
    let mut r = rng(77);
    let h = uniform(&mut r, rows * cols, 1.0);
    let bn = bn_layer(rows, cols, true);
    let (params, _) = placed(&[vec![1.0f32; cols], vec![0.0f32; cols]].concat());
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let (running, _) = placed(&[vec![0.0f32; cols], vec![1.0f32; cols]].concat());
            let (mut running, mut stats) = (running, vec![0.0; 2 * cols]);
            let mut a = vec![0.0; rows * cols];
            Cpu.batchnorm_forward(
                &bn,
                BnMode::Train,
                &params,
                &mut running,
                &h,
                None,
                &mut stats,
                &mut a,
            )
            .unwrap();
            let mut sums = vec![0.0; 3 * cols];
            Cpu.batchnorm_sums(&bn, &h, &mut sums).unwrap();
            (a, running, sums)
        })
    };
    assert!(run(1) == run(3), "BatchNorm must reduce in a fixed order");
}

fn maxpool_matches_reference<B: Backend>(be: &B) {
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
    let len = n * oh * ow * c;
    let mut out = up(be, &vec![0.0; len]);
    let mut am = be.indices(len).unwrap();
    let xb = up(be, &x);
    if supported(
        "maxpool_forward",
        be.maxpool_forward(g, n, &xb, &mut out, &mut am),
    )
    .is_none()
    {
        return;
    }
    let out = down(be, &out);
    let mut e_dx = vec![0.0f64; x.len()];
    let dout = uniform(&mut r, len, 1.0);
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
    let mut dx = up(be, &vec![7.0; x.len()]);
    be.maxpool_backward(g, n, &up(be, &dout), &am, &mut dx)
        .unwrap();
    assert_close("maxpool dx", &down(be, &dx), &e_dx, 1e-6, 1e-7);
}
test_device!(
    maxpool_should_match_reference_and_route_gradients_to_the_maximum,
    maxpool_matches_reference
);

fn avgpool_matches_reference<B: Backend>(be: &B) {
    let (n, hw, c) = (3, 5, 4);
    let mut r = rng(4);
    let mut x = uniform(&mut r, n * hw * c, 1.0);
    let forward = |x: &[f32]| -> Option<Vec<f32>> {
        let mut out = up(be, &vec![0.0; n * c]);
        supported(
            "avgpool_forward",
            be.avgpool_forward(n, hw, c, &up(be, x), &mut out),
        )?;
        Some(down(be, &out))
    };
    let Some(out) = forward(&x) else { return };
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
    let mut dx = up(be, &vec![3.0; x.len()]);
    be.avgpool_backward(n, hw, c, &up(be, &wts), &mut dx)
        .unwrap();
    for (k, &g) in down(be, &dx).iter().enumerate() {
        let (p, m) = perturbed(&mut x, k, 1e-2, |x| {
            let o = forward(x).unwrap();
            o.iter()
                .zip(&wts)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>()
        });
        assert!(((p - m) / 2e-2 - g as f64).abs() < 1e-4, "avgpool dx[{k}]");
    }
}
test_device!(
    avgpool_should_match_reference_and_finite_differences,
    avgpool_matches_reference
);

fn linear_matches_reference<B: Backend>(be: &B) {
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
    // The bias before the weight, both behind padding, as no network lays them out.
    let (params, _) = placed(&[b.clone(), w.clone()].concat());
    let l = Linear {
        rows,
        input: k,
        output: n,
        weight: OFFSET + n..OFFSET + n + n * k,
        bias: Some(OFFSET..OFFSET + n),
    };
    let (pb, xb) = (up(be, &params), up(be, &x));
    let mut out = up(be, &vec![0.0; rows * n]);
    be.linear_forward(&l, &pb, &xb, &mut out).unwrap();
    let e: Vec<f64> = (0..rows * n)
        .map(|i| {
            b[i % n] as f64
                + (0..k)
                    .map(|j| x[i / n * k + j] as f64 * w[i % n * k + j] as f64)
                    .sum::<f64>()
        })
        .collect();
    assert_close("linear", &down(be, &out), &e, 1e-5, 1e-6);
    let mut grads = up(be, &vec![0.0; params.len()]);
    let mut dx = up(be, &vec![0.0; rows * k]);
    be.linear_backward(&l, &pb, &xb, &up(be, &wts), &mut grads, Some(&mut dx))
        .unwrap();
    let grads = down(be, &grads);
    assert!(
        grads[..OFFSET].iter().all(|&v| v == 0.0),
        "linear touched other gradients"
    );
    let (db, dw) = grads[OFFSET..].split_at(n);
    let dx = down(be, &dx);
    let eps = 1e-2;
    for (name, grad, v) in [("w", dw, 0usize), ("b", db, 1), ("x", &dx[..], 2)] {
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
test_device!(
    linear_should_match_reference_and_finite_differences,
    linear_matches_reference
);

/// Every transpose and the accumulating mode, against an f64 triple loop; a single output
/// column or row too (the CPU hands a row-major product to `gemm` transposed, except a column).
fn gemm_matches_reference<B: Backend>(be: &B) {
    let mut r = rng(11);
    let shapes = [(5, 7, 9), (5, 1, 9), (1, 7, 9)];
    let modes = [
        (false, false, false),
        (true, false, true),
        (false, true, false),
        (true, true, true),
    ];
    for ((m, n, k), (lhs_t, rhs_t, accumulate)) in shapes
        .into_iter()
        .flat_map(|s| modes.into_iter().map(move |mode| (s, mode)))
    {
        let (a, b, c0) = (
            uniform(&mut r, m * k, 1.0),
            uniform(&mut r, k * n, 1.0),
            uniform(&mut r, m * n, 1.0),
        );
        let at = |i: usize, p: usize| if lhs_t { a[p * m + i] } else { a[i * k + p] } as f64;
        let bt = |p: usize, j: usize| if rhs_t { b[j * k + p] } else { b[p * n + j] } as f64;
        let e: Vec<f64> = (0..m * n)
            .map(|ij| {
                let (i, j) = (ij / n, ij % n);
                let start = if accumulate { c0[ij] as f64 } else { 0.0 };
                start + (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f64>()
            })
            .collect();
        let g = Gemm {
            m,
            n,
            k,
            lhs_t,
            rhs_t,
            accumulate,
        };
        let mut c = up(be, &c0);
        be.matmul(g, &mut c, &up(be, &a), &up(be, &b)).unwrap();
        assert_close(&format!("gemm {g:?}"), &down(be, &c), &e, 1e-5, 1e-6);
    }
}
test_device!(
    gemm_should_match_f64_reference_in_every_transpose,
    gemm_matches_reference
);

/// `copy` writes exactly its range; `add_assign` adds exactly its prefix.
fn copies_touch_exactly_their_ranges<B: Backend>(be: &B) {
    let src = up(be, &[1.0, 2.0, 3.0, 4.0, 5.0]);
    let mut dst = up(be, &[0.0; 6]);
    be.copy(&src, 1..4, &mut dst, 2).unwrap();
    assert_eq!(down(be, &dst), [0.0, 0.0, 2.0, 3.0, 4.0, 0.0]);
    be.add_assign(&mut dst, &src, 3).unwrap();
    assert_eq!(down(be, &dst), [1.0, 2.0, 5.0, 3.0, 4.0, 0.0]);
    be.fill_zero(&mut dst).unwrap();
    assert_eq!(down(be, &dst), [0.0; 6]);
}
test_device!(
    copies_should_touch_exactly_their_ranges,
    copies_touch_exactly_their_ranges
);

/// The augmentation op (`--augment-on gpu`) gives the CPU workers' views, bit for bit: the
/// same drawn views applied by the same `kernels::augment` functions (the GPU has no
/// contraction into FMAs in them, and its divisions and square roots round as the CPU's).
fn augment_gives_the_workers_views<B: Backend>(be: &B) {
    use host::backend::AugmentOp;
    use host::data::augment::{Augmenter, ViewConfig};
    let (n, h, w, size) = (4usize, 21usize, 18usize, 12usize);
    let data = random_images(n, h, w, 21);
    let t_prime = ViewConfig {
        blur: 0.7,
        solarize: 0.6,
        ..ViewConfig::BYOL_T_PRIME
    };
    let aug = Augmenter {
        views: [ViewConfig::BYOL_T, t_prime],
        size,
        mean: [0.45, 0.5, 0.55],
        std: [0.2, 0.22, 0.25],
    };
    let indices = [2usize, 0, 3, 3, 1];
    let px = size * size * 3;
    let mut want = [
        vec![0.0f32; indices.len() * px],
        vec![0.0f32; indices.len() * px],
    ];
    let [w1, w2] = &mut want;
    aug.batch_part(&data, &indices, 0, 5, [w1, w2]);
    let params = aug.batch_params(&data, indices.len(), 0, 5);
    let index: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
    let images = be.upload_images(&data.images).unwrap();
    for (v, p) in params.iter().enumerate() {
        let op = AugmentOp {
            h,
            w,
            size,
            mean: aug.mean,
            std: aug.std,
            index: &index,
            params: p,
        };
        let mut out = be.zeros(indices.len() * px).unwrap();
        be.augment(&op, &images, n, &mut out).unwrap();
        assert_eq!(down(be, &out), want[v], "view {v}");
        // A row naming an image that is not there is an error, not a read out of bounds.
        let bad = [index[0], n as u32];
        let op = AugmentOp {
            index: &bad,
            params: &p[..2],
            ..op
        };
        assert!(be.augment(&op, &images, n, &mut out).is_err());
    }
}
test_device!(augment_on_the_device, augment_gives_the_workers_views);

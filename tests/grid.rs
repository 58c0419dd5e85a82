//! The GPU's thread functions (`kernels::grid`) run on the CPU, thread index by thread index,
//! in the launch sequences the CUDA backend issues (row blocks, then the reductions of
//! `gpu_plan::reduce_launches`; the optimiser's table from `gpu_plan::OptimizerPlan`), against
//! the CPU backend. This checks every index computation of the PTX kernels without a GPU; the
//! device-parametric tests (`tests/layers.rs`) check the launches themselves where one exists.

#[macro_use]
mod common;

use common::*;
use host::backend::gpu_plan::{reduce_launches, OptimizerPlan};
use host::backend::{
    BatchNorm, ConvGeometry, Optimizer, OptimizerKind, OptimizerState, Simplicial, TensorStep,
};
use host::{Backend, BnMode, Cpu};
use kernels::grid::{self, row_blocks, TensorRow, GPU_REDUCE_GROUP};
use std::ptr::{null, null_mut};

/// Runs `f` for every thread index of a launch of `threads` threads.
fn launch(threads: usize, mut f: impl FnMut(usize)) {
    (0..threads).for_each(&mut f);
}

/// The row sums `[k, blocks, cols]` reduced to `[k, cols]`, as the backend's launches do.
fn reduce(partial: &[f32], k: usize, blocks: usize, cols: usize) -> Vec<f32> {
    let mut cur = partial.to_vec();
    for b in reduce_launches(blocks) {
        let groups = b.div_ceil(GPU_REDUCE_GROUP);
        let mut out = vec![f32::NAN; k * groups * cols];
        launch(k * groups * cols, |i| unsafe {
            grid::reduce_blocks(i, cur.as_ptr(), b, cols, out.as_mut_ptr())
        });
        cur = out;
    }
    assert_eq!(cur.len(), k * cols, "the last launch leaves one block");
    cur
}

fn layer(rows: usize, cols: usize, relu: bool, bias: bool) -> BatchNorm {
    BatchNorm {
        rows,
        cols,
        relu,
        gamma: cols..2 * cols,
        beta: 2 * cols..3 * cols,
        running_mean: 0..cols,
        running_var: cols..2 * cols,
        linear_bias: bias.then_some(0..cols),
    }
}

/// Forward (train and eval) and backward of BatchNorm through the grid functions against the
/// CPU backend, on shapes with one, several and more than a reduction group of row blocks.
#[test]
fn batchnorm_thread_functions_match_the_cpu_backend() {
    let cpu = Cpu;
    for (rows, cols, residual, relu) in [
        (2usize, 3usize, false, true),
        (130, 5, true, true),
        (5000, 3, false, false),
        (64 * 64 * 2 + 7, 2, true, true),
    ] {
        let tag = format!("{rows}x{cols} residual {residual} relu {relu}");
        let mut r = rng(rows as u64 + 11);
        let h: Vec<f32> = uniform(&mut r, rows * cols, 2.0)
            .iter()
            .map(|v| v + 3.0)
            .collect();
        let res = uniform(&mut r, rows * cols, 1.0);
        // [a Linear's bias, γ, β]: the bias's slot only receives its gradient.
        let params: Vec<f32> = [
            vec![0.0; cols],
            uniform(&mut r, cols, 0.5),
            uniform(&mut r, cols, 0.3),
        ]
        .concat();
        let running0: Vec<f32> = [vec![0.1f32; cols], vec![1.5f32; cols]].concat();
        let dy = uniform(&mut r, rows * cols, 1.0);
        let bn = layer(rows, cols, relu, true);

        // CPU backend.
        let (mut running, mut stats, mut a) = (
            running0.clone(),
            vec![0.0; 2 * cols],
            vec![0.0; rows * cols],
        );
        let res_arg = residual.then_some(&res);
        cpu.batchnorm_forward(
            &bn,
            BnMode::Train,
            &params,
            &mut running,
            &h,
            res_arg,
            &mut stats,
            &mut a,
        )
        .unwrap();
        let (mut grad, mut grads, mut res_grad) =
            (dy.clone(), vec![0.5f32; 3 * cols], vec![0.0; rows * cols]);
        cpu.batchnorm_backward(
            &bn,
            &params,
            &h,
            &a,
            &stats,
            &mut grad,
            &mut grads,
            residual.then_some(&mut res_grad),
        )
        .unwrap();

        // The GPU's launches, emulated.
        let blocks = row_blocks(rows);
        let mut partial = vec![f32::NAN; 2 * blocks * cols];
        launch(blocks * cols, |i| unsafe {
            grid::bn_sums_partial(i, h.as_ptr(), rows, cols, partial.as_mut_ptr())
        });
        let sums = [&h[..cols], &reduce(&partial, 2, blocks, cols)[..]].concat();
        let (mut g_running, mut g_stats, mut fold) = (
            running0.clone(),
            vec![0.0f32; 2 * cols],
            vec![0.0f32; 2 * cols],
        );
        let (gamma, beta) = (params[cols..].as_ptr(), params[2 * cols..].as_ptr());
        let rm = g_running.as_mut_ptr();
        launch(cols, |c| unsafe {
            grid::bn_finish(
                c,
                cols,
                rows,
                sums.as_ptr(),
                gamma,
                beta,
                rm,
                rm.add(cols),
                g_stats.as_mut_ptr(),
                fold.as_mut_ptr(),
            )
        });
        let mut g_a = vec![f32::NAN; rows * cols];
        let res_ptr = if residual { res.as_ptr() } else { null() };
        // The normalising launch, shared by the training and the evaluation forward.
        let normalise = |fold: &[f32], a: &mut [f32]| {
            launch(rows * cols, |i| unsafe {
                grid::bn_normalise(
                    i,
                    cols,
                    h.as_ptr(),
                    res_ptr,
                    relu,
                    fold.as_ptr(),
                    a.as_mut_ptr(),
                )
            })
        };
        normalise(&fold, &mut g_a);
        assert_close(&format!("forward {tag}"), &g_a, &to_f64(&a), 1e-5, 1e-6);
        assert_close(
            &format!("stats {tag}"),
            &g_stats,
            &to_f64(&stats),
            1e-5,
            1e-6,
        );
        assert_close(
            &format!("running {tag}"),
            &g_running,
            &to_f64(&running),
            1e-5,
            1e-6,
        );

        let mut partial = vec![f32::NAN; 2 * blocks * cols];
        let mut g_res_grad = vec![f32::NAN; rows * cols];
        let rg = if residual {
            g_res_grad.as_mut_ptr()
        } else {
            null_mut()
        };
        launch(blocks * cols, |i| unsafe {
            grid::bn_backward_partial(
                i,
                rows,
                cols,
                h.as_ptr(),
                a.as_ptr(),
                dy.as_ptr(),
                relu,
                stats.as_ptr(),
                partial.as_mut_ptr(),
                rg,
            )
        });
        let local = reduce(&partial, 2, blocks, cols);
        let (mut g_grad, mut partial_dh) = (dy.clone(), vec![f32::NAN; blocks * cols]);
        launch(blocks * cols, |i| unsafe {
            grid::bn_backward_apply(
                i,
                rows,
                cols,
                rows,
                h.as_ptr(),
                a.as_ptr(),
                g_grad.as_mut_ptr(),
                relu,
                gamma,
                stats.as_ptr(),
                local.as_ptr(),
                partial_dh.as_mut_ptr(),
            )
        });
        let sum_dh = reduce(&partial_dh, 1, blocks, cols);
        let mut g_grads = vec![0.5f32; 3 * cols];
        let gp = g_grads.as_mut_ptr();
        launch(cols, |c| unsafe {
            grid::bn_finish_grads(
                c,
                cols,
                local.as_ptr(),
                sum_dh.as_ptr(),
                gp.add(cols),
                gp.add(2 * cols),
                gp,
            )
        });
        assert_close(&format!("∂h {tag}"), &g_grad, &to_f64(&grad), 1e-4, 1e-5);
        assert_close(
            &format!("∂γ ∂β ∂bias {tag}"),
            &g_grads,
            &to_f64(&grads),
            1e-4,
            1e-4,
        );
        if residual {
            assert_eq!(g_res_grad, res_grad, "residual gradient {tag}");
        }

        // Evaluation mode gives the CPU's bits.
        let mut e_a = vec![0.0; rows * cols];
        let (mut run2, mut st2) = (running.clone(), vec![0.0; 2 * cols]);
        cpu.batchnorm_forward(
            &bn,
            BnMode::Eval,
            &params,
            &mut run2,
            &h,
            res_arg,
            &mut st2,
            &mut e_a,
        )
        .unwrap();
        launch(cols, |c| unsafe {
            grid::bn_fold_eval(
                c,
                cols,
                gamma,
                beta,
                running.as_ptr(),
                running[cols..].as_ptr(),
                fold.as_mut_ptr(),
            )
        });
        normalise(&fold, &mut g_a);
        assert_eq!(g_a, e_a, "eval forward {tag}");
    }
}

/// Max-pool and average pool, forward and backward: the CPU backend's bits.
#[test]
fn pooling_thread_functions_match_the_cpu_backend() {
    let cpu = Cpu;
    for (n, h, w, c, k, stride, pad) in [
        (2usize, 9usize, 7usize, 5usize, 3usize, 2usize, 1usize),
        (1, 8, 8, 3, 2, 2, 0),
        (3, 5, 6, 2, 3, 1, 1),
    ] {
        let g = ConvGeometry {
            h,
            w,
            cin: c,
            k,
            stride,
            pad,
        };
        let (oh, ow) = (g.out_h(), g.out_w());
        let mut r = rng((n * h * w * c) as u64);
        // Ties (a coarse grid of values) exercise the first-maximum rule.
        let x: Vec<f32> = uniform(&mut r, n * h * w * c, 1.0)
            .iter()
            .map(|v| (v * 4.0).round())
            .collect();
        let (mut out, mut am) = (
            vec![0.0; n * oh * ow * c],
            cpu.indices(n * oh * ow * c).unwrap(),
        );
        cpu.maxpool_forward(g, n, &x, &mut out, &mut am).unwrap();
        let (mut g_out, mut g_am) = (vec![f32::NAN; out.len()], vec![u32::MAX; out.len()]);
        launch(n * oh * ow, |i| unsafe {
            grid::maxpool_forward(i, g, n, x.as_ptr(), g_out.as_mut_ptr(), g_am.as_mut_ptr())
        });
        assert_eq!(g_out, out);
        assert_eq!(g_am, am);
        let dout = uniform(&mut r, out.len(), 1.0);
        let mut dx = vec![0.0; x.len()];
        cpu.maxpool_backward(g, n, &dout, &am, &mut dx).unwrap();
        let mut g_dx = vec![f32::NAN; x.len()];
        launch(x.len(), |i| unsafe {
            grid::maxpool_backward(i, g, dout.as_ptr(), g_am.as_ptr(), g_dx.as_mut_ptr())
        });
        assert_eq!(
            g_dx, dx,
            "maxpool backward {n}x{h}x{w}x{c} k{k} s{stride} p{pad}"
        );

        let hw = h * w;
        let mut avg = vec![0.0; n * c];
        cpu.avgpool_forward(n, hw, c, &x, &mut avg).unwrap();
        let mut g_avg = vec![f32::NAN; n * c];
        launch(n * c, |i| unsafe {
            grid::avgpool_forward(i, hw, c, x.as_ptr(), g_avg.as_mut_ptr())
        });
        assert_eq!(g_avg, avg);
        let dpool = uniform(&mut r, n * c, 1.0);
        let mut dxa = vec![0.0; x.len()];
        cpu.avgpool_backward(n, hw, c, &dpool, &mut dxa).unwrap();
        let mut g_dxa = vec![f32::NAN; x.len()];
        launch(x.len(), |i| unsafe {
            grid::avgpool_backward(i, hw, c, dpool.as_ptr(), g_dxa.as_mut_ptr())
        });
        assert_eq!(g_dxa, dxa);
    }
}

/// The simplicial embedding's thread function (one group per thread), forward and backward,
/// equals the CPU backend bit for bit: the same kernel on the same group.
#[test]
fn simplicial_thread_function_matches_the_cpu_backend() {
    let cpu = Cpu;
    let op = Simplicial {
        rows: 5,
        cols: 24,
        group: 8,
        temperature: 0.1,
    };
    let (len, groups, inv_t) = (5 * 24, op.groups(), 1.0 / op.temperature);
    let mut r = rng(9);
    let (z, ds) = (uniform(&mut r, len, 3.0), uniform(&mut r, len, 1.0));
    let mut s = vec![0.0; len];
    cpu.simplicial_forward(&op, &z, &mut s).unwrap();
    let mut g_s = vec![f32::NAN; len];
    launch(groups, |i| unsafe {
        let forward = kernels::simplicial::softmax_group_forward;
        grid::simplicial_group(i, op.group, inv_t, z.as_ptr(), g_s.as_mut_ptr(), forward)
    });
    assert_eq!(g_s, s);
    let mut dz = ds.clone();
    cpu.simplicial_backward(&op, &s, &mut dz).unwrap();
    let mut g_dz = ds;
    launch(groups, |i| unsafe {
        let backward = kernels::simplicial::softmax_group_backward;
        grid::simplicial_group(i, op.group, inv_t, s.as_ptr(), g_dz.as_mut_ptr(), backward)
    });
    assert_eq!(g_dz, dz);
}

/// LARS (clipped and not), SGD and AdamW through the plan and the thread functions, three
/// steps, against the CPU backend.
#[test]
fn optimizer_thread_functions_match_the_cpu_backend() {
    let cpu = Cpu;
    let lars = |clip| OptimizerKind::Lars {
        trust_coefficient: 0.02,
        clip,
    };
    // A tensor longer than a norm chunk, a plain one, an ordinary one with a learning-rate
    // multiplier.
    let tensors = vec![
        TensorStep {
            range: 0..5003,
            plain: false,
            lr_scale: 1.0,
        },
        TensorStep {
            range: 5003..5010,
            plain: true,
            lr_scale: 1.0,
        },
        TensorStep {
            range: 5010..5300,
            plain: false,
            lr_scale: 10.0,
        },
    ];
    let len = 5300;
    for kind in [
        lars(false),
        lars(true),
        OptimizerKind::Sgd,
        OptimizerKind::AdamW,
    ] {
        let opt = Optimizer {
            kind,
            momentum: 0.9,
            weight_decay: 1e-4,
        };
        let mut r = rng(5);
        let w0 = uniform(&mut r, len, 1.0);
        let (mut w, mut m, mut v) = (w0.clone(), vec![0.0f32; len], vec![0.0f32; len]);
        let (mut gw, mut gm, mut gv) = (w0.clone(), vec![0.0f32; len], vec![0.0f32; len]);
        for t in 1..=3u64 {
            let grads = uniform(&mut r, len, 0.1);
            let lr = 0.3 * t as f32;
            let mut second = if opt.needs_second_moment() {
                v.clone()
            } else {
                vec![]
            };
            cpu.optimizer_step(
                &opt,
                &tensors,
                OptimizerState {
                    params: &mut w,
                    momentum: &mut m,
                    second_moment: &mut second,
                },
                &grads,
                t,
                lr,
            )
            .unwrap();
            if opt.needs_second_moment() {
                v = second;
            }

            let mut plan = OptimizerPlan::new(&opt, &tensors, t, lr);
            let table: &mut [TensorRow] = &mut plan.rows;
            if let Some((eta, clip)) = plan.lars {
                let chunks = plan.chunk_tensor.len();
                let mut partial = vec![f64::NAN; 2 * chunks];
                launch(chunks, |i| unsafe {
                    grid::lars_square_sums(
                        i,
                        chunks,
                        plan.chunk_tensor.as_ptr(),
                        table.as_ptr(),
                        gw.as_ptr(),
                        grads.as_ptr(),
                        partial.as_mut_ptr(),
                    )
                });
                let tp = table.as_mut_ptr();
                launch(tensors.len(), |k| unsafe {
                    grid::lars_trust(k, tp, chunks, partial.as_ptr(), eta, clip)
                });
            }
            let (wp, mp, vp) = (gw.as_mut_ptr(), gm.as_mut_ptr(), gv.as_mut_ptr());
            launch(len, |i| unsafe {
                grid::optimizer_update(
                    i,
                    table.as_ptr(),
                    tensors.len(),
                    wp,
                    grads.as_ptr(),
                    mp,
                    vp,
                    opt.momentum,
                    plan.adam_bc2_sqrt,
                    plan.adam,
                )
            });
            let tag = format!("{kind:?} step {t}");
            assert_close(&format!("params {tag}"), &gw, &to_f64(&w), 1e-6, 1e-7);
            assert_close(&format!("momentum {tag}"), &gm, &to_f64(&m), 1e-5, 1e-6);
        }
    }
}

/// bf16 conversions against the `half` crate's (round to nearest, ties to even) on random bit
/// patterns and the special values; NaN stays NaN; back to f32 is exact, and accumulates.
#[test]
fn bf16_conversions_round_to_nearest_even() {
    use kernels::precision::{bf16_to_f32, f32_to_bf16};
    let mut r = rng(3);
    let specials = [
        0.0f32,
        -0.0,
        1.0,
        -1.5,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-40,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    let values: Vec<f32> = specials
        .into_iter()
        .chain((0..100_000).map(|_| f32::from_bits(rand::Rng::random::<u32>(&mut r))))
        // Exact ties: the bits below bf16's last place are exactly half of it.
        .chain((0..1000u32).map(|k| f32::from_bits((k << 17) | 0x8000 | 0x3f80_0000)))
        .collect();
    let mut bits = vec![0u16; values.len()];
    launch(values.len(), |i| unsafe {
        grid::convert_to_bf16(i, values.as_ptr(), bits.as_mut_ptr())
    });
    for (&x, &b) in values.iter().zip(&bits) {
        if x.is_nan() {
            assert!(bf16_to_f32(b).is_nan(), "{x:?} must stay NaN");
        } else {
            assert_eq!(
                b,
                half::bf16::from_f32(x).to_bits(),
                "{x:e} ({:#010x})",
                x.to_bits()
            );
            assert_eq!(f32_to_bf16(bf16_to_f32(b)), b, "bf16 → f32 → bf16 is exact");
        }
    }
    let mut acc = vec![1.0f32; values.len()];
    let finite: Vec<u16> = bits
        .iter()
        .map(|&b| if bf16_to_f32(b).is_finite() { b } else { 0 })
        .collect();
    launch(values.len(), |i| unsafe {
        grid::convert_from_bf16(i, finite.as_ptr(), acc.as_mut_ptr(), true)
    });
    for (a, &b) in acc.iter().zip(&finite) {
        assert_eq!(*a, 1.0 + bf16_to_f32(b));
    }
}

/// The GPU's augmentation (`--augment-on gpu`), its launches run on the CPU, gives the CPU
/// workers' views bit for bit: BYOL's T and T′ with blur and solarisation, on a colour data set
/// whose images are not square.
#[test]
fn augmentation_thread_functions_give_the_cpu_views() {
    use host::data::augment::{Augmenter, ViewConfig};
    let (n, h, w, size) = (5usize, 20usize, 27usize, 16usize);
    let data = random_images(n, h, w, 8);
    let aug = Augmenter {
        views: [
            ViewConfig::BYOL_T,
            ViewConfig {
                solarize: 0.7,
                blur: 0.6,
                ..ViewConfig::BYOL_T_PRIME
            },
        ],
        size,
        mean: [0.4, 0.5, 0.6],
        std: [0.2, 0.25, 0.3],
    };
    let indices = [3usize, 0, 4, 4, 1, 2, 0];
    let (b, px) = (indices.len(), size * size * 3);
    let mut cpu = [vec![0.0f32; b * px], vec![0.0f32; b * px]];
    let [c1, c2] = &mut cpu;
    aug.batch_part(&data, &indices, 2, 77, [c1, c2]);
    let params = aug.batch_params(&data, b, 2, 77);
    let index: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
    for (v, p) in params.iter().enumerate() {
        let (pp, ip) = (p.as_ptr(), index.as_ptr());
        let mut out = vec![f32::NAN; b * px];
        let mut tmp = vec![f32::NAN; b * px];
        let mut means = vec![0.0f32; b];
        launch(b * px, |i| unsafe {
            grid::augment_resize(
                i,
                pp,
                data.images.as_ptr(),
                ip,
                h,
                w,
                size,
                out.as_mut_ptr(),
            )
        });
        for stage in 0..4 {
            launch(b, |m| unsafe {
                grid::augment_mean_gray(m, pp, stage, size, out.as_ptr(), means.as_mut_ptr())
            });
            launch(b * size * size, |i| unsafe {
                grid::augment_jitter(i, pp, stage, size, means.as_ptr(), out.as_mut_ptr())
            });
        }
        launch(b * size * size, |i| unsafe {
            grid::augment_grayscale(i, pp, size, out.as_mut_ptr())
        });
        launch(b * px, |i| unsafe {
            grid::augment_blur(i, pp, size, out.as_ptr(), tmp.as_mut_ptr(), true)
        });
        launch(b * px, |i| unsafe {
            grid::augment_blur(i, pp, size, tmp.as_ptr(), out.as_mut_ptr(), false)
        });
        launch(b * px, |i| unsafe {
            grid::augment_finish(i, pp, size, aug.mean, aug.std, out.as_mut_ptr())
        });
        let blurred = p.iter().filter(|q| q.blur_len > 0).count();
        let jittered = p.iter().filter(|q| q.jitter != 0).count();
        assert!(
            blurred > 0 && jittered > 0,
            "view {v}: the batch exercises blur and jitter"
        );
        assert_eq!(out, cpu[v], "view {v}");
    }
}

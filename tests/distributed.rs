//! Data-parallel training without MPI: ranks as threads of this process
//! (`host::dist::threads::InProcess`), each with the data-parallel backend over the CPU.
//! Cross-replica BatchNorm against a full-batch f64 reference, and whole BYOL steps on 2 and 3
//! ranks against one process on the same global batch. The same runs across processes, under
//! `mpirun`, are `host/tests/mpi.rs`.

#[macro_use]
mod common;

use common::*;
use host::backend::distributed::Distributed;
use host::backend::BatchNorm;
use host::byol::Byol;
use host::dist::threads::InProcess;
use host::dist::Collective;
use host::nn::mlp::SimplicialEmbedding;
use host::nn::Stem;
use host::{Backend, BnMode, Cpu};
use std::sync::Arc;

/// Runs `f(rank's backend)` on `world` threads, one per rank; results in rank order.
fn on_ranks<T: Send>(world: usize, f: impl Fn(&Distributed<Cpu>) -> T + Sync) -> Vec<T> {
    let handles = InProcess::world(world);
    std::thread::scope(|scope| {
        let f = &f;
        let threads: Vec<_> = handles
            .into_iter()
            .map(|h| {
                scope.spawn(move || {
                    let c: Arc<dyn Collective> = Arc::new(h);
                    f(&Distributed::new(Cpu, c, true))
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

/// BatchNorm over `[rows, cols]` split by rows into `world` equal shards: the forward
/// normalises with the statistics of all rows and every rank gets the same running
/// statistics; the backward's ∂L/∂h is the full batch's, and the ranks' γ, β gradients add up
/// to the full batch's. All against f64 written out here.
#[test]
fn cross_replica_batchnorm_should_equal_the_full_batch_f64_reference() {
    for world in [2usize, 3] {
        let (rows, cols) = (7 * world, 5); // 7 rows per rank: an odd shard
        let mut r = rng(world as u64);
        let h: Vec<f32> = uniform(&mut r, rows * cols, 1.0)
            .iter()
            .map(|v| v + 2.0)
            .collect();
        let res = uniform(&mut r, rows * cols, 1.0);
        let dout = uniform(&mut r, rows * cols, 1.0);
        let gamma: Vec<f32> = uniform(&mut r, cols, 0.5).iter().map(|v| v + 1.0).collect();
        let beta = uniform(&mut r, cols, 0.3);
        let params = [gamma.clone(), beta.clone()].concat();
        let shard = rows / world;
        let bn = BatchNorm {
            rows: shard,
            cols,
            relu: true,
            gamma: 0..cols,
            beta: cols..2 * cols,
            running_mean: 0..cols,
            running_var: cols..2 * cols,
            linear_bias: None,
        };
        let results = on_ranks(world, |be| {
            let k = be.collective.rank();
            let part = |v: &[f32]| v[k * shard * cols..(k + 1) * shard * cols].to_vec();
            let (hk, resk) = (part(&h), part(&res));
            let mut running = [vec![0.0f32; cols], vec![1.0f32; cols]].concat();
            let (mut stats, mut a) = (vec![0.0; 2 * cols], vec![0.0; shard * cols]);
            be.batchnorm_forward(
                &bn,
                BnMode::Train,
                &params,
                &mut running,
                &hk,
                Some(&resk),
                &mut stats,
                &mut a,
            )
            .unwrap();
            let mut grad = part(&dout);
            let (mut grads, mut dres) = (vec![0.0; 2 * cols], vec![0.0; shard * cols]);
            be.batchnorm_backward(
                &bn,
                &params,
                &hk,
                &a,
                &stats,
                &mut grad,
                &mut grads,
                Some(&mut dres),
            )
            .unwrap();
            (a, running, grad, grads)
        });
        // Reference over all rows, f64.
        let n = rows as f64;
        let mean: Vec<f64> = (0..cols)
            .map(|c| (0..rows).map(|i| h[i * cols + c] as f64).sum::<f64>() / n)
            .collect();
        let var: Vec<f64> = (0..cols)
            .map(|c| {
                (0..rows)
                    .map(|i| (h[i * cols + c] as f64 - mean[c]).powi(2))
                    .sum::<f64>()
                    / n
            })
            .collect();
        let xhat = |i: usize, c: usize| (h[i * cols + c] as f64 - mean[c]) / (var[c] + 1e-5).sqrt();
        let out = |i: usize, c: usize| {
            (gamma[c] as f64 * xhat(i, c) + beta[c] as f64 + res[i * cols + c] as f64).max(0.0)
        };
        let e_a: Vec<f64> = (0..rows * cols).map(|i| out(i / cols, i % cols)).collect();
        let dy = |i: usize, c: usize| {
            if out(i, c) > 0.0 {
                dout[i * cols + c] as f64
            } else {
                0.0
            }
        };
        let sum_dy: Vec<f64> = (0..cols)
            .map(|c| (0..rows).map(|i| dy(i, c)).sum())
            .collect();
        let sum_dy_xhat: Vec<f64> = (0..cols)
            .map(|c| (0..rows).map(|i| dy(i, c) * xhat(i, c)).sum())
            .collect();
        let e_dh: Vec<f64> = (0..rows * cols)
            .map(|i| {
                let (i, c) = (i / cols, i % cols);
                let invstd = 1.0 / (var[c] + 1e-5).sqrt();
                gamma[c] as f64 * invstd / n
                    * (n * dy(i, c) - sum_dy[c] - xhat(i, c) * sum_dy_xhat[c])
            })
            .collect();
        let e_running: Vec<f64> = (0..cols)
            .map(|c| 0.1 * mean[c])
            .chain((0..cols).map(|c| 0.9 + 0.1 * var[c] * n / (n - 1.0)))
            .collect();
        let tag = format!("{world} ranks");
        let a: Vec<f32> = results.iter().flat_map(|r| r.0.clone()).collect();
        assert_close(
            &format!("cross-replica BN output, {tag}"),
            &a,
            &e_a,
            1e-4,
            1e-5,
        );
        for r in &results {
            assert_eq!(
                r.1, results[0].1,
                "running statistics differ between ranks ({tag})"
            );
        }
        assert_close(
            &format!("running statistics, {tag}"),
            &results[0].1,
            &e_running,
            1e-5,
            1e-6,
        );
        let dh: Vec<f32> = results.iter().flat_map(|r| r.2.clone()).collect();
        assert_close(
            &format!("cross-replica BN ∂L/∂h, {tag}"),
            &dh,
            &e_dh,
            1e-3,
            1e-4,
        );
        let grads: Vec<f32> = (0..2 * cols)
            .map(|j| results.iter().map(|r| r.3[j]).sum())
            .collect();
        let e_grads: Vec<f64> = sum_dy_xhat.iter().chain(&sum_dy).copied().collect();
        assert_close(
            &format!("Σ over ranks of ∂L/∂γ, ∂L/∂β, {tag}"),
            &grads,
            &e_grads,
            1e-4,
            1e-5,
        );
    }
}

/// Three steps' losses, then the online parameters and running statistics.
type Run = (Vec<f32>, Vec<f32>, Vec<f32>);

/// Three BYOL steps on `backend` with the rows `rows` of the global views (8×8 images).
fn three_steps<B: Backend>(backend: B, views: &[Vec<f32>], rows: std::ops::Range<usize>) -> Run {
    steps_of(tiny_byol(Stem::Cifar), 3, backend, views, rows)
}

/// [`three_steps`], but `steps` steps of the networks `config`.
fn steps_of<B: Backend>(
    config: host::byol::ByolConfig,
    steps: usize,
    backend: B,
    views: &[Vec<f32>],
    rows: std::ops::Range<usize>,
) -> Run {
    let byol = Byol::on(backend, config).unwrap();
    let px = 8 * 8 * 3;
    let part = |v: &[f32]| -> Vec<f32> { v[rows.start * px..rows.end * px].to_vec() };
    let (v1, v2) = (part(&views[0]), part(&views[1]));
    let (losses, s, _) = byol_steps(&byol, &byol.init(7), [&v1, &v2], 8, steps);
    (losses, s.online, s.online_running)
}

/// N ranks on shards of a global batch equal one process on the whole batch: the same
/// losses (the ranks' mean), parameters and running statistics after three steps, up to
/// rounding, and every rank holds the same bits. Only the order and precision of sums
/// differ: BatchNorm statistics come from f64 sums over the ranks where one process sums in
/// f32 over its n = 768 rows per channel (error up to n·ε ≈ 5e-5 relative), and gradients
/// from per-rank sums averaged instead of one sum. Measured: 1e-5 in the gradients of one
/// step, also with the batch duplicated on both ranks (where the backward is the same
/// arithmetic and only the forward's statistics differ); after three steps at lr 0.2
/// (BatchNorm's γ and β take plain SGD steps, which amplify) 6e-5 in the parameters from one
/// process, while 2, 3 and 4 ranks, all with f64 statistics, agreed within 7e-6 on the machine
/// this was written on. On an AMD EPYC (2026-11-30; same code) 3 ranks land 6.3e-5 from one
/// process and 6.5e-5 from 2 ranks: the rank counts differ in their per-rank sums too, whose
/// order the matrix kernels pick by CPU. Hence 1e-4 from one process and between rank counts;
/// per-replica BatchNorm, a different computation, lands 1000× further. (Tiny networks are
/// badly conditioned: with the `small` recipe's LARS, a width-4 encoder's gradients move 1e-2
/// for a 1e-5 perturbation of its parameters after two steps, so longer comparisons measure
/// that, not the data-parallel arithmetic.)
#[test]
fn a_data_parallel_step_should_equal_one_process_on_the_global_batch() {
    let batch = 12;
    let mut r = rng(5);
    let views: Vec<Vec<f32>> = (0..2)
        .map(|_| uniform(&mut r, batch * 8 * 8 * 3, 1.0))
        .collect();
    let (losses, online, running) = three_steps(Cpu, &views, 0..batch);
    let mut two_ranks = Vec::new();
    for world in [2usize, 3] {
        let shard = batch / world;
        let runs = on_ranks(world, |be| {
            let k = be.collective.rank();
            let be = Distributed::new(Cpu, be.collective.clone(), true);
            three_steps(be, &views, k * shard..(k + 1) * shard)
        });
        for run in &runs[1..] {
            assert!(
                run.1 == runs[0].1,
                "{world} ranks: parameters differ between ranks"
            );
            assert!(
                run.2 == runs[0].2,
                "{world} ranks: running statistics differ between ranks"
            );
        }
        for (step, &want) in losses.iter().enumerate() {
            let mean = runs.iter().map(|r| r.0[step] as f64).sum::<f64>() / world as f64;
            let want = want as f64;
            assert!(
                (mean - want).abs() < 1e-4 * want.abs(),
                "{world} ranks, step {step}: loss {mean} vs {want}"
            );
        }
        let (dp, dr) = (
            relative(&runs[0].1, &online),
            relative(&runs[0].2, &running),
        );
        println!(
            "{world} ranks: parameters {dp:.1e}, running statistics {dr:.1e} from one process"
        );
        assert!(dp < 1e-4, "{world} ranks: parameters differ by {dp:.1e}");
        assert!(
            dr < 1e-4,
            "{world} ranks: running statistics differ by {dr:.1e}"
        );
        if world == 3 {
            let between = relative(&runs[0].1, &two_ranks);
            println!("3 ranks: parameters {between:.1e} from 2 ranks");
            assert!(between < 1e-4, "2 and 3 ranks differ by {between:.1e}");
        }
        two_ranks = runs[0].1.clone();
        // Per-replica BatchNorm (the ablation) is a different computation: far from it.
        let per_replica = on_ranks(world, |be| {
            let k = be.collective.rank();
            let be = Distributed::new(Cpu, be.collective.clone(), false);
            three_steps(be, &views, k * shard..(k + 1) * shard)
        });
        let far = relative(&per_replica[0].1, &online);
        println!("{world} ranks, per-replica BatchNorm: parameters {far:.1e} from one process");
        assert!(
            far > 1e-2,
            "{world} ranks: per-replica BatchNorm should differ, {far:.1e}"
        );
    }
}

/// The simplicial embedding's BatchNorm is cross-replica too: 2 ranks on halves of the batch
/// equal one process (its softmax, row by row, needs nothing shared); per-replica BatchNorm is
/// again far from it. One step, not three: the embedding makes these tiny networks far worse
/// conditioned. Its groups' softmax outputs sum to 1, so the next Linear's outputs share a
/// large common part that its BatchNorm subtracts, which magnifies the rounding of the ranks'
/// other order of sums. Measured (2026-12-02): after one step 5.7e-6 from one process at
/// T = 0.1 (3.4e-7 without the embedding); after three, 9.1e-2 at T = 0.1, 4.1e-3 at T = 1
/// and 1.4e-3 at T = 10, against 4.4e-6 without it.
#[test]
fn a_data_parallel_step_with_a_simplicial_embedding_should_equal_one_process() {
    let config = host::byol::ByolConfig {
        projector_embedding: Some(SimplicialEmbedding {
            groups: 4,
            group: 4,
            temperature: 0.1,
        }),
        ..tiny_byol(Stem::Cifar)
    };
    let batch = 12;
    let mut r = rng(6);
    let views: Vec<Vec<f32>> = (0..2)
        .map(|_| uniform(&mut r, batch * 8 * 8 * 3, 1.0))
        .collect();
    let (_, online, running) = steps_of(config, 1, Cpu, &views, 0..batch);
    for cross_replica in [true, false] {
        let runs = on_ranks(2, |be| {
            let k = be.collective.rank();
            let be = Distributed::new(Cpu, be.collective.clone(), cross_replica);
            steps_of(config, 1, be, &views, k * 6..(k + 1) * 6)
        });
        let (dp, dr) = (
            relative(&runs[0].1, &online),
            relative(&runs[0].2, &running),
        );
        println!("cross-replica {cross_replica}: parameters {dp:.1e}, running statistics {dr:.1e}");
        if cross_replica {
            assert!(dp < 1e-4 && dr < 1e-4, "{dp:.1e}, {dr:.1e}");
        } else {
            assert!(dp > 1e-2, "per-replica BatchNorm should differ, {dp:.1e}");
        }
    }
}

/// The collectives themselves: sums in rank order, rank 0's broadcast, agreement.
#[test]
fn in_process_collectives_should_sum_broadcast_and_agree() {
    let out = on_ranks(3, |be| {
        let c = &be.collective;
        let k = c.rank() as f32;
        let mut v = vec![k, 10.0 * k];
        c.all_reduce_f32(&mut v).unwrap();
        let mut w = vec![k + 1.0; 3];
        c.broadcast_f32(&mut w).unwrap();
        let same = c.agree(42).unwrap();
        let differ = c.agree(if c.rank() == 2 { 7 } else { 42 }).unwrap();
        (v, w, same, differ)
    });
    for (v, w, same, differ) in out {
        assert_eq!(v, [3.0, 30.0]);
        assert_eq!(w, [1.0; 3]);
        assert!(same && !differ);
    }
}

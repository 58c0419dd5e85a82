//! The training run: data, augmentation on a prefetch thread, the BYOL step with its
//! schedules, the kNN monitor after every epoch, metrics (JSONL), checkpoints and resuming.
//!
//! Files in the output folder: `metrics.jsonl` (one record per step and per epoch),
//! `checkpoint.safetensors` (after every epoch, written atomically), `config.json`, and at
//! the end `training.png` (loss, kNN accuracy, lr and τ). `host eval` adds `evaluations.jsonl`,
//! which a new run into the folder removes with the rest of the run it replaces.
//! A run is a pure function of its configuration: the seed fixes initialisation, data order
//! and augmentations, so with the same thread count two runs are bit-identical, and a run
//! resumed from an epoch's checkpoint continues exactly as the uninterrupted one.

use crate::backend::cpu::Cpu;
use crate::backend::distributed::Distributed;
use crate::backend::{AugmentOp, Backend, Device, Precision};
use crate::byol::schedule::{learning_rate, tau_to};
use crate::byol::{Byol, ByolState, LrMultipliers};
use crate::checkpoint;
use crate::config::{
    same_run, saved_config, TrainConfig, CHECKPOINT, DATASETS, EVALUATIONS, METRICS, PLOT,
    RUN_CONFIG,
};
use crate::data::augment::{mix, Augmenter};
use crate::data::formats::{self, UNLABELED};
use crate::data::{synthetic, Dataset};
use crate::dist::{bits, checksum, disagreement, Collective, Single};
use crate::error::{Error, Result};
use crate::eval::{data_statistics, diagnose, embed, knn_accuracy, Collapse};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One epoch's results.
#[derive(Clone, Debug, Serialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub loss: f64,
    pub knn_top1: f64,
    pub collapse: Collapse,
    pub seconds: f64,
}

/// The monitor's reading of an encoder: kNN accuracy and collapse diagnostics.
#[derive(Clone, Copy, Debug)]
pub struct Monitor {
    pub knn_top1: f64,
    pub collapse: Collapse,
}

/// What a run reports at its end.
#[derive(Clone, Debug)]
pub struct Summary {
    /// kNN accuracy of the encoder at initialisation (absent when resumed).
    pub knn_init: Option<f64>,
    /// The same with BatchNorm statistics of the training images in place of the
    /// placeholder mean 0, variance 1 ([`crate::eval::batchnorm`]).
    pub knn_init_data_bn: Option<f64>,
    pub epochs: Vec<EpochRecord>,
    /// Epochs the run had finished before this call (0 unless it resumed).
    pub epochs_before: usize,
    /// The first epoch whose diagnostics said "collapsed", and the step count then.
    pub collapsed_at: Option<(usize, u64)>,
    pub images_per_s: f64,
    pub out: PathBuf,
}

/// Where a run writes, and whether it resumes or stops early.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub out: PathBuf,
    pub resume: Option<PathBuf>,
    /// Stop after this many epochs in total (the schedules still span `epochs`); 0 writes
    /// the untrained networks' checkpoint.
    pub stop_after_epochs: Option<usize>,
    /// Print progress to standard error.
    pub progress: bool,
    /// This process's place in a data-parallel run; `None` for one process.
    pub replicas: Option<Replicas>,
    /// Where the step runs.
    pub device: Device,
    /// Convolutions' and GEMMs' arithmetic on a GPU (ignored on the CPU).
    pub precision: Precision,
    /// Where the views' pixels are made.
    pub augment_on: AugmentOn,
}

/// A data-parallel run as one rank sees it: the collective joining the ranks, and whether
/// BatchNorm statistics are cross-replica (the paper's) or per replica (the ablation).
#[derive(Clone)]
pub struct Replicas {
    pub collective: std::sync::Arc<dyn Collective>,
    pub sync_batchnorm: bool,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rank {} of {}, {} BatchNorm",
            self.collective.rank(),
            self.collective.world(),
            if self.sync_batchnorm {
                "cross-replica"
            } else {
                "per-replica"
            }
        )
    }
}

/// The seed of the data itself: the embedded set's images and the `limit_train` /
/// `limit_test` subsets. It is not the run's seed, so runs that differ only in `seed` see the
/// same images and differ in initialisation, data order and augmentations alone (until
/// 2026-11-29 the run's seed drew the embedded images too; it was 0 in every default run).
pub const DATA_SEED: u64 = 0;

/// The data of a configuration: train (for pre-training; it may hold unlabelled images)
/// and held-out splits.
pub fn load_data(cfg: &TrainConfig) -> Result<(Dataset, Dataset)> {
    let (train, test) = load_full_data(cfg)?;
    let limit = |data: Dataset, limit: Option<usize>, field: &'static str, tag: u64| match limit {
        Some(n) if n > data.len() => Err(Error::setting(
            field,
            format!(
                "{} is {n}, but the split has only {} images",
                crate::error::field_name(field),
                data.len()
            ),
        )),
        Some(n) => Ok(data.stratified(n, mix(DATA_SEED ^ tag))),
        None => Ok(data),
    };
    Ok((
        limit(train, cfg.data.limit_train, "data.limit_train", 0x7ea1)?,
        limit(test, cfg.data.limit_test, "data.limit_test", 0x7e57)?,
    ))
}

/// The splits of a configuration's data set, whole.
fn load_full_data(cfg: &TrainConfig) -> Result<(Dataset, Dataset)> {
    let dir = cfg.data.data_dir.as_deref().unwrap_or(Path::new("."));
    match cfg.data.dataset.as_str() {
        "cifar10" => formats::cifar10(dir),
        "cifar100" => formats::cifar100(dir),
        "stl10" => formats::stl10(dir, true),
        "mnist" => formats::mnist(dir),
        "folder" => formats::image_folder(dir, cfg.data.image_size),
        "synthetic" => Ok(synthetic::synthetic(
            DATA_SEED,
            cfg.data.train_size,
            cfg.data.test_size,
        )),
        other => Err(Error::InvalidArgument(format!(
            "dataset {other:?} is not available: expected one of {}",
            DATASETS.join(", ")
        ))),
    }
}

/// The augmentations and normalisation for `train`.
pub fn augmenter(train: &Dataset, cfg: &TrainConfig) -> Result<Augmenter> {
    let (mean, std) = train.channel_stats();
    Ok(Augmenter {
        views: cfg.views()?,
        size: train.h,
        mean,
        std,
    })
}

/// Checks, before any work, that the output folder can be written.
fn prepare_out(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let probe = out.join(".write-test");
    std::fs::write(&probe, b"").map_err(|e| Error::io(out, e))?;
    std::fs::remove_file(&probe).map_err(|e| Error::io(&probe, e))
}

/// The labelled images of a split (STL-10's unlabelled ones only serve pre-training).
pub fn labelled(data: &Dataset) -> Vec<usize> {
    (0..data.len())
        .filter(|&i| data.labels[i] != UNLABELED)
        .collect()
}

/// The monitor after an epoch: kNN accuracy of the online encoder (bank = labelled training
/// images, queries = held-out), and collapse diagnostics on up to 1024 of the bank's
/// representations and their projections (evaluation-mode BatchNorm).
pub fn monitor<B: Backend>(
    byol: &Byol<B>,
    state: &crate::byol::ByolState<B>,
    train: &Dataset,
    test: &Dataset,
    aug: &Augmenter,
    cfg: &TrainConfig,
) -> Result<Monitor> {
    // The encoder's parameters and statistics lead the online buffers.
    let (knn_top1, bank) = knn_reading(
        byol,
        &state.online,
        &state.online_running,
        train,
        test,
        aug,
        cfg,
    )?;
    let dim = byol.encoder.repr_dim();
    let n = (bank.len() / dim).min(1024);
    let z = byol.projections(state, &bank[..n * dim])?;
    Ok(Monitor {
        knn_top1,
        collapse: diagnose(&bank[..n * dim], dim, &z, byol.projector.output),
    })
}

/// kNN accuracy of the encoder with parameters `params` and running statistics `running`,
/// and its bank (the labelled training images' representations).
fn knn_reading<B: Backend>(
    byol: &Byol<B>,
    params: &B::Buffer,
    running: &B::Buffer,
    train: &Dataset,
    test: &Dataset,
    aug: &Augmenter,
    cfg: &TrainConfig,
) -> Result<(f64, Vec<f32>)> {
    let (be, encoder) = (&byol.backend, &byol.encoder);
    let bank_idx = labelled(train);
    let bank = embed(be, encoder, params, running, train, &bank_idx, aug, 256)?;
    let queries = embed(
        be,
        encoder,
        params,
        running,
        test,
        &labelled(test),
        aug,
        256,
    )?;
    let bank_labels: Vec<u16> = bank_idx.iter().map(|&i| train.labels[i]).collect();
    let knn_top1 = knn_accuracy(
        &bank,
        &bank_labels,
        &queries,
        &test.labels,
        encoder.repr_dim(),
        train.classes,
        cfg.monitor.knn_k,
        cfg.monitor.knn_temperature as f32,
    );
    Ok((knn_top1, bank))
}

/// Images over which an untrained encoder's BatchNorm statistics of the data are averaged:
/// enough for a steady mean (on Fashion-MNIST, seeds 0 and 1, the reading stays within 0.6
/// points from 1,024 images to all 4,992), few enough to cost seconds (7 s of the default
/// run's 4–7 minutes on 2 cores).
const DATA_STATISTICS_IMAGES: usize = 4096;

/// The kNN accuracy of the encoder at initialisation with the data's BatchNorm statistics
/// ([`crate::eval::batchnorm`]) in place of the placeholder ones: the global batches of `b`
/// of a seeded order of the training images, this rank's `shard` of each. Every rank must
/// call it (cross-replica BatchNorm joins them); the first alone gets the reading.
#[allow(clippy::too_many_arguments)]
pub fn knn_with_data_statistics<B: Backend>(
    byol: &Byol<B>,
    state: &crate::byol::ByolState<B>,
    train: &Dataset,
    test: &Dataset,
    aug: &Augmenter,
    cfg: &TrainConfig,
    (rank, shard): (usize, usize),
) -> Result<Option<f64>> {
    let b = cfg.optim.batch_size;
    let mut order: Vec<usize> = (0..train.len()).collect();
    // A stream of its own: training draws none of it, so the run is the same bits with it.
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(cfg.seed ^ 0xb47c)));
    let batches: Vec<Vec<usize>> = order
        .chunks_exact(b)
        .take((DATA_STATISTICS_IMAGES / b).max(1))
        .map(|batch| batch[rank * shard..(rank + 1) * shard].to_vec())
        .collect();
    let running = data_statistics(
        &byol.backend,
        &byol.encoder,
        &state.online,
        train,
        &batches,
        aug,
    )?;
    if rank != 0 {
        return Ok(None);
    }
    Ok(Some(
        knn_reading(byol, &state.online, &running, train, test, aug, cfg)?.0,
    ))
}

/// A batch as the augmentation thread hands it to the step: its views' pixels, or (with the
/// augmentation on the device) its images and drawn views.
enum Batch {
    Pixels([Vec<f32>; 2]),
    Drawn {
        index: Vec<u32>,
        params: [Vec<crate::backend::ViewParams>; 2],
    },
}

/// Where a batch's views are made. Either way each view is drawn on the host from its own
/// stream, so both give the same views (bit for bit on the CPU backend, tested).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AugmentOn {
    /// CPU worker threads, up to two batches ahead of the step, then copied to the device.
    #[default]
    Workers,
    /// The step's device (`--augment-on gpu`): the source images are copied there once, the
    /// workers only draw the views, and the device applies them.
    Device,
}

/// Trains as configured. Returns the per-epoch record (on every rank but the first of a
/// data-parallel run, which leaves the files and the record to rank 0, an empty one).
pub fn train(cfg: &TrainConfig, opts: &RunOptions) -> Result<Summary> {
    match (&opts.replicas, opts.device) {
        (None, Device::Cpu) => train_on(cfg, opts, Cpu, &Single),
        (Some(r), Device::Cpu) => {
            let backend = Distributed::new(Cpu, r.collective.clone(), r.sync_batchnorm);
            train_on(cfg, opts, backend, r.collective.as_ref())
        }
        (replicas, Device::Cuda(ordinal)) => train_on_gpu(cfg, opts, ordinal, replicas.as_ref()),
    }
}

/// On GPU `ordinal`; in a data-parallel run, rank r of a machine takes GPU `ordinal` + its
/// local rank (`OMPI_COMM_WORLD_LOCAL_RANK` or torchrun's `LOCAL_RANK`, else 0), and the
/// gradient average goes through NCCL.
#[cfg(feature = "cuda")]
fn train_on_gpu(
    cfg: &TrainConfig,
    opts: &RunOptions,
    ordinal: usize,
    replicas: Option<&Replicas>,
) -> Result<Summary> {
    use crate::backend::cuda::Cuda;
    let Some(r) = replicas else {
        let gpu = Cuda::with_precision(ordinal, opts.precision)?;
        return train_on(cfg, opts, gpu, &Single);
    };
    let local = ["OMPI_COMM_WORLD_LOCAL_RANK", "LOCAL_RANK"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
        .unwrap_or(0);
    let gpu = Cuda::with_precision(ordinal + local, opts.precision)?;
    let nccl = crate::dist::nccl::Nccl::new(gpu.stream(), r.collective.as_ref())?;
    let backend = Distributed::new(gpu, r.collective.clone(), r.sync_batchnorm)
        .with_device_average(Box::new(move |buf| nccl.average(buf)));
    train_on(cfg, opts, backend, r.collective.as_ref())
}

#[cfg(not(feature = "cuda"))]
fn train_on_gpu(
    _cfg: &TrainConfig,
    _opts: &RunOptions,
    ordinal: usize,
    _replicas: Option<&Replicas>,
) -> Result<Summary> {
    check_device(Device::Cuda(ordinal))?;
    unreachable!("check_device refuses every GPU in a build without the `cuda` feature")
}

/// Whether `device` can run here: a clear [`Error::GpuUnavailable`] naming what is missing
/// (the feature, the driver, cuBLAS, cuDNN, the GPU) before any work, without opening it.
pub fn check_device(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        #[cfg(feature = "cuda")]
        Device::Cuda(ordinal) => crate::backend::cuda::Cuda::check_available(ordinal),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(Error::GpuUnavailable(
            "this binary was built without the `cuda` feature: rebuild with `cargo build --release -p host --features cuda`".into(),
        )),
    }
}

/// The run on `backend`, one rank of `collective`'s (rank 0 of 1 in one process). Every
/// rank takes its equal part of each global batch, in the order one process would use; the
/// first rank alone writes files and runs the monitor.
fn train_on<B: Backend>(
    cfg: &TrainConfig,
    opts: &RunOptions,
    backend: B,
    collective: &dyn Collective,
) -> Result<Summary> {
    cfg.validate()?;
    let (rank, world) = (collective.rank(), collective.world());
    let lead = rank == 0;
    if !collective.agree(checksum(cfg.json().bytes()))? {
        return Err(disagreement("the configuration"));
    }
    if lead {
        prepare_out(&opts.out)?;
    }
    let (train, test) = load_data(cfg)?;
    if cfg.optim.batch_size > train.len() {
        return Err(Error::setting(
            "optim.batch_size",
            format!(
                "batch size {} is larger than the training set ({} images)",
                cfg.optim.batch_size,
                train.len()
            ),
        ));
    }
    if train.h != train.w {
        return Err(Error::InvalidArgument(format!(
            "images are {}×{}: BYOL's crops need square images",
            train.h, train.w
        )));
    }
    let aug = augmenter(&train, cfg)?;
    let byol_config = cfg.byol_config()?;
    let shard = shard_of_batch(cfg.optim.batch_size, world, &byol_config)?;
    let byol = Byol::on(backend, byol_config)?;
    if world > 1 && lead && opts.progress {
        let sync = opts.replicas.as_ref().is_some_and(|r| r.sync_batchnorm);
        let (gradient, batchnorm) = bytes_per_step(&byol, sync);
        eprintln!(
            "  each rank adds {:.2} MB per step into the others': gradient {:.2} MB, BatchNorm sums {:.3} MB",
            (gradient + batchnorm) as f64 / 1e6,
            gradient as f64 / 1e6,
            batchnorm as f64 / 1e6
        );
    }
    let mut host_state = starting_state(&byol, cfg, opts.resume.as_deref())?;
    // Every rank starts from rank 0's state, whatever it read or drew.
    for buf in [
        &mut host_state.online,
        &mut host_state.target,
        &mut host_state.online_running,
        &mut host_state.target_running,
        &mut host_state.momentum,
        &mut host_state.second_moment,
    ] {
        collective.broadcast_f32(buf)?;
    }
    let mut state = host_state.to_backend(&byol.backend)?;
    let (b, n) = (cfg.optim.batch_size, train.len());
    let steps_per_epoch = n / b;
    let first_epoch = (state.step / steps_per_epoch as u64) as usize;
    let metrics_path = opts.out.join(METRICS);
    let mut metrics = if lead {
        Some(open_run_files(
            cfg,
            opts,
            world,
            &metrics_path,
            (state.step, first_epoch),
        )?)
    } else {
        None
    };
    // Only the first rank writes the record.
    let mut record = |line: serde_json::Value| -> Result<()> {
        match &mut metrics {
            // One write per record, so that a killed run leaves whole lines: formatted
            // straight into the file, the 4 records of a one-epoch run took 178 write calls
            // (strace, 2026-11-30), now 4.
            Some(m) => (m.write_all(format!("{line}\n").as_bytes()))
                .map_err(|e| Error::io(&metrics_path, e)),
            None => Ok(()),
        }
    };

    let total = (cfg.optim.epochs * steps_per_epoch) as u64;
    let warmup = cfg.optim.warmup_epochs * steps_per_epoch;
    let peak = cfg.optim.base_lr * b as f64 / 256.0;
    let lr_mult = LrMultipliers {
        projector: cfg.ablation.projector_lr_mult as f32,
        predictor: cfg.ablation.predictor_lr_mult as f32,
    };
    let optimizer = cfg.optimizer()?;
    let last_epoch = opts
        .stop_after_epochs
        .unwrap_or(cfg.optim.epochs)
        .min(cfg.optim.epochs);

    // The untrained encoder, read with placeholder and with the data's BatchNorm statistics
    // (every rank takes part in the second; the first alone gets the readings).
    let (mut knn_init, mut knn_init_data_bn) = (None, None);
    if opts.resume.is_none() {
        let part = (rank, shard);
        if let Some(data_bn) =
            knn_with_data_statistics(&byol, &state, &train, &test, &aug, cfg, part)?
        {
            let acc = monitor(&byol, &state, &train, &test, &aug, cfg)?.knn_top1;
            record(
                serde_json::json!({"kind": "epoch", "epoch": 0, "knn_top1": acc, "knn_top1_data_bn": data_bn}),
            )?;
            if opts.progress {
                eprintln!(
                    "kNN top-1 at initialisation: {:.2}% ({:.2}% with the data's BatchNorm statistics)",
                    100.0 * acc,
                    100.0 * data_bn
                );
            }
            (knn_init, knn_init_data_bn) = (Some(acc), Some(data_bn));
        }
    }
    let mut work = byol.work(shard, aug.size, aug.size)?;
    let px = aug.size * aug.size * 3;
    // With the augmentation on the device: the source images there once, two view buffers.
    let mut on_device = match opts.augment_on {
        AugmentOn::Workers => None,
        AugmentOn::Device => Some((
            byol.backend.upload_images(&train.images)?,
            [
                byol.backend.zeros(shard * px)?,
                byol.backend.zeros(shard * px)?,
            ],
        )),
    };
    let mut epochs = Vec::new();
    let mut collapsed_at = None;
    let (run_start, mut images) = (Instant::now(), 0usize);
    let mut waited = 0.0f64;
    for epoch in first_epoch..last_epoch {
        let start = Instant::now();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(
            cfg.seed ^ mix(epoch as u64)
        )));
        let mut loss_sum = 0.0f64;
        // Augmentation runs on its own thread, up to two batches ahead of the step.
        std::thread::scope(|scope| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(2);
            let (aug, train, order) = (&aug, &train, &order);
            let drawn_only = on_device.is_some();
            scope.spawn(move || {
                for s in 0..steps_per_epoch {
                    let k = (epoch * steps_per_epoch + s) as u64;
                    // This rank's part of the global batch, with the views of its positions.
                    let first = rank * shard;
                    let idx = &order[s * b + first..s * b + first + shard];
                    let stream = mix(cfg.seed ^ mix(k ^ 0x5eed));
                    let batch = if drawn_only {
                        Batch::Drawn {
                            index: idx.iter().map(|&i| i as u32).collect(),
                            params: aug.batch_params(train, shard, first, stream),
                        }
                    } else {
                        let (mut v1, mut v2) = (vec![0.0f32; shard * px], vec![0.0f32; shard * px]);
                        aug.batch_part(train, idx, first, stream, [&mut v1, &mut v2]);
                        Batch::Pixels([v1, v2])
                    };
                    if tx.send(batch).is_err() {
                        return; // the step stopped (an error): nothing more to make
                    }
                }
            });
            for s in 0..steps_per_epoch {
                // Time the step waits for its batch: the augmentation falling behind.
                let wait_start = Instant::now();
                let batch = rx
                    .recv()
                    .expect("the augmentation thread sends every batch");
                waited += wait_start.elapsed().as_secs_f64();
                let k = state.step as usize;
                let (lr, t) = (
                    learning_rate(peak, k, warmup, total as usize),
                    cfg.ablation.tau_constant.unwrap_or_else(|| {
                        tau_to(cfg.optim.tau_base, cfg.optim.tau_end, k, total as usize)
                    }),
                );
                let step_start = Instant::now();
                let uploaded;
                let views: [&B::Buffer; 2] = match (batch, on_device.as_mut()) {
                    (Batch::Drawn { index, params }, Some((images, bufs))) => {
                        for (buf, params) in bufs.iter_mut().zip(&params) {
                            let op = AugmentOp {
                                h: train.h,
                                w: train.w,
                                size: aug.size,
                                mean: aug.mean,
                                std: aug.std,
                                index: &index,
                                params,
                            };
                            byol.backend.augment(&op, images, train.len(), buf)?;
                        }
                        [&bufs[0], &bufs[1]]
                    }
                    (Batch::Pixels([v1, v2]), _) => {
                        uploaded = [byol.backend.upload(&v1)?, byol.backend.upload(&v2)?];
                        [&uploaded[0], &uploaded[1]]
                    }
                    (Batch::Drawn { .. }, None) => {
                        unreachable!("views are drawn only for the device")
                    }
                };
                let local = byol
                    .step(
                        &mut state, &mut work, views, lr as f32, t as f32, &optimizer, lr_mult,
                    )?
                    .loss;
                // The loss of the global batch: the mean of the ranks' means.
                let mut sum = [local];
                collective.all_reduce_f32(&mut sum)?;
                let loss = sum[0] / world as f32;
                loss_sum += loss as f64;
                images += b;
                let ips = b as f64 / step_start.elapsed().as_secs_f64();
                record(
                    serde_json::json!({"kind": "step", "step": k, "epoch": epoch + 1, "loss": loss, "lr": lr, "tau": t, "images_per_s": ips}),
                )?;
                if opts.progress && lead {
                    let elapsed = run_start.elapsed().as_secs_f64();
                    let ips = images as f64 / elapsed;
                    let left = (total - state.step) as usize * b;
                    progress(
                        epoch + 1,
                        cfg.optim.epochs,
                        s + 1,
                        steps_per_epoch,
                        loss,
                        lr,
                        t,
                        ips,
                        waited / elapsed,
                        left,
                    );
                }
            }
            Ok(())
        })?;
        // The replicas must hold the same parameters and statistics, bit for bit (one
        // process has nothing to compare).
        if world > 1 {
            let online = byol.backend.download(&state.online)?;
            let running = byol.backend.download(&state.online_running)?;
            if !collective.agree(checksum(bits(&online).chain(bits(&running))))? {
                return Err(disagreement(&format!(
                    "the parameters after epoch {}",
                    epoch + 1
                )));
            }
        }
        if !lead {
            continue;
        }
        let Monitor {
            knn_top1: acc,
            collapse,
        } = monitor(&byol, &state, &train, &test, &aug, cfg)?;
        let rec = EpochRecord {
            epoch: epoch + 1,
            loss: loss_sum / steps_per_epoch as f64,
            knn_top1: acc,
            collapse,
            seconds: start.elapsed().as_secs_f64(),
        };
        if collapse.collapsed && collapsed_at.is_none() {
            collapsed_at = Some((rec.epoch, state.step));
        }
        record(serde_json::json!({
            "kind": "epoch", "epoch": rec.epoch, "loss": rec.loss, "knn_top1": acc, "seconds": rec.seconds,
            "projection_std": collapse.projection_std, "healthy_std": collapse.healthy_std,
            "effective_rank": collapse.effective_rank, "collapsed": collapse.collapsed,
        }))?;
        let host_state = state.to_host(&byol.backend)?;
        checkpoint::save(&opts.out.join(CHECKPOINT), &byol, &host_state, &cfg.json())?;
        if opts.progress {
            print_epoch(&rec, cfg.optim.epochs);
        }
        epochs.push(rec);
    }
    if lead && epochs.is_empty() && opts.resume.is_none() {
        // `--stop-after-epochs 0`: the untrained networks, to export or to resume.
        let host_state = state.to_host(&byol.backend)?;
        checkpoint::save(&opts.out.join(CHECKPOINT), &byol, &host_state, &cfg.json())?;
    }
    if lead {
        crate::plot::plot_metrics(&metrics_path, &opts.out.join(PLOT))?;
    }
    // No rank leaves (and finalises its collective) before the first has written its files.
    collective.barrier()?;
    Ok(Summary {
        knn_init,
        knn_init_data_bn,
        epochs,
        epochs_before: first_epoch,
        collapsed_at,
        images_per_s: images as f64 / run_start.elapsed().as_secs_f64(),
        out: opts.out.clone(),
    })
}

/// The state a run starts from: drawn from its seed, or read from the checkpoint it resumes,
/// which must have been written by this very configuration.
fn starting_state<B: Backend>(
    byol: &Byol<B>,
    cfg: &TrainConfig,
    resume: Option<&Path>,
) -> Result<ByolState> {
    let Some(path) = resume else {
        return Ok(byol.init(cfg.init_seed.unwrap_or(cfg.seed)));
    };
    // The configurations first: where the networks differ, their fields say how, which the
    // tensors' count and shapes cannot.
    let stored = saved_config(path)?;
    same_run(&stored, cfg).map_err(|diff| Error::Checkpoint {
        path: path.into(),
        reason: format!("it was written by another configuration: {diff}"),
    })?;
    Ok(checkpoint::load(path, byol)?.0)
}

/// The first rank's files before the first step: `config.json` (a valid `--config` file,
/// which also records the thread count, on which the bits of the run depend since the conv
/// layers split their sums by thread, and the number of ranks), and the metrics at
/// `metrics_path`, new, or when resuming at `(step, epoch)` cut back to the records before it
/// and opened to append. A new run also removes the evaluations of the run it replaces, which
/// would otherwise read as this run's (a resumed run keeps them: their steps are its own).
fn open_run_files(
    cfg: &TrainConfig,
    opts: &RunOptions,
    world: usize,
    metrics_path: &Path,
    (step, epoch): (u64, usize),
) -> Result<std::fs::File> {
    let mut config_json = serde_json::to_value(cfg).expect("a config serialises");
    config_json["run"] = serde_json::json!({"threads": rayon::current_num_threads()});
    if world > 1 {
        config_json["run"]["ranks"] = world.into();
    }
    let config_json = serde_json::to_string_pretty(&config_json).expect("JSON serialises");
    crate::files::write_atomic(&opts.out.join(RUN_CONFIG), config_json.as_bytes())?;
    if opts.resume.is_some() {
        metrics_before(metrics_path, step, epoch)?;
    } else {
        let evaluations = opts.out.join(EVALUATIONS);
        match std::fs::remove_file(&evaluations) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(&evaluations, e))
            }
            _ => {}
        }
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(opts.resume.is_some())
        .write(true)
        .truncate(opts.resume.is_none())
        .open(metrics_path)
        .map_err(|e| Error::io(metrics_path, e))
}

/// An epoch's line on standard error (on a terminal, over the progress bar).
fn print_epoch(rec: &EpochRecord, epochs: usize) {
    let c = &rec.collapse;
    let line = format!(
        "epoch {}/{epochs}: loss {:.4}, kNN top-1 {:.2}%, projection std·√d {:.3}, effective rank {:.1}{}, {:.0} s",
        rec.epoch,
        rec.loss,
        100.0 * rec.knn_top1,
        c.projection_std / c.healthy_std,
        c.effective_rank,
        if c.collapsed { " COLLAPSED" } else { "" },
        rec.seconds
    );
    let clear = if std::io::stderr().is_terminal() {
        "\r\x1b[2K"
    } else {
        ""
    };
    eprintln!("{clear}{line}");
}

/// Bytes one rank adds into the others' per step of a data-parallel run: the flat gradient
/// (f32), and the cross-replica BatchNorm sums: per BatchNorm forward, a count and Σh, Σh²
/// per channel (f64); per backward, Σdy and Σdy·x̂ per channel (f32). A step runs the target
/// (encoder and projector) forward on both views, and the online network (encoder,
/// projector, predictor) forward and backward on both.
pub fn bytes_per_step<B: Backend>(byol: &Byol<B>, sync_batchnorm: bool) -> (usize, usize) {
    let channels = |prefix: &str| -> (usize, usize) {
        let layers = byol
            .registry
            .buffers
            .iter()
            .filter(|b| b.name.starts_with(prefix) && b.name.ends_with("running_mean"));
        layers.fold((0, 0), |(n, c), b| (n + 1, c + b.shape[0]))
    };
    let (target, online) = {
        let (e, p, q) = (
            channels("encoder."),
            channels("projector."),
            channels("predictor."),
        );
        let target = if byol.config.target_network {
            (e.0 + p.0, e.1 + p.1)
        } else {
            (0, 0)
        };
        (target, (e.0 + p.0 + q.0, e.1 + p.1 + q.1))
    };
    let forward = |(layers, c): (usize, usize)| layers * 8 + c * 16;
    let backward = |(_, c): (usize, usize)| c * 8;
    let batchnorm = match sync_batchnorm {
        true => 2 * (forward(target) + forward(online) + backward(online)),
        false => 0,
    };
    (byol.registry.param_len() * 4, batchnorm)
}

/// This rank's part of each global batch of `batch` images over `world` ranks; errors where
/// the batch does not split evenly, or where the loss needs the whole batch at once.
fn shard_of_batch(batch: usize, world: usize, byol: &crate::byol::ByolConfig) -> Result<usize> {
    if world == 1 {
        return Ok(batch);
    }
    if !batch.is_multiple_of(world) || batch / world < 2 {
        return Err(Error::InvalidArgument(format!(
            "optim.batch_size {batch} must split into {world} equal parts of at least 2 images (one per rank)"
        )));
    }
    let whole_batch = if byol.predictor == crate::byol::PredictorKind::ClosedForm {
        Some("the closed-form predictor (a least-squares fit to the whole batch)")
    } else if byol.objective.beta > 0.0 {
        Some("the contrastive term (ablation.beta > 0: negatives from the whole batch)")
    } else if byol.objective.normalisation == crate::byol::Normalisation::BatchNorm {
        Some("the batchnorm loss normalisation (statistics of the whole batch)")
    } else {
        None
    };
    match whole_batch {
        Some(what) => Err(Error::InvalidArgument(format!(
            "{what} is not data-parallel yet: run it in one process"
        ))),
        None => Ok(batch / world),
    }
}

/// Cuts a resumed run's `metrics.jsonl` back to what the checkpoint holds: the records of
/// its first `step` steps and of its `epochs` finished epochs, so that the steps an
/// interruption repeats appear once. A missing file stays missing (the run may resume from
/// a copied checkpoint).
fn metrics_before(path: &Path, step: u64, epochs: usize) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut kept = String::new();
    for (line, record) in crate::files::parse_jsonl(path, &text)? {
        let keep = match record["kind"].as_str() {
            Some("step") => record["step"].as_u64().is_some_and(|s| s < step),
            _ => record["epoch"].as_u64().is_some_and(|e| e <= epochs as u64),
        };
        if keep {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    crate::files::write_atomic(path, kept.as_bytes())
}

/// A 20-character bar, `#` for the `done` part of `total`, `.` for the rest.
pub(crate) fn progress_bar(done: usize, total: usize) -> String {
    const WIDTH: usize = 20;
    let filled = WIDTH * done / total.max(1);
    "#".repeat(filled) + &".".repeat(WIDTH - filled)
}

/// The progress line: a bar over the epoch, loss, lr, τ, throughput and time left.
#[allow(clippy::too_many_arguments)]
fn progress(
    epoch: usize,
    epochs: usize,
    s: usize,
    steps: usize,
    loss: f32,
    lr: f64,
    tau: f64,
    ips: f64,
    data_wait: f64,
    images_left: usize,
) {
    let bar = progress_bar(s, steps);
    let eta = (images_left as f64 / ips.max(1e-9)) as u64;
    let line = format!(
        "epoch {epoch}/{epochs} [{bar}] step {s}/{steps} loss {loss:.4} lr {lr:.4} τ {tau:.4} {ips:.0} img/s, waited for data {:.0}% ETA {}m{:02}s",
        100.0 * data_wait,
        eta / 60,
        eta % 60
    );
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K{line}");
    } else if s == steps || s.is_multiple_of(10) {
        eprintln!("{line}");
    }
}

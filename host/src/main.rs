//! `host`: the BYOL command line (train, eval, export, embed, export-data, download, plot, ablate,
//! gpu-info). `train`'s flags are the configuration's fields ([`host::config`]); every flag has help.

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use host::backend::Device;
use host::config::{given_fields, sets, DataConfig, TrainConfig};
use host::error::Origin;
use host::train::RunOptions;
use host::{checkpoint, Backend, Error};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `$f(backend)` with the backend `device` names: the closure is written once and expanded
/// per backend type, so the function it calls can be generic.
macro_rules! on_device {
    ($device:expr, $f:expr) => {
        match $device {
            Device::Cpu => $f(host::Cpu),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => host::Cuda::new(n).and_then(|gpu| $f(gpu)),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(n) => host::train::check_device(Device::Cuda(n)),
        }
    };
}

#[derive(Parser)]
#[command(
    name = "host",
    version,
    about = "BYOL (Bootstrap Your Own Latent) self-supervised training in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a ResNet encoder with BYOL (no flags: the embedded data set, the small-image recipe, 4–7 minutes on two cores).
    #[command(allow_negative_numbers = true)]
    Train(Box<TrainArgs>),
    /// Evaluate a checkpoint's online encoder.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Write a checkpoint's online encoder alone, under torchvision's names (safetensors).
    Export {
        /// A run folder, or a training checkpoint (`checkpoint.safetensors` of a run).
        checkpoint: PathBuf,
        /// Where to write the encoder.
        out: PathBuf,
    },
    /// Write the representations of a data set's images by a run's encoder (and projector),
    /// with their labels, for downstream use: safetensors, or a folder of .npy files.
    Embed {
        /// A run folder, or its checkpoint.
        checkpoint: PathBuf,
        /// `FILE.safetensors` (`train.representations`, `train.labels`, `test.…`), or a folder
        /// for `train_representations.npy`, `train_labels.npy`, ….
        #[arg(long)]
        out: PathBuf,
        /// Add the online projector's outputs (`*.projections`).
        #[arg(long)]
        projections: bool,
        // The data to embed: the run's, with any of these fields changed (another `--dataset`
        // and `--data-dir`, `--limit-test`, …). Images are resized to the run's side and
        // normalised as its pre-training data. Clap shows no doc comment of a flattened
        // field, so the heading says it.
        #[command(
            flatten,
            next_help_heading = "Data (the run's own unless these change it)"
        )]
        data: DataConfig,
    },
    /// Write a data set's training and held-out images and labels as one safetensors file,
    /// for other programs (the PyTorch reference trains on exactly these pixels).
    ExportData {
        /// Where to write (safetensors: train.images, train.labels, test.images, test.labels).
        out: PathBuf,
        /// The data of a configuration file (TOML, or a run's config.json: the very images
        /// that run trained on); the data flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        // Clap shows no doc comment of a flattened field, so the heading gives the default.
        #[command(
            flatten,
            next_help_heading = "Data (default: the embedded set, 5,000 training and 1,000 \
                                 held-out images)"
        )]
        data: DataConfig,
    },
    /// Download CIFAR-10, CIFAR-100 or STL-10 (binary versions) from their official addresses, checksum-verified.
    Download {
        /// cifar10, cifar100 or stl10.
        dataset: String,
        /// Folder to unpack into (pass the same as --data-dir to train).
        #[arg(long, default_value = "data")]
        dir: PathBuf,
    },
    /// Draw training.png (loss, kNN accuracy, lr, τ) from a run folder's metrics.jsonl; given
    /// several runs, draw them side by side by epoch (kNN, loss, effective rank, lr, τ), one
    /// colour each, into comparison.png.
    Plot {
        /// A run's output folder, or several.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Where to write the image (a folder, or a path ending in /: the default name inside
        /// it). Default: the run's training.png for one run, comparison.png in the working
        /// folder for several.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run one of the paper's ablation studies: tau, predictor-lr, predictor-projector-lr,
    /// closed-form-predictor, beta, augmentations, batch-size, weight-decay, depth,
    /// normalisation; or `recipe` (the official recipe, each element of the small one alone,
    /// and the small one). Writes <out>/<study>/results.md beside the paper's numbers.
    Ablate {
        /// The study to run (one of the names above).
        study: String,
        /// Folder of the studies' runs; a rerun skips finished runs and resumes interrupted ones
        /// (of the same configuration: one of another, other --epochs say, is refused).
        #[arg(long, default_value = "runs/ablations")]
        out: PathBuf,
        /// Epochs per run (default 6: a study fits about half an hour on two cores).
        #[arg(long)]
        epochs: Option<usize>,
        /// Training images per run (synthetic data set).
        #[arg(long)]
        train_size: Option<usize>,
        /// The data set of every run (default: the embedded one).
        #[arg(long)]
        dataset: Option<String>,
        /// Folder of that data set's files (all but the embedded one).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Seed of every run (data order, augmentations, initialisation), or a list (`0,1,2,3,4`):
        /// every setting then trains once per seed, and the table gives mean ± standard
        /// deviation and each setting's difference from the first, paired by seed.
        #[arg(long, value_delimiter = ',')]
        seed: Vec<u64>,
        /// Where the runs train: cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: Device,
        /// Worker threads of every run (default: all cores). A run's sums, and so its figures
        /// to the last digit, depend on it; each run records it in its config.json.
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Check the GPU path: where the NVIDIA libraries were found, then open GPU 0, load the
    /// kernels and report the device, its memory and the libraries' versions (needs `--features cuda`).
    GpuInfo,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// kNN accuracy (k = 200, temperature 0.1 unless the run said otherwise) on the held-out split.
    #[command(allow_negative_numbers = true)]
    Knn {
        /// A run folder, or its checkpoint.
        checkpoint: PathBuf,
        /// Neighbours that vote (default: the run's monitor's, 200 unless it said otherwise;
        /// 20 is the other common choice).
        #[arg(long)]
        knn_k: Option<usize>,
        /// Temperature of the vote (default: the run's monitor's, 0.1 unless it said otherwise).
        #[arg(long)]
        knn_temperature: Option<f64>,
        /// Where the encoder runs: cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: Device,
        /// Also read the encoder with BatchNorm statistics of the data (the mean of its batch statistics over 4,096 clean training images) in place of its running statistics, as `train` reads the untrained encoder.
        #[arg(long)]
        data_batchnorm: bool,
        /// Where the run's data set is now, when not in the folder the run recorded (it moved,
        /// or the run named a relative folder from another working folder).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Linear evaluation: a softmax classifier on the frozen encoder, lr swept over the paper's values.
    Linear {
        /// A run folder, or its checkpoint.
        checkpoint: PathBuf,
        /// Epochs of the classifier's training.
        #[arg(long, default_value_t = 80)]
        epochs: usize,
        /// Where the encoder runs (the classifier trains on the CPU): cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: Device,
        /// Where the run's data set is now, when not in the folder the run recorded.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct TrainArgs {
    /// A configuration file: TOML (see configs/), or a run's config.json; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output folder: metrics.jsonl, checkpoint.safetensors, config.json, training.png
    /// [default: runs/byol].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue a run from its folder (or its checkpoint file) with the configuration saved
    /// in it; flags that would change the run are refused.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Stop after this many epochs in total (the schedules still span --epochs); resume later. 0 writes the untrained networks' checkpoint (to export the random encoder).
    #[arg(long)]
    stop_after_epochs: Option<usize>,
    /// Worker threads (default: all cores; a resumed run: its own count).
    #[arg(long)]
    threads: Option<usize>,
    /// The official ImageNet hyper-parameters for a length: 40, 100, 300 or 1000 epochs
    /// (the recipe imagenet-<N>; explicit flags override).
    #[arg(long)]
    preset: Option<String>,
    /// Data-parallel training over the ranks of `mpirun -np N` (build with --features mpi):
    /// each rank takes 1/N of every batch, BatchNorm statistics and gradients are shared.
    /// Threads per rank default to the cores over the ranks on this machine.
    #[arg(long)]
    distributed: bool,
    /// Where the step runs: cpu, cuda or cuda:N (GPU N; needs --features cuda).
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Convolutions and GEMMs on a GPU: f32 (exact single precision), tf32 or bf16 (tensor
    /// cores, f32 accumulation). Weights, BatchNorm, loss, optimiser and EMA stay f32.
    #[arg(long, default_value = "f32")]
    precision: host::backend::Precision,
    /// Where the views' pixels are made: cpu (worker threads, the default) or gpu (on the
    /// device, from source images copied there once; needs --device cuda). Same views either way.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "gpu"])]
    augment_on: String,
    /// With --distributed: BatchNorm statistics of each rank's part of the batch only
    /// (the ablation), instead of the whole batch's (cross-replica, the paper's).
    #[arg(long, requires = "distributed")]
    per_replica_batchnorm: bool,
    /// Every field of the configuration, as a flag.
    #[command(flatten)]
    train: TrainConfig,
}

impl TrainArgs {
    /// The configuration (recipe, then file, then the flags given), the output folder and
    /// the thread count. `matches` are the `train` command's, which say which flags were given.
    /// They are checked here, before anything is printed, so that a bad setting is the only
    /// line, and its error names the flag, or the configuration file and its field, that set
    /// the value.
    fn config(&self, matches: &ArgMatches) -> Result<(TrainConfig, PathBuf, Option<usize>), Error> {
        // A configuration file's `threads` is checked where the file is read.
        check_threads_flag(self.threads)?;
        let flags = given_fields(&self.train, matches);
        let (c, out, threads, file_fields) = self.assemble(&flags)?;
        let file = self.config.as_deref().map(|path| (path, &file_fields));
        let recorded = self.resume.is_some() && !sets(&flags, "data.data_dir");
        check_settings(&c, recorded, &flags, file)?;
        if out.exists() && !out.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{}: the output folder is a file; expected a folder (created if missing)",
                out.display()
            )));
        }
        Ok((c, out, threads))
    }

    /// [`TrainArgs::config`] unchecked, from the fields `given` as flags, with the fields the
    /// configuration file sets (none without one).
    fn assemble(&self, given: &toml::Table) -> Result<Assembled, Error> {
        if let Some(run) = &self.resume {
            return self.resumed(run, given);
        }
        let file = match &self.config {
            Some(path) => host::config::read_config(path)?,
            None => host::config::ConfigFile::default(),
        };
        let out = self
            .out
            .clone()
            .or(file.out.clone())
            .unwrap_or_else(|| PathBuf::from("runs/byol"));
        let threads = self.threads.or(file.threads);
        let recipe = match (&self.preset, given.contains_key("recipe")) {
            (Some(_), true) => {
                return Err(Error::InvalidArgument(
                    "--preset names an ImageNet recipe: give --preset or --recipe, not both".into(),
                ))
            }
            (Some(name), false) => Some(host::recipe::named(&format!("imagenet-{name}")).map_err(
                |_| {
                    Error::InvalidArgument(format!(
                        "unknown preset {name:?}: expected 40, 100, 300 or 1000"
                    ))
                },
            )?),
            (None, true) => Some(host::recipe::named(&self.train.recipe)?),
            // Which data decides the recipe: the flags', else the file's.
            (None, false) if sets(given, "data.dataset") || sets(given, "data.image_size") => {
                let probe = over_flags(&file.train, given)?;
                Some(host::config::recipe_of(&file.table, &probe)?)
            }
            (None, false) => None,
        };
        let c = match recipe {
            None => file.train.clone(),
            Some(r) => host::config::over_recipe(&file.table, Some(r))
                .map_err(|e| Error::InvalidArgument(format!("configuration file: {e}")))?,
        };
        let mut c = over_flags(&c, given)?;
        // The recipe's η depends on the batch, which the file or a flag may have changed.
        if !sets(given, "optim.lars_eta") && !sets(&file.table, "optim.lars_eta") {
            host::recipe::follow_batch(&mut c);
        }
        // Its τ_base depends on the epochs, likewise.
        if !sets(given, "optim.tau_base") && !sets(&file.table, "optim.tau_base") {
            host::recipe::follow_length(&mut c);
        }
        Ok((c, out, threads, file.table))
    }

    /// A resumed run: the configuration saved in the checkpoint, the flags laid over it (an
    /// error if they change the run; where the data lies may change), written back to the
    /// run's folder unless `--out` says otherwise.
    fn resumed(&self, run: &Path, given: &toml::Table) -> Result<Assembled, Error> {
        if self.config.is_some() || self.preset.is_some() || given.contains_key("recipe") {
            return Err(Error::InvalidArgument(
                "--resume continues with the configuration saved in the run: drop --config, --preset and --recipe"
                    .into(),
            ));
        }
        let checkpoint = host::config::existing_checkpoint(run)
            .map_err(|e| Error::InvalidArgument(format!("--resume: {e}")))?;
        let saved = host::config::saved_config(&checkpoint)?;
        let dir = checkpoint.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        let out = self.out.clone().unwrap_or_else(|| dir.to_path_buf());
        // The run's own thread count, so that it continues bit for bit.
        let threads = self.threads.or_else(|| host::config::saved_threads(dir));
        let c = over_flags(&saved, given)?;
        // The run checks this again when it opens the checkpoint; refused here, it is refused
        // before the banner prints the changed run as if it would go on.
        host::config::same_run(&saved, &c).map_err(|diff| {
            Error::InvalidArgument(format!(
                "--resume: the flags given change the run saved in {} ({diff}); a resumed run \
                 goes on as it was started, its lr and τ schedules spanning its own epochs: \
                 train the changed run into another --out, or drop those flags",
                checkpoint.display()
            ))
        })?;
        Ok((c, out, threads, toml::Table::new()))
    }
}

/// A run's configuration, output folder, thread count and the fields its configuration file
/// sets, before they are checked.
type Assembled = (TrainConfig, PathBuf, Option<usize>, toml::Table);

/// `c` with the fields given as flags set.
fn over_flags(c: &TrainConfig, given: &toml::Table) -> Result<TrainConfig, Error> {
    host::config::overlay(c, given).map_err(Error::InvalidArgument)
}

/// The matches of subcommand `name` (the one being run).
fn sub_matches<'a>(matches: &'a ArgMatches, name: &str) -> &'a ArgMatches {
    matches
        .subcommand_matches(name)
        .expect("the running subcommand has matches")
}

fn main() -> ExitCode {
    #[cfg(feature = "cuda")]
    restart_with_gpu_libraries();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Train(args) => train(&args, sub_matches(&matches, "train")),
        Command::Eval(EvalCommand::Knn {
            checkpoint,
            knn_k,
            knn_temperature,
            device,
            data_batchnorm,
            data_dir,
        }) => {
            let data_dir = data_dir.as_deref();
            // The vote's settings given as flags replace the run's, checked as the run's were.
            let vote = |cfg: &mut TrainConfig| {
                if knn_k.is_none() && knn_temperature.is_none() {
                    return Ok(());
                }
                cfg.monitor.knn_k = knn_k.unwrap_or(cfg.monitor.knn_k);
                cfg.monitor.knn_temperature =
                    knn_temperature.unwrap_or(cfg.monitor.knn_temperature);
                cfg.validate().map_err(|e| e.set_in(Origin::Flag))
            };
            on_device!(device, |be| eval_knn(
                &checkpoint,
                data_dir,
                &vote,
                data_batchnorm,
                device,
                be
            ))
        }
        Command::Eval(EvalCommand::Linear {
            checkpoint,
            epochs,
            device,
            data_dir,
        }) => {
            let data_dir = data_dir.as_deref();
            on_device!(device, |be| eval_linear(
                &checkpoint,
                data_dir,
                epochs,
                device,
                be
            ))
        }
        Command::Export { checkpoint, out } => export(&checkpoint, &out),
        Command::Embed {
            checkpoint,
            out,
            projections,
            data,
        } => embed(
            &checkpoint,
            &out,
            projections,
            &given_fields(&data, sub_matches(&matches, "embed")),
        ),
        Command::ExportData { out, config, data } => export_data(
            &out,
            config.as_deref(),
            &given_fields(&data, sub_matches(&matches, "export-data")),
        ),
        Command::Download { dataset, dir } => host::data::download::source(&dataset)
            .and_then(|src| host::data::download::download(&src, &dir, true))
            .map(|p| println!("{dataset} is in {}", p.display())),
        Command::Plot { runs, out } => {
            plot(&runs, out).map(|out| println!("wrote {}", out.display()))
        }
        Command::Ablate {
            study,
            out,
            epochs,
            train_size,
            dataset,
            data_dir,
            seed,
            device,
            threads,
        } => {
            let mut base = host::ablate::base();
            let seeds = if seed.is_empty() {
                vec![base.seed]
            } else {
                seed
            };
            // The fields these flags set, so that an error about one names its flag.
            let mut flags = toml::Table::new();
            for (key, given) in [
                ("optim.epochs", epochs.is_some()),
                ("data.train_size", train_size.is_some()),
                ("data.dataset", dataset.is_some()),
                ("data.data_dir", data_dir.is_some()),
            ] {
                if let (true, Some((section, field))) = (given, key.split_once('.')) {
                    let section = flags
                        .entry(section)
                        .or_insert_with(|| toml::Table::new().into());
                    let section = section.as_table_mut().expect("a section is a table");
                    section.insert(field.into(), true.into());
                }
            }
            base.optim.epochs = epochs.unwrap_or(base.optim.epochs);
            host::recipe::follow_length(&mut base);
            base.data.train_size = train_size.unwrap_or(base.data.train_size);
            base.data.dataset = dataset.unwrap_or(base.data.dataset);
            base.data.data_dir = data_dir.or(base.data.data_dir);
            // The study's base is checked before its first run.
            check_settings(&base, false, &flags, None)
                .and_then(|()| check_threads_flag(threads))
                .and_then(|()| host::train::check_device(device))
                .and_then(|()| threads.map_or(Ok(()), use_threads))
                .and_then(|()| host::ablate::run_study(&study, &base, &seeds, &out, true, device))
                .map(|table| println!("{table}"))
        }
        Command::GpuInfo => gpu_info(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A command that may open a GPU starts itself again, once, with the NVIDIA libraries of the
/// Python wheels on its library path (`gpu_libs::library_path`); a failed restart just goes on
/// (the libraries are then looked for where the loader looks).
#[cfg(feature = "cuda")]
fn restart_with_gpu_libraries() {
    use host::backend::gpu_libs;
    use std::os::unix::process::CommandExt;
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a.contains("cuda") || a == "gpu-info") {
        return;
    }
    if let Some(path) = gpu_libs::library_path() {
        let err = std::process::Command::new("/proc/self/exe")
            .args(&args[1..])
            .env("LD_LIBRARY_PATH", path)
            .env(gpu_libs::BYOL_LIBRARY_PATH_SET, "1")
            .exec();
        eprintln!(
            "note: could not restart with the GPU libraries' folders on the library path: {err}"
        );
    }
}

/// A `--threads` flag's count: at least one worker thread.
fn check_threads_flag(threads: Option<usize>) -> Result<(), Error> {
    match threads {
        Some(0) => Err(Error::InvalidArgument(
            "--threads: expected at least 1 worker thread (leave it out for all cores), got 0"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Runs this process's parallel work (the step's and the augmentations') on `threads` workers.
fn use_threads(threads: usize) -> Result<(), Error> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// The collective of a `--distributed` run.
#[cfg(feature = "mpi")]
fn collective() -> Result<std::sync::Arc<dyn host::dist::Collective>, Error> {
    Ok(std::sync::Arc::new(host::dist::mpi::Mpi::init()?))
}

#[cfg(not(feature = "mpi"))]
fn collective() -> Result<std::sync::Arc<dyn host::dist::Collective>, Error> {
    Err(Error::InvalidArgument(
        "--distributed needs MPI: build with `cargo build --release -p host --features mpi` (Debian: apt install libopenmpi-dev openmpi-bin libclang-dev) and start it with `mpirun -np N target/release/host train --distributed …`".into(),
    ))
}

fn train(args: &TrainArgs, matches: &ArgMatches) -> Result<(), Error> {
    let (cfg, out, mut threads) = args.config(matches)?;
    host::train::check_device(args.device)?;
    if matches!(args.device, Device::Cpu) && args.precision != host::backend::Precision::F32 {
        return Err(Error::InvalidArgument(format!(
            "--precision {}: tensor-core precision is a GPU's; the CPU computes in f32 (give --device cuda, or leave --precision out)",
            format!("{:?}", args.precision).to_lowercase()
        )));
    }
    let replicas = match args.distributed {
        true => Some(host::train::Replicas {
            collective: collective()?,
            sync_batchnorm: !args.per_replica_batchnorm,
        }),
        false => None,
    };
    if let (Some(r), None) = (&replicas, threads) {
        // The cores shared by the ranks on this machine (Open MPI says how many there are).
        let local: usize = std::env::var("OMPI_COMM_WORLD_LOCAL_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(r.collective.world());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        threads = Some((cores / local.max(1)).max(1));
    }
    if let Some(t) = threads {
        use_threads(t)?;
    }
    let opts = RunOptions {
        out: out.clone(),
        resume: args.resume.as_deref().map(host::config::checkpoint_path),
        stop_after_epochs: args.stop_after_epochs,
        progress: true,
        replicas,
        device: args.device,
        precision: args.precision,
        augment_on: match (args.augment_on.as_str(), args.device) {
            ("gpu", Device::Cpu) => {
                return Err(Error::InvalidArgument(
                    "--augment-on gpu needs --device cuda: on the CPU the worker threads already make the views".into(),
                ))
            }
            ("gpu", _) => host::train::AugmentOn::Device,
            _ => host::train::AugmentOn::Workers,
        },
    };
    match &opts.replicas {
        // A rank's error ends every rank, so that none waits forever in a collective.
        Some(r) if r.collective.world() > 1 => {
            let c = r.collective.clone();
            run_training(&cfg, &out, &opts).inspect_err(|e| {
                eprintln!("error (rank {} of {}): {e}", c.rank(), c.world());
                c.abort(1)
            })
        }
        _ => run_training(&cfg, &out, &opts),
    }
}

fn run_training(cfg: &TrainConfig, out: &Path, opts: &RunOptions) -> Result<(), Error> {
    let lead = opts
        .replicas
        .as_ref()
        .is_none_or(|r| r.collective.rank() == 0);
    if !lead {
        host::train::train(cfg, opts)?;
        return Ok(());
    }
    if let Some(r) = &opts.replicas {
        eprintln!(
            "data-parallel: {} ranks × {}, {} BatchNorm",
            r.collective.world(),
            counted(rayon::current_num_threads(), "thread"),
            if r.sync_batchnorm {
                "cross-replica"
            } else {
                "per-replica"
            }
        );
    }
    eprintln!(
        "BYOL: {} (width {}, {} stem, {} init{}) on {}{}, {} of batch {}, {} → {}",
        cfg.model.arch,
        cfg.model.width,
        cfg.model.stem,
        cfg.model.init,
        match cfg.model.zero_residual_from_stage() {
            None => String::new(),
            Some(1) => ", residual branches from zero".into(),
            Some(4) => ", residual branches of stage 4 from zero".into(),
            Some(s) => format!(", residual branches of stages {s}–4 from zero"),
        },
        cfg.data.dataset,
        if cfg.data.dataset == "synthetic" {
            format!(
                " ({} train / {} held-out images)",
                cfg.data.train_size, cfg.data.test_size
            )
        } else {
            String::new()
        },
        counted(cfg.optim.epochs, "epoch"),
        cfg.optim.batch_size,
        counted(rayon::current_num_threads(), "thread"),
        out.display()
    );
    // A field the run does not read shows as "–", not as a value it ignores.
    let unread = cfg.unread_fields();
    let shown = |field: &str, value: &dyn std::fmt::Display| {
        if unread.iter().any(|(f, _)| *f == field) {
            "–".to_string()
        } else {
            value.to_string()
        }
    };
    let tau = match (cfg.ablation.target_network, cfg.ablation.tau_constant) {
        (false, _) => "–".to_string(),
        (true, Some(t)) => format!("{t} (constant)"),
        (true, None) if cfg.optim.tau_end == cfg.optim.tau_base => {
            format!("{} (constant)", cfg.optim.tau_base)
        }
        (true, None) => format!("{} → {}", cfg.optim.tau_base, cfg.optim.tau_end),
    };
    eprintln!(
        "  recipe {}: {} lr {}·batch/256, weight decay {:e}{}, τ {}, target {}, blur {}/{}, warm-up {}, projector/predictor hidden {}/{}",
        cfg.recipe,
        cfg.optim.optimizer,
        cfg.optim.base_lr,
        cfg.optim.weight_decay,
        if cfg.optim.optimizer == "lars" {
            format!(", η {}{}", cfg.optim.lars_eta, if cfg.optim.lars_clip { " clipped" } else { "" })
        } else {
            String::new()
        },
        tau,
        shown("optim.target_init", &cfg.optim.target_init),
        shown("augment.blur_t", &cfg.augment.blur_t),
        shown("augment.blur_t_prime", &cfg.augment.blur_t_prime),
        counted(cfg.optim.warmup_epochs, "epoch"),
        cfg.model.projector_hidden,
        shown("model.predictor_hidden", &cfg.model.predictor_hidden)
    );
    let ablations = cfg.ablations();
    if !ablations.is_empty() {
        eprintln!("  ablation: {}", ablations.join(", "));
    }
    // A preset's ten epochs of warm-up with a shorter --epochs is easy to ask for by accident.
    if cfg.optim.warmup_epochs >= cfg.optim.epochs {
        eprintln!(
            "  the warm-up ({}) is not shorter than the run: the learning rate rises through all of it and never decays (--warmup-epochs sets it)",
            counted(cfg.optim.warmup_epochs, "epoch")
        );
    }
    // Running the quick start twice should work, so an earlier run in the folder is replaced,
    // not refused; the line gives its owner until this run's first checkpoint to keep the weights.
    if opts.resume.is_none() && out.join(host::config::CHECKPOINT).exists() {
        eprintln!(
            "  {} holds an earlier run, which this one replaces: its config, metrics and evaluations now, its checkpoint when this run saves its first (stop before then to keep it; --out DIR writes elsewhere)",
            out.display()
        );
    }
    let s = host::train::train(cfg, opts)?;
    if s.epochs.is_empty() && opts.resume.is_some() {
        let more = if s.epochs_before < cfg.optim.epochs {
            format!(
                "; --resume without --stop-after-epochs (or with more than {}) continues it",
                s.epochs_before
            )
        } else {
            ": it is finished; --out DIR starts a new run".into()
        };
        println!(
            "\nnothing to train: {} holds {} of its {} epochs{more}",
            s.out.display(),
            s.epochs_before,
            cfg.optim.epochs
        );
        return Ok(());
    }
    println!("\nsummary ({})", s.out.display());
    println!("  epoch   loss     kNN top-1   std·√d   eff. rank");
    if let Some(k) = s.knn_init {
        println!("  init    -        {:6.2}%", 100.0 * k);
    }
    if let Some(k) = s.knn_init_data_bn {
        println!("  init, the data's BatchNorm statistics: {:.2}%", 100.0 * k);
    }
    for e in &s.epochs {
        let c = &e.collapse;
        let flag = if c.collapsed { "  collapsed" } else { "" };
        let spread = c.projection_std / c.healthy_std;
        println!(
            "  {:<6}  {:.4}   {:6.2}%     {spread:.3}    {:6.1}{flag}",
            e.epoch,
            e.loss,
            100.0 * e.knn_top1,
            c.effective_rank
        );
    }
    if let (Some(k0), Some(last)) = (s.knn_init, s.epochs.last()) {
        let data_bn = s.knn_init_data_bn.map_or(String::new(), |k| {
            format!(" ({:.2}% with the data's BatchNorm statistics)", 100.0 * k)
        });
        println!(
            "  kNN top-1: {:.2}% at initialisation{data_bn} → {:.2}% trained",
            100.0 * k0,
            100.0 * last.knn_top1
        );
    }
    // A run stopped before its first epoch (`--stop-after-epochs 0`) measured no throughput.
    if !s.epochs.is_empty() {
        println!(
            "  throughput {:.0} images/s (two views each)",
            s.images_per_s
        );
    }
    // Where a user goes from here: the files, and the commands that read them.
    let (out, done) = (s.out.display(), s.epochs_before + s.epochs.len());
    if done < cfg.optim.epochs {
        let total = cfg.optim.epochs;
        println!("  stopped after {done} of {total} epochs: host train --resume {out} goes on");
    }
    let checkpoint = s.out.join(host::config::CHECKPOINT);
    let (metrics, plot) = (host::config::METRICS, host::config::PLOT);
    println!("  written: {}, {metrics}, {plot}", checkpoint.display());
    println!(
        "  next: host eval linear {out} · host export {out} encoder.safetensors · \
         host plot {out} OTHER_RUN (side by side)"
    );
    Ok(())
}

/// "1 epoch", "8 epochs": the banner is the first thing a user reads.
fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A checkpoint's networks, state, configuration and data.
fn open_run(run: &Path) -> Result<(host::byol::Byol, host::byol::ByolState, TrainConfig), Error> {
    let path = &host::config::existing_checkpoint(run)?;
    let cfg = host::config::saved_config(path)?;
    let byol = host::byol::Byol::new(cfg.byol_config()?)?;
    let (state, _) = checkpoint::load(path, &byol)?;
    Ok((byol, state, cfg))
}

/// A run's network and state on `backend` (checkpoints are read on the host, then uploaded).
type RunOn<B> = (host::byol::Byol<B>, host::byol::ByolState<B>, TrainConfig);

fn open_run_on<B: Backend>(run: &Path, backend: B) -> Result<RunOn<B>, Error> {
    let (_, host_state, cfg) = open_run(run)?;
    let byol = host::byol::Byol::on(backend, cfg.byol_config()?)?;
    let state = host_state.to_backend(&byol.backend)?;
    Ok((byol, state, cfg))
}

/// A run on `backend` with its data set's splits (read from `data_dir` when given) and the
/// augmenter that normalises their images as in training.
type RunWithData<B> = (
    host::byol::Byol<B>,
    host::byol::ByolState<B>,
    TrainConfig,
    host::data::Dataset,
    host::data::Dataset,
    host::data::augment::Augmenter,
);

/// `adjust` changes the run's configuration (an evaluation's own settings) before the data is
/// read, and may refuse the change.
fn open_run_with_data<B: Backend>(
    path: &Path,
    data_dir: Option<&Path>,
    adjust: &dyn Fn(&mut TrainConfig) -> Result<(), Error>,
    backend: B,
) -> Result<RunWithData<B>, Error> {
    let (byol, state, mut cfg) = open_run_on(path, backend)?;
    adjust(&mut cfg)?;
    let cfg = run_data(cfg, data_dir)?;
    let (train, test) = host::train::load_data(&cfg)?;
    let aug = host::train::augmenter(&train, &cfg)?;
    Ok((byol, state, cfg, train, test, aug))
}

/// `vote`: the kNN settings given as flags, laid over the run's monitor's (see
/// [`open_run_with_data`]).
fn eval_knn<B: Backend>(
    path: &Path,
    data_dir: Option<&Path>,
    vote: &dyn Fn(&mut TrainConfig) -> Result<(), Error>,
    data_batchnorm: bool,
    device: Device,
    backend: B,
) -> Result<(), Error> {
    let (byol, state, cfg, train, test, aug) = open_run_with_data(path, data_dir, vote, backend)?;
    let acc = host::train::monitor(&byol, &state, &train, &test, &aug, &cfg)?.knn_top1;
    println!(
        "kNN top-1 (k = {}, T = {}): {:.2}% on {} held-out images",
        cfg.monitor.knn_k,
        cfg.monitor.knn_temperature,
        100.0 * acc,
        test.len()
    );
    let mut record = serde_json::json!({
        "kind": "knn",
        "step": state.step,
        "knn_top1": acc,
        "held_out": test.len(),
        "k": cfg.monitor.knn_k,
        "temperature": cfg.monitor.knn_temperature,
    });
    if data_batchnorm {
        let part = (0, cfg.optim.batch_size); // one process: rank 0 takes whole batches
        let read =
            host::train::knn_with_data_statistics(&byol, &state, &train, &test, &aug, &cfg, part)?;
        if let Some(acc) = read {
            println!(
                "  with the data's BatchNorm statistics: {:.2}%",
                100.0 * acc
            );
            record["knn_top1_data_bn"] = acc.into();
        }
    }
    record_evaluation(path, device, record);
    Ok(())
}

/// Appends an evaluation's record to `evaluations.jsonl` beside the run's checkpoint, so that
/// the figure outlives the terminal. The record names the checkpoint's step, since a run may
/// train on (`--resume`) and be read again, and the device, since GPU and CPU round apart.
/// The file is rewritten whole through the atomic write. The evaluation has been printed by
/// then, so a folder that cannot be written (read-only, shared) gets a warning, not a failure.
fn record_evaluation(run: &Path, device: Device, mut record: serde_json::Value) {
    record["device"] = device.to_string().into();
    let recorded = host::config::existing_checkpoint(run).and_then(|checkpoint| {
        let file = checkpoint.with_file_name(host::config::EVALUATIONS);
        let mut text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(&file, e)),
        };
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n'); // a file edited by hand may lack its last newline
        }
        text.push_str(&format!("{record}\n"));
        host::files::write_atomic(&file, text.as_bytes()).map(|()| file)
    });
    match recorded {
        Ok(file) => println!("  recorded in {}", file.display()),
        Err(e) => eprintln!("warning: the result was not recorded: {e}"),
    }
}

fn eval_linear<B: Backend>(
    path: &Path,
    data_dir: Option<&Path>,
    epochs: usize,
    device: Device,
    backend: B,
) -> Result<(), Error> {
    if epochs == 0 {
        return Err(Error::InvalidArgument(
            "--epochs: expected at least 1 epoch of the linear classifier, got 0".into(),
        ));
    }
    let unchanged = |_: &mut TrainConfig| Ok(());
    let (byol, state, _, train, test, aug) =
        open_run_with_data(path, data_dir, &unchanged, backend)?;
    // The encoder's parameters and statistics lead the online buffers.
    let (params, running) = (&state.online, &state.online_running);
    let (train_idx, test_idx) = (host::train::labelled(&train), host::train::labelled(&test));
    let x = host::eval::embed(
        &byol.backend,
        &byol.encoder,
        params,
        running,
        &train,
        &train_idx,
        &aug,
        256,
    )?;
    let tx = host::eval::embed(
        &byol.backend,
        &byol.encoder,
        params,
        running,
        &test,
        &test_idx,
        &aug,
        256,
    )?;
    let y: Vec<u16> = train_idx.iter().map(|&i| train.labels[i]).collect();
    let ty: Vec<u16> = test_idx.iter().map(|&i| test.labels[i]).collect();
    let lin = host::eval::LinearConfig {
        epochs,
        ..Default::default()
    };
    let r = host::eval::linear_eval(
        &x,
        &y,
        &tx,
        &ty,
        byol.encoder.repr_dim(),
        train.classes,
        &lin,
    );
    println!(
        "linear evaluation: {:.2}% top-1 on {} held-out images (lr {} chosen on a validation split at {:.2}%)",
        100.0 * r.test_accuracy,
        ty.len(),
        r.lr,
        100.0 * r.val_accuracy
    );
    let record = serde_json::json!({
        "kind": "linear",
        "step": state.step,
        "linear_top1": r.test_accuracy,
        "held_out": ty.len(),
        // The f32's shortest decimal (0.4, not 0.4000000059604645 as a widened f64 prints).
        "lr": r.lr.to_string().parse::<f64>().expect("a float's display parses"),
        "validation_top1": r.val_accuracy,
        "epochs": epochs,
    });
    record_evaluation(path, device, record);
    Ok(())
}

/// `data_flags`: the data fields given as flags, laid over the configuration file's (or the
/// default data set's).
fn export_data(out: &Path, config: Option<&Path>, data_flags: &toml::Table) -> Result<(), Error> {
    let file = match config {
        Some(path) => host::config::read_config(path)?,
        None => host::config::ConfigFile::default(),
    };
    let cfg = TrainConfig {
        data: host::config::overlay(&file.train.data, data_flags)
            .map_err(Error::InvalidArgument)?,
        ..TrainConfig::default()
    };
    let file = config.map(|path| (path, &file.table));
    check_settings(&cfg, false, &data_flags_of(data_flags), file)?;
    let (train, test) = host::train::load_data(&cfg)?;
    host::data::write_splits(out, &train, &test)?;
    println!(
        "wrote {} training and {} held-out images of {} to {}",
        train.len(),
        test.len(),
        cfg.data.dataset,
        out.display()
    );
    Ok(())
}

/// `data_flags`: the data fields given as flags, laid over the run's data configuration.
fn embed(run: &Path, out: &Path, projections: bool, data_flags: &toml::Table) -> Result<(), Error> {
    host::embed::check_out(out)?;
    let (byol, state, cfg) = open_run(run)?;
    let data = TrainConfig {
        data: host::config::overlay(&cfg.data, data_flags).map_err(Error::InvalidArgument)?,
        ..cfg.clone()
    };
    // The run's own data set normalises the images; a --data-dir for that same set says
    // where it is now.
    let moved = data_flags.contains_key("data_dir") && data.data.dataset == cfg.data.dataset;
    let cfg = run_data(cfg, data.data.data_dir.as_deref().filter(|_| moved))?;
    let (pretraining, held_out) = host::train::load_data(&cfg)?;
    let aug = host::train::augmenter(&pretraining, &cfg)?;
    let (train, test) = if data == cfg {
        (pretraining, held_out)
    } else {
        check_settings(&data, false, &data_flags_of(data_flags), None)?;
        host::train::load_data(&data)?
    };
    let splits = [("train", &train), ("test", &test)]
        .into_iter()
        .map(|(name, data)| {
            host::embed::embed_split(&byol, &state, name, data, &aug, projections, true)
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let meta = std::collections::HashMap::from([
        ("dataset".to_string(), train.name.clone()),
        ("classes".to_string(), train.classes.to_string()),
        ("checkpoint".to_string(), run.display().to_string()),
    ]);
    host::embed::write(out, &splits, &byol, meta)?;
    println!(
        "wrote {}-d representations{} of {} training and {} held-out images to {}",
        byol.encoder.repr_dim(),
        if projections { " and projections" } else { "" },
        train.len(),
        test.len(),
        out.display()
    );
    Ok(())
}

/// A run's configuration reading its data set from `data_dir` when given, else from the
/// folder it recorded; either must be there.
fn run_data(cfg: TrainConfig, data_dir: Option<&Path>) -> Result<TrainConfig, Error> {
    let cfg = match data_dir {
        Some(dir) => TrainConfig {
            data: DataConfig {
                data_dir: Some(dir.into()),
                ..cfg.data
            },
            ..cfg
        },
        None => cfg,
    };
    let origin = match data_dir {
        Some(_) => Origin::Flag,
        None => Origin::Unknown,
    };
    check_data_dir(&cfg, data_dir.is_none()).map_err(|e| e.set_in(origin))?;
    Ok(cfg)
}

/// Refuses, before any work, a data set folder that is not there. `recorded`: the folder is
/// the one a run recorded, so the error says how to point elsewhere.
fn check_data_dir(cfg: &TrainConfig, recorded: bool) -> Result<(), Error> {
    let dir = cfg.data.data_dir.as_deref();
    let Some(dir) = dir.filter(|d| cfg.data.dataset != "synthetic" && !d.is_dir()) else {
        return Ok(());
    };
    let relative = match std::env::current_dir() {
        Ok(cwd) if dir.is_relative() => format!(" (relative to {})", cwd.display()),
        _ => String::new(),
    };
    let hint = if recorded {
        "; the run read its data set there: pass --data-dir with where it is now"
    } else {
        ""
    };
    Err(Error::setting(
        "data.data_dir",
        format!("{}: no such folder{relative}{hint}", dir.display()),
    ))
}

/// Refuses a field the run does not read ([`TrainConfig::unread_fields`]) that the user set:
/// its value would be dropped without a word (`--image-size 96` on CIFAR-10 would train at
/// 32×32). A flag counts when given. A file's field counts only in `[data]`, whose defaults do
/// not depend on the recipe, and only when it differs from the default: a run's `config.json`
/// writes every field, those its run does not read included, and is meant to be given back as
/// `--config`.
fn check_fields_read(
    cfg: &TrainConfig,
    flags: &toml::Table,
    file: Option<(&Path, &toml::Table)>,
) -> Result<(), Error> {
    let data = |c: &TrainConfig| toml::Table::try_from(&c.data).expect("a config is a TOML table");
    let (ours, default) = (data(cfg), data(&TrainConfig::default()));
    let file_sets = |field: &str| match (field.strip_prefix("data."), file) {
        (Some(name), Some((_, table))) => sets(table, field) && ours.get(name) != default.get(name),
        _ => false,
    };
    match (cfg.unread_fields().into_iter()).find(|(f, _)| sets(flags, f) || file_sets(f)) {
        Some((field, why)) => {
            let name = host::error::field_name(field);
            Err(Error::setting(field, format!("{name} {why}")))
        }
        None => Ok(()),
    }
}

/// Checks a configuration before any work: its settings, that the run reads each field the
/// user set, then that its data folder is there (`recorded`: the folder a resumed run
/// recorded). An error names the flag, or the file and its key, that set the value (`flags`
/// and `file` as [`host::config::attribute`] takes them).
fn check_settings(
    cfg: &TrainConfig,
    recorded: bool,
    flags: &toml::Table,
    file: Option<(&Path, &toml::Table)>,
) -> Result<(), Error> {
    (cfg.validate())
        .and_then(|()| check_fields_read(cfg, flags, file))
        .and_then(|()| check_data_dir(cfg, recorded))
        .map_err(|e| host::config::attribute(e, flags, file))
}

/// The data fields given as a command's flags (`given_fields` of a [`DataConfig`]) under
/// their section, as [`host::config::attribute`] looks them up.
fn data_flags_of(data_flags: &toml::Table) -> toml::Table {
    toml::Table::from_iter([("data".to_string(), data_flags.clone().into())])
}

fn export(run: &Path, out: &Path) -> Result<(), Error> {
    let (byol, state, cfg) = open_run(run)?;
    checkpoint::export_encoder(out, &byol, &state)?;
    println!(
        "wrote the online encoder ({}, width {}) to {}",
        cfg.model.arch,
        cfg.model.width,
        out.display()
    );
    Ok(())
}

#[cfg(feature = "cuda")]
fn gpu_info() -> Result<(), Error> {
    use host::backend::gpu_libs;
    println!("library folders searched:");
    let folders = gpu_libs::search_folders();
    for f in &folders {
        println!("  {}", f.display());
    }
    for (name, path) in gpu_libs::locate(&folders) {
        match path {
            Some(p) => println!("{name}: {}", p.display()),
            None => println!("{name}: not in those folders (left to the loader's own search)"),
        }
    }
    for (name, version) in gpu_libs::loadable_versions() {
        match version {
            Ok(v) => println!("{name} {v} loads"),
            Err(why) => println!("{name}: {why}"),
        }
    }
    let gpu = host::Cuda::new(0)?;
    println!(
        "GPU 0: {}, {:.1} GiB; {}; {} kernels loaded from the embedded PTX",
        gpu.device_name()?,
        gpu.total_memory()? as f64 / (1u64 << 30) as f64,
        gpu.library_versions()?,
        host::backend::ptx::KERNEL_NAMES.len()
    );
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn gpu_info() -> Result<(), Error> {
    Err(Error::InvalidArgument(
        "this binary was built without the `cuda` feature; rebuild with `--features cuda`".into(),
    ))
}

/// `host plot`: one run's training.png, or several runs side by side; returns the image's path.
fn plot(runs: &[PathBuf], out: Option<PathBuf>) -> host::error::Result<PathBuf> {
    let metrics = runs
        .iter()
        .map(|run| host::config::existing_metrics(run))
        .collect::<host::error::Result<Vec<_>>>()?;
    // One run draws into its own folder, several into the working folder.
    let (default_dir, default_name) = match runs {
        [run] => (run.clone(), host::config::PLOT),
        _ => (PathBuf::new(), "comparison.png"),
    };
    let out = match out {
        Some(dir) if dir.is_dir() || dir.as_os_str().to_string_lossy().ends_with('/') => {
            dir.join(default_name)
        }
        Some(file) => file,
        None => default_dir.join(default_name),
    };
    if let [metrics] = &metrics[..] {
        host::plot::plot_metrics(metrics, &out)?;
    } else {
        let named: Vec<(String, PathBuf)> = runs
            .iter()
            .map(|run| run.display().to_string())
            .zip(metrics)
            .collect();
        host::plot::plot_comparison(&named, &out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn try_config_of(args: &[&str]) -> Result<(TrainConfig, PathBuf, Option<usize>), Error> {
        let argv = ["host", "train"].iter().chain(args);
        let matches = Cli::command().try_get_matches_from(argv).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let Command::Train(a) = cli.command else {
            panic!("not train")
        };
        let given = given_fields(&a.train, matches.subcommand_matches("train").unwrap());
        let (c, out, threads, _) = a.assemble(&given)?;
        Ok((c, out, threads))
    }

    fn config_of(args: &[&str]) -> (TrainConfig, PathBuf, Option<usize>) {
        try_config_of(args).unwrap()
    }

    /// `--help` is the reference of every flag: none may be listed without a sentence.
    #[test]
    fn every_flag_should_have_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                if help.trim().is_empty() && !arg.is_hide_set() {
                    missing.push(format!("{path} --{}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "host", &mut missing);
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }

    #[test]
    fn every_train_flag_should_reach_the_configuration() {
        let (c, out, threads) = config_of(&[
            "--dataset",
            "cifar10",
            "--data-dir",
            "/d",
            "--image-size",
            "48",
            "--train-size",
            "7",
            "--test-size",
            "3",
            "--limit-train",
            "40",
            "--limit-test",
            "20",
            "--arch",
            "resnet50",
            "--stem",
            "imagenet",
            "--width",
            "8",
            "--epochs",
            "5",
            "--batch-size",
            "4",
            "--base-lr",
            "0.3",
            "--weight-decay",
            "0.01",
            "--tau-base",
            "0.9",
            "--warmup-epochs",
            "1",
            "--projector-hidden",
            "64",
            "--projection-dim",
            "32",
            "--predictor-hidden",
            "16",
            "--seed",
            "9",
            "--tau-constant",
            "0",
            "--predictor",
            "false",
            "--predictor-lr-mult",
            "10",
            "--projector-lr-mult",
            "1.5",
            "--augmentations",
            "crop-only",
            "--closed-form-predictor",
            "--projector-depth",
            "3",
            "--predictor-depth",
            "1",
            "--target-network",
            "false",
            "--contrastive-beta",
            "0.5",
            "--contrastive-temperature",
            "0.2",
            "--loss-normalisation",
            "layernorm",
            "--optimizer",
            "adamw",
            "--lars-eta",
            "0.05",
            "--lars-clip",
            "false",
            "--target-init",
            "independent",
            "--tau-end",
            "0.995",
            "--blur-t",
            "0.5",
            "--blur-t-prime",
            "0.25",
            "--crop-min-scale",
            "0.3",
            "--momentum",
            "0.8",
            "--out",
            "/o",
            "--threads",
            "3",
        ]);
        let expected = TrainConfig::default().with(|c| {
            c.data.dataset = "cifar10".into();
            c.data.data_dir = Some("/d".into());
            c.data.image_size = 48;
            c.data.train_size = 7;
            c.data.test_size = 3;
            c.data.limit_train = Some(40);
            c.data.limit_test = Some(20);
            c.model.arch = "resnet50".into();
            c.model.stem = "imagenet".into();
            c.model.width = 8;
            c.optim.epochs = 5;
            c.optim.batch_size = 4;
            c.optim.base_lr = 0.3;
            c.optim.weight_decay = 0.01;
            c.optim.tau_base = 0.9;
            c.optim.warmup_epochs = 1;
            c.model.projector_hidden = 64;
            c.model.projection_dim = 32;
            c.model.predictor_hidden = 16;
            c.seed = 9;
            c.ablation.tau_constant = Some(0.0);
            c.ablation.predictor = false;
            c.ablation.predictor_lr_mult = 10.0;
            c.ablation.projector_lr_mult = 1.5;
            c.augment.augmentations = "crop-only".into();
            c.ablation.closed_form_predictor = true;
            c.model.projector_depth = 3;
            c.model.predictor_depth = 1;
            c.ablation.target_network = false;
            c.ablation.contrastive_beta = 0.5;
            c.ablation.contrastive_temperature = 0.2;
            c.ablation.loss_normalisation = "layernorm".into();
            c.optim.optimizer = "adamw".into();
            c.optim.lars_eta = 0.05;
            c.optim.lars_clip = false;
            c.optim.target_init = "independent".into();
            c.optim.tau_end = 0.995;
            c.augment.blur_t = 0.5;
            c.augment.blur_t_prime = 0.25;
            c.augment.crop_min_scale = 0.3;
            c.optim.momentum = 0.8;
        });
        assert_eq!(c, expected);
        assert_eq!((out, threads), (PathBuf::from("/o"), Some(3)));
        assert_eq!(c.optimizer().unwrap().momentum, 0.8);
    }

    #[test]
    fn the_recipe_should_follow_the_images_unless_one_is_named() {
        let recipe = |args: &[&str]| config_of(args).0.recipe;
        assert_eq!(recipe(&[]), "small");
        assert_eq!(recipe(&["--dataset", "stl10", "--data-dir", "d"]), "small");
        assert_eq!(recipe(&["--dataset", "folder", "--data-dir", "d"]), "small");
        let large = [
            "--dataset",
            "folder",
            "--data-dir",
            "d",
            "--image-size",
            "128",
        ];
        assert_eq!(recipe(&large), "imagenet-40");
        let (c, _, _) = config_of(&[&large[..], &["--recipe", "small", "--epochs", "3"]].concat());
        assert_eq!((c.recipe.as_str(), c.optim.epochs), ("small", 3));
        assert_eq!(c.optim.lars_eta, host::recipe::SMALL.lars_eta);
        let both = try_config_of(&["--preset", "40", "--recipe", "small"]);
        assert!(both.unwrap_err().to_string().contains("not both"));
    }

    #[test]
    fn a_config_file_should_lay_its_fields_over_its_recipe() {
        let dir = std::env::temp_dir().join(format!("byol-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.toml");
        std::fs::write(&path, "recipe = \"imagenet-100\"\n[optim]\nepochs = 7\n").unwrap();
        let file = path.to_str().unwrap();
        let (c, _, _) = config_of(&["--config", file]);
        let mut expected = TrainConfig::default();
        host::recipe::named("imagenet-100")
            .unwrap()
            .apply(&mut expected);
        expected.optim.epochs = 7;
        assert_eq!(c, expected);
        // A data flag makes the recipe be chosen again; the file's named recipe still holds.
        assert_eq!(
            config_of(&["--config", file, "--dataset", "mnist"])
                .0
                .recipe,
            "imagenet-100"
        );
        // Images above 96 px in the file choose the official recipe.
        let folder = "[data]\ndataset = \"folder\"\nimage_size = 160\n[model]\nwidth = 8\n";
        std::fs::write(&path, folder).unwrap();
        let (c, _, _) = config_of(&["--config", file]);
        assert_eq!(
            (c.recipe.as_str(), c.model.width, c.optim.lars_eta),
            ("imagenet-40", 8, 1e-3)
        );
        // Every field written out is a configuration file of the same run.
        std::fs::write(&path, toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(config_of(&["--config", file]).0, c);
        // The flat form of earlier versions (and of their checkpoints) still reads the same.
        let flat = "dataset = \"folder\"\nimage_size = 160\nwidth = 8\n";
        std::fs::write(&path, flat).unwrap();
        assert_eq!(config_of(&["--config", file]).0, c);
        // [run] sets the output folder and the threads; anything else in it is an error.
        std::fs::write(&path, "[run]\nout = \"/r\"\nthreads = 2\n").unwrap();
        let (_, out, threads) = config_of(&["--config", file]);
        assert_eq!((out, threads), (PathBuf::from("/r"), Some(2)));
        std::fs::write(&path, "[run]\nseed = 2\n").unwrap();
        let e = try_config_of(&["--config", file]).unwrap_err().to_string();
        assert!(e.contains("unknown field `seed` in [run]"), "{e}");
        std::fs::write(&path, "[optim]\nepoch = 2\n").unwrap();
        let e = try_config_of(&["--config", file]).unwrap_err().to_string();
        assert!(e.contains("epoch") && e.contains("run.toml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_small_recipes_tau_base_should_follow_epochs_given_by_flag_or_file() {
        let tau = |args: &[&str]| config_of(args).0.optim.tau_base;
        assert_eq!(tau(&[]), 0.9);
        assert_eq!(tau(&["--epochs", "200"]), 0.9);
        assert_eq!(tau(&["--epochs", "201", "--dataset", "mnist"]), 0.99);
        // A τ_base given beside the epochs is kept; an official preset has its own.
        assert_eq!(tau(&["--epochs", "201", "--tau-base", "0.9"]), 0.9);
        assert_eq!(tau(&["--preset", "40", "--epochs", "5"]), 0.97);
        let dir = std::env::temp_dir().join(format!("byol-tau-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.toml");
        let file = path.to_str().unwrap();
        std::fs::write(&path, "[optim]\nepochs = 210\n").unwrap();
        assert_eq!(tau(&["--config", file]), 0.99);
        assert_eq!(tau(&["--config", file, "--epochs", "10"]), 0.9);
        std::fs::write(&path, "[optim]\nepochs = 210\ntau_base = 0.9\n").unwrap();
        assert_eq!(tau(&["--config", file]), 0.9);
        let small = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/small.toml");
        assert_eq!(tau(&["--config", small, "--epochs", "201"]), 0.99);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_help_and_the_small_config_should_give_the_recipes_steps_as_the_recipe_has_them() {
        // The small recipe's τ_base and η change with the run's length and batch; `train --help`
        // and configs/small.toml say where, in words that must move when the recipe's steps do.
        use host::recipe::SMALL;
        let (long_run, tau) = SMALL.tau_base_long_run.unwrap();
        let (large_batch, eta) = SMALL.lars_eta_large_batch.unwrap();
        let tau_words = |sep: &str| {
            let (base, below) = (SMALL.tau_base, long_run - 1);
            format!("{base} up to {below} epochs{sep}{tau} from {long_run} up")
        };
        let eta_words = |sep: &str| {
            let base = SMALL.lars_eta;
            format!("{base} below batch {large_batch}{sep}{eta} from {large_batch} up")
        };
        let train = Cli::command().find_subcommand("train").unwrap().clone();
        let help = |id: &str| {
            let arg = train.get_arguments().find(|a| a.get_id() == id).unwrap();
            arg.get_help().unwrap().to_string()
        };
        let small = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/small.toml");
        let small = std::fs::read_to_string(small).unwrap();
        for (text, words) in [
            (help("tau_base"), tau_words(" and ")),
            (help("lars_eta"), eta_words(" and ")),
            (small.clone(), tau_words(", ")),
            (small, eta_words(", ")),
        ] {
            assert!(text.contains(&words), "expected {words:?} in {text}");
        }
    }

    #[test]
    fn the_small_recipes_eta_should_follow_a_batch_given_by_flag_or_file() {
        let eta = |args: &[&str]| config_of(args).0.optim.lars_eta;
        assert_eq!(eta(&[]), 0.05);
        assert_eq!(eta(&["--batch-size", "32"]), 0.05);
        assert_eq!(eta(&["--batch-size", "128"]), 0.02);
        assert_eq!(eta(&["--batch-size", "512", "--dataset", "mnist"]), 0.02);
        // An η given beside the batch is kept; an official preset has one η at every batch.
        assert_eq!(eta(&["--batch-size", "128", "--lars-eta", "0.05"]), 0.05);
        assert_eq!(eta(&["--preset", "40", "--batch-size", "128"]), 1e-3);
        let dir = std::env::temp_dir().join(format!("byol-eta-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.toml");
        let file = path.to_str().unwrap();
        std::fs::write(&path, "[optim]\nbatch_size = 256\n").unwrap();
        assert_eq!(eta(&["--config", file]), 0.02);
        assert_eq!(eta(&["--config", file, "--batch-size", "64"]), 0.05);
        std::fs::write(&path, "[optim]\nbatch_size = 256\nlars_eta = 0.05\n").unwrap();
        assert_eq!(eta(&["--config", file]), 0.05);
        // The repository's recipe file leaves η to the batch as well.
        let small = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/small.toml");
        assert_eq!(eta(&["--config", small, "--batch-size", "128"]), 0.02);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_banner_should_list_exactly_the_ablation_knobs_turned() {
        assert!(config_of(&["--epochs", "3"]).0.ablations().is_empty());
        let (c, _, _) = config_of(&[
            "--predictor",
            "false",
            "--contrastive-beta",
            "1",
            "--projector-depth",
            "1",
        ]);
        assert_eq!(
            c.ablations(),
            [
                "predictor=false",
                "depth(projector,predictor)=1,2",
                "contrastive_beta=1 (α 0.1)"
            ]
        );
    }

    #[test]
    fn presets_and_defaults_should_apply_under_explicit_flags() {
        let (c, out, threads) = config_of(&[]);
        assert_eq!(
            (c, out, threads),
            (TrainConfig::default(), PathBuf::from("runs/byol"), None)
        );
        let (c, _, _) = config_of(&["--preset", "1000", "--epochs", "2"]);
        assert_eq!(
            (
                c.optim.epochs,
                c.optim.base_lr,
                c.optim.weight_decay,
                c.optim.tau_base,
                c.optim.warmup_epochs
            ),
            (2, 0.2, 1.5e-6, 0.996, 10)
        );
        // A preset is the whole official recipe, whatever the default recipe is.
        let (c, _, _) = config_of(&["--preset", "40"]);
        let mut official = TrainConfig::default();
        host::recipe::named("imagenet-40")
            .unwrap()
            .apply(&mut official);
        assert_eq!(c, official);
        assert_eq!(config_of(&["--recipe", "imagenet-40"]).0, official);
        let fifty = try_config_of(&["--preset", "50"]).unwrap_err().to_string();
        assert!(fifty.contains("unknown preset"), "{fifty}");
    }
}

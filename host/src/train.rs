//! The training run: data, augmentation on a prefetch thread, the BYOL step with its
//! schedules, the kNN monitor after every epoch, metrics (JSONL), checkpoints and resuming.
//!
//! Files in the output folder: `metrics.jsonl` (one record per step and per epoch),
//! `checkpoint.safetensors` (after every epoch, written atomically), `config.json`, and at
//! the end `training.png` (loss, kNN accuracy, lr and τ).
//! A run is a pure function of its configuration: the seed fixes initialisation, data order
//! and augmentations, so with the same thread count two runs are bit-identical, and a run
//! resumed from an epoch's checkpoint continues exactly as the uninterrupted one.

use crate::byol::schedule::{learning_rate, tau_to};
use crate::byol::{
    closed_form, Byol, ByolConfig, LrMultipliers, Objective, Optimizer, OptimizerKind,
    PredictorKind,
};
use crate::checkpoint;
use crate::data::augment::{mix, Augmenter, ViewConfig};
use crate::data::formats::{self, UNLABELED};
use crate::data::{synthetic, Dataset};
use crate::error::{Error, Result};
use crate::eval::{diagnose, embed, knn_accuracy, Collapse};
use crate::nn::{Arch, ResNetConfig, Stem};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The checkpoint's name in a run folder.
pub const CHECKPOINT: &str = "checkpoint.safetensors";

/// The configuration's name in a run folder (JSON, a valid `--config` file).
pub const RUN_CONFIG: &str = "config.json";

/// The data sets [`load_data`] reads.
pub const DATASETS: [&str; 6] = [
    "synthetic",
    "cifar10",
    "cifar100",
    "stl10",
    "mnist",
    "folder",
];

/// Everything that defines a run, declared once: the serde fields are the configuration
/// file's and `config.json`'s keys, the clap arguments (`--base-lr` for `base_lr`) are `host
/// train`'s flags, and each doc comment is both the field's documentation and the flag's
/// help. A flag overrides the recipe and the file only when it is given (see
/// [`given_fields`]), so the clap defaults below are never used. The defaults are the
/// embedded data set with the small-image recipe: about five minutes on two cores.
///
/// Adding a knob: a field here (and its value in `Default`), the code that reads it, its test.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// synthetic (embedded), cifar10, cifar100, stl10 (pre-training on train + unlabelled),
    /// mnist, or folder (one subfolder per class).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub dataset: String,
    /// Folder of the data set's files (all but synthetic).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Side the folder data set's images are resized to.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub image_size: usize,
    /// Images in the synthetic training split.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub train_size: usize,
    /// Images in the synthetic held-out split.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub test_size: usize,
    /// Train on a seeded stratified subset of this many training images (any data set).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[arg(long)]
    pub limit_train: Option<usize>,
    /// Evaluate on a seeded stratified subset of this many held-out images (any data set).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[arg(long)]
    pub limit_test: Option<usize>,
    /// resnet18, resnet34 or resnet50.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub arch: String,
    /// cifar (3×3, no max-pool) or imagenet (7×7 stride 2, max-pool).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub stem: String,
    /// Channels of the first stage (torchvision: 64).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub width: usize,
    #[arg(long, default_value_t, hide_default_value = true)]
    pub epochs: usize,
    #[arg(long, default_value_t, hide_default_value = true)]
    pub batch_size: usize,
    /// Learning rate per 256 images (lr = base_lr · batch / 256).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub base_lr: f64,
    #[arg(long, default_value_t, hide_default_value = true)]
    pub weight_decay: f64,
    /// Target decay at step 0, rising to tau_end along a cosine.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub tau_base: f64,
    #[arg(long, default_value_t, hide_default_value = true)]
    pub warmup_epochs: usize,
    #[arg(long, default_value_t, hide_default_value = true)]
    pub projector_hidden: usize,
    #[arg(long, default_value_t, hide_default_value = true)]
    pub projection_dim: usize,
    #[arg(long, default_value_t, hide_default_value = true)]
    pub predictor_hidden: usize,
    /// Neighbours of the kNN monitor.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub knn_k: usize,
    /// Temperature of the kNN monitor's vote.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub knn_temperature: f64,
    /// Fixes initialisation, data order and augmentations.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub seed: u64,
    /// Ablation: a constant target decay instead of the cosine schedule (0: the target copies
    /// the online network every step; 1: it stays at its initialisation).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[arg(long)]
    pub tau_constant: Option<f64>,
    /// Ablation: whether the online network has a predictor (false: the online projection is
    /// compared with the target's directly).
    #[arg(long, action = clap::ArgAction::Set, default_value_t, hide_default_value = true)]
    pub predictor: bool,
    /// Ablation: the closed-form optimal linear predictor (least squares on each batch) in
    /// place of the learned one; needs batch size > projection dim.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value_t, hide_default_value = true)]
    pub closed_form_predictor: bool,
    /// Ablation: Linear layers of the projector (2 in the paper; 1 is a single Linear).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub projector_depth: usize,
    /// Ablation: Linear layers of the predictor.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub predictor_depth: usize,
    /// Ablation: whether ψ comes from a target network (false: the loss compares with the
    /// online projection itself, gradient included; with --contrastive-beta 1 --predictor
    /// false: SimCLR).
    #[arg(long, action = clap::ArgAction::Set, default_value_t, hide_default_value = true)]
    pub target_network: bool,
    /// Ablation: weight β of the contrastive (InfoNCE) term (paper §4.4); 0 is BYOL.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub contrastive_beta: f64,
    /// Temperature α of the contrastive term.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub contrastive_temperature: f64,
    /// Ablation: how predictions and targets are normalised in the loss: l2 (BYOL), none,
    /// layernorm or batchnorm.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub loss_normalisation: String,
    /// Ablation: learning-rate multiplier of the predictor (λ).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub predictor_lr_mult: f64,
    /// Ablation: learning-rate multiplier of the projector (μ).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub projector_lr_mult: f64,
    /// Augmentation set: full (the paper's T and T′), symmetric, no-colour, no-grayscale,
    /// no-blur, no-flip, crop-only, crop-flip, crop-colour, crop-blur.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub augmentations: String,
    /// The recipe the hyper-parameters start from: small, imagenet-40, imagenet-100,
    /// imagenet-300, imagenet-1000 [default: small for images of 96 px and below, else
    /// imagenet-40]. Fields set explicitly override it; it is recorded so a run says where it
    /// came from.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub recipe: String,
    /// lars (the paper's), sgd (momentum 0.9) or adamw (β₁ 0.9).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub optimizer: String,
    /// LARS trust coefficient η (1e-3 in the official code).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub lars_eta: f64,
    /// Cap LARS's per-tensor rate at the scheduled learning rate (LARC's clip mode).
    #[arg(long, action = clap::ArgAction::Set, default_value_t, hide_default_value = true)]
    pub lars_clip: bool,
    /// How the target network starts: independent (official) or copy (of the online one).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub target_init: String,
    /// Where the cosine τ schedule ends (1 in the paper).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub tau_end: f64,
    /// Probability of the gaussian blur in T (view 1; paper 1.0).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub blur_t: f64,
    /// Probability of the gaussian blur in T′ (view 2; paper 0.1).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub blur_t_prime: f64,
    /// Smallest area of the random resized crop, as a fraction of the image (paper 0.08).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub crop_min_scale: f64,
    /// Momentum of LARS and SGD, β₁ of AdamW (0.9 in the paper and the official code).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub momentum: f64,
}

/// The fields of `parsed` whose flags were given on the command line (`matches` are those of
/// the command that flattens [`TrainConfig`]), as a table to lay over a configuration.
pub fn given_fields(parsed: &TrainConfig, matches: &clap::ArgMatches) -> toml::Table {
    let all = toml::Table::try_from(parsed).expect("a config is a TOML table");
    all.into_iter()
        .filter(|(field, _)| {
            matches.value_source(field) == Some(clap::parser::ValueSource::CommandLine)
        })
        .collect()
}

impl Default for TrainConfig {
    /// The embedded data set with the small-image recipe ([`crate::recipe::SMALL`]).
    fn default() -> Self {
        let mut c = TrainConfig {
            dataset: "synthetic".into(),
            data_dir: None,
            image_size: 64,
            train_size: 5000,
            test_size: 1000,
            limit_train: None,
            limit_test: None,
            arch: "resnet18".into(),
            stem: "cifar".into(),
            width: 16,
            epochs: 18,
            batch_size: 128,
            base_lr: 0.45,
            weight_decay: 1e-6,
            tau_base: 0.97,
            warmup_epochs: 2,
            projector_hidden: 4096,
            projection_dim: 256,
            predictor_hidden: 4096,
            knn_k: 200,
            knn_temperature: 0.1,
            seed: 0,
            tau_constant: None,
            predictor: true,
            closed_form_predictor: false,
            projector_depth: 2,
            predictor_depth: 2,
            target_network: true,
            contrastive_beta: 0.0,
            contrastive_temperature: 0.1,
            loss_normalisation: "l2".into(),
            predictor_lr_mult: 1.0,
            projector_lr_mult: 1.0,
            augmentations: "full".into(),
            recipe: String::new(),
            optimizer: "lars".into(),
            lars_eta: 1e-3,
            lars_clip: false,
            target_init: "independent".into(),
            tau_end: 1.0,
            blur_t: 1.0,
            blur_t_prime: 0.1,
            crop_min_scale: 0.08,
            momentum: 0.9,
        };
        crate::recipe::SMALL.apply(&mut c);
        c
    }
}

impl TrainConfig {
    /// Rejects settings no run can use, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if !DATASETS.contains(&self.dataset.as_str()) {
            return bad(format!(
                "dataset {:?} is not available: expected one of {}",
                self.dataset,
                DATASETS.join(", ")
            ));
        }
        if self.dataset != "synthetic" && self.data_dir.is_none() {
            return bad(format!(
                "dataset {:?} reads files: give their folder as data_dir (--data-dir)",
                self.dataset
            ));
        }
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        for (name, v) in [
            ("limit_train", self.limit_train.unwrap_or(1)),
            ("limit_test", self.limit_test.unwrap_or(1)),
            ("width", self.width),
            ("projector_hidden", self.projector_hidden),
            ("projection_dim", self.projection_dim),
            ("predictor_hidden", self.predictor_hidden),
            ("image_size", self.image_size),
        ] {
            if v == 0 {
                return bad(format!("{name} is a size: it must be at least 1, got 0"));
            }
        }
        if self.batch_size < 2 {
            return bad(format!(
                "batch size must be at least 2 (BatchNorm needs two samples), got {}",
                self.batch_size
            ));
        }
        if self.dataset == "synthetic" && self.batch_size > self.train_size {
            return bad(format!(
                "batch size {} is larger than the training set ({} images)",
                self.batch_size, self.train_size
            ));
        }
        if !(self.base_lr > 0.0 && self.base_lr.is_finite()) {
            return bad(format!("base lr must be positive, got {}", self.base_lr));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad(format!(
                "weight decay must be ≥ 0, got {}",
                self.weight_decay
            ));
        }
        if let Some(t) = self.tau_constant.filter(|t| !(0.0..=1.0).contains(t)) {
            return bad(format!("tau_constant must lie in [0, 1], got {t}"));
        }
        if !(self.predictor_lr_mult >= 0.0 && self.projector_lr_mult >= 0.0) {
            return bad("learning-rate multipliers must be ≥ 0 (0 freezes the part)".into());
        }
        self.views()?;
        for (name, p) in [("blur_t", self.blur_t), ("blur_t_prime", self.blur_t_prime)] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{name} is a probability: expected [0, 1], got {p}"));
            }
        }
        if !(self.crop_min_scale > 0.0 && self.crop_min_scale <= 1.0) {
            return bad(format!(
                "crop_min_scale is a fraction of the image: expected (0, 1], got {}",
                self.crop_min_scale
            ));
        }
        if !(self.lars_eta > 0.0 && self.lars_eta.is_finite()) {
            return bad(format!(
                "lars_eta (the trust coefficient) must be positive, got {}",
                self.lars_eta
            ));
        }
        self.optimizer()?;
        if !self.recipe.is_empty() {
            crate::recipe::named(&self.recipe)?;
        }
        if !(0.0..=1.0).contains(&self.tau_base) {
            return bad(format!(
                "tau_base must lie in [0, 1], got {}",
                self.tau_base
            ));
        }
        if !(self.tau_end >= self.tau_base && self.tau_end <= 1.0) {
            return bad(format!(
                "tau_end must lie in [tau_base, 1] = [{}, 1], got {}",
                self.tau_base, self.tau_end
            ));
        }
        if self.test_size == 0 || self.knn_k == 0 || self.knn_temperature <= 0.0 {
            return bad(
                "the kNN monitor needs a test split, k ≥ 1 and a positive temperature".into(),
            );
        }
        self.byol_config().map(|_| ())
    }

    pub fn byol_config(&self) -> Result<ByolConfig> {
        let stem = match self.stem.as_str() {
            "cifar" => Stem::Cifar,
            "imagenet" => Stem::ImageNet,
            s => {
                return Err(Error::InvalidArgument(format!(
                    "stem {s:?}: expected cifar or imagenet"
                )))
            }
        };
        let arch: Arch = self.arch.parse()?;
        let predictor = match (self.predictor, self.closed_form_predictor) {
            (true, false) => PredictorKind::Learned,
            (true, true) => PredictorKind::ClosedForm,
            (false, false) => PredictorKind::None,
            (false, true) => {
                return Err(Error::InvalidArgument(
                    "closed_form_predictor replaces the predictor: it cannot be combined with predictor = false"
                        .into(),
                ))
            }
        };
        if self.closed_form_predictor {
            closed_form::check_shape(self.batch_size, self.projection_dim)?;
        }
        if self.projector_depth == 0 || self.predictor_depth == 0 {
            return Err(Error::InvalidArgument(
                "projector_depth and predictor_depth count Linear layers: at least 1".into(),
            ));
        }
        if !self.target_network && self.tau_constant.is_some() {
            return Err(Error::InvalidArgument(
                "tau_constant sets the target network's decay, but target_network = false".into(),
            ));
        }
        let objective = Objective {
            normalisation: self.loss_normalisation.parse()?,
            beta: self.contrastive_beta as f32,
            temperature: self.contrastive_temperature as f32,
        };
        objective.validate()?;
        Ok(ByolConfig {
            encoder: ResNetConfig {
                arch,
                stem,
                width: self.width,
                in_channels: 3,
            },
            projector_hidden: self.projector_hidden,
            projection: self.projection_dim,
            predictor_hidden: self.predictor_hidden,
            projector_depth: self.projector_depth,
            predictor_depth: self.predictor_depth,
            predictor,
            target_network: self.target_network,
            target_init: self.target_init.parse()?,
            objective,
        })
    }

    /// The optimiser of the run, from `optimizer`, `lars_eta`, `lars_clip`, `momentum` and
    /// `weight_decay`.
    pub fn optimizer(&self) -> Result<Optimizer> {
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::InvalidArgument(format!(
                "momentum must lie in [0, 1), got {}",
                self.momentum
            )));
        }
        let kind = match self.optimizer.as_str() {
            "lars" => OptimizerKind::Lars {
                trust_coefficient: self.lars_eta as f32,
                clip: self.lars_clip,
            },
            "sgd" => OptimizerKind::Sgd,
            "adamw" => OptimizerKind::AdamW,
            o => {
                return Err(Error::InvalidArgument(format!(
                    "optimizer {o:?}: expected lars, sgd or adamw"
                )))
            }
        };
        Ok(Optimizer {
            kind,
            momentum: self.momentum as f32,
            weight_decay: self.weight_decay as f32,
        })
    }

    /// The side of the images the encoder sees, known from the configuration alone (the
    /// recipe is chosen by it).
    pub fn image_side(&self) -> usize {
        match self.dataset.as_str() {
            "stl10" => 96,
            "mnist" => 28,
            "folder" => self.image_size,
            _ => 32,
        }
    }

    /// The two augmentation distributions: the named set over the paper's T and T′ with this
    /// run's blur probabilities and smallest crop.
    pub fn views(&self) -> Result<[ViewConfig; 2]> {
        let crop_scale = (self.crop_min_scale as f32, 1.0);
        let base = [
            ViewConfig {
                blur: self.blur_t as f32,
                crop_scale,
                ..ViewConfig::BYOL_T
            },
            ViewConfig {
                blur: self.blur_t_prime as f32,
                crop_scale,
                ..ViewConfig::BYOL_T_PRIME
            },
        ];
        ViewConfig::named_over(&self.augmentations, base)
    }

    /// The ablation knobs set away from BYOL's defaults, as `field=value` (for the banner).
    pub fn ablations(&self) -> Vec<String> {
        let d = TrainConfig::default();
        let mut out = Vec::new();
        let mut differs = |name: &str, value: String, default: String| {
            if value != default {
                out.push(format!("{name}={value}"));
            }
        };
        let opt = |t: Option<f64>| t.map_or("schedule".to_string(), |t| t.to_string());
        differs("tau_constant", opt(self.tau_constant), opt(d.tau_constant));
        differs(
            "predictor",
            self.predictor.to_string(),
            d.predictor.to_string(),
        );
        let (cf, dcf) = (self.closed_form_predictor, d.closed_form_predictor);
        differs("closed_form_predictor", cf.to_string(), dcf.to_string());
        let (tn, dtn) = (self.target_network, d.target_network);
        differs("target_network", tn.to_string(), dtn.to_string());
        let depths = |c: &TrainConfig| format!("{},{}", c.projector_depth, c.predictor_depth);
        differs("depth(projector,predictor)", depths(self), depths(&d));
        let lr = |c: &TrainConfig| format!("{},{}", c.predictor_lr_mult, c.projector_lr_mult);
        differs("lr_mult(predictor,projector)", lr(self), lr(&d));
        let beta =
            |c: &TrainConfig| format!("{} (α {})", c.contrastive_beta, c.contrastive_temperature);
        if self.contrastive_beta != 0.0 {
            differs("contrastive_beta", beta(self), beta(&d));
        }
        let norm = self.loss_normalisation.clone();
        differs("loss_normalisation", norm, d.loss_normalisation.clone());
        differs("augmentations", self.augmentations.clone(), d.augmentations);
        out
    }

    fn json(&self) -> String {
        serde_json::to_string(self).expect("a config serialises")
    }
}

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
    pub epochs: Vec<EpochRecord>,
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
    /// Stop after this many epochs in total (the schedules still span `epochs`).
    pub stop_after_epochs: Option<usize>,
    /// Print progress to standard error.
    pub progress: bool,
}

/// The data of a configuration: train (for pre-training; it may hold unlabelled images)
/// and held-out splits.
pub fn load_data(cfg: &TrainConfig) -> Result<(Dataset, Dataset)> {
    let (train, test) = load_full_data(cfg)?;
    let limit = |data: Dataset, limit: Option<usize>, field: &str, tag: u64| match limit {
        Some(n) if n > data.len() => Err(Error::InvalidArgument(format!(
            "{field} is {n}, but the split has only {} images",
            data.len()
        ))),
        Some(n) => Ok(data.stratified(n, mix(cfg.seed ^ tag))),
        None => Ok(data),
    };
    Ok((
        limit(train, cfg.limit_train, "limit_train", 0x7ea1)?,
        limit(test, cfg.limit_test, "limit_test", 0x7e57)?,
    ))
}

/// The splits of a configuration's data set, whole.
fn load_full_data(cfg: &TrainConfig) -> Result<(Dataset, Dataset)> {
    let dir = cfg.data_dir.as_deref().unwrap_or(Path::new("."));
    match cfg.dataset.as_str() {
        "cifar10" => formats::cifar10(dir),
        "cifar100" => formats::cifar100(dir),
        "stl10" => formats::stl10(dir, true),
        "mnist" => formats::mnist(dir),
        "folder" => formats::image_folder(dir, cfg.image_size),
        "synthetic" => Ok(synthetic::synthetic(
            cfg.seed,
            cfg.train_size,
            cfg.test_size,
        )),
        other => Err(Error::InvalidArgument(format!(
            "dataset {other:?} is not available: expected one of {}",
            DATASETS.join(", ")
        ))),
    }
}

/// A configuration file (TOML, or a run's `config.json`): every [`TrainConfig`] field (missing ones keep the values of
/// the recipe, unknown ones are errors), plus the run's `out` folder and `threads`, which are
/// not part of what a checkpoint must match.
#[derive(Clone, Debug, Default)]
pub struct ConfigFile {
    /// The file's fields over the recipe it names, or else the recipe for its images.
    pub train: TrainConfig,
    /// The fields the file sets, as written (to lay over another recipe).
    pub table: toml::Table,
    pub out: Option<PathBuf>,
    pub threads: Option<usize>,
}

/// `base` with the fields of `table` set; the error is the TOML reader's.
pub fn overlay(
    base: &TrainConfig,
    table: &toml::Table,
) -> std::result::Result<TrainConfig, String> {
    let mut merged = toml::Table::try_from(base).map_err(|e| e.to_string())?;
    merged.extend(table.iter().map(|(k, v)| (k.clone(), v.clone())));
    merged
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string())
}

/// The recipe a configuration file asks for: the one it names, else the one for the images
/// of `probe` (its data fields, maybe changed by flags).
pub fn recipe_of(table: &toml::Table, probe: &TrainConfig) -> Result<crate::recipe::Recipe> {
    match table.get("recipe") {
        Some(_) => crate::recipe::named(&probe.recipe),
        None => Ok(crate::recipe::for_image_side(probe.image_side())),
    }
}

/// The configuration with `table`'s fields over `recipe` (or, when `None`, over the recipe
/// the table names, else the one for its images' side).
pub fn over_recipe(
    table: &toml::Table,
    recipe: Option<crate::recipe::Recipe>,
) -> std::result::Result<TrainConfig, String> {
    let recipe = match recipe {
        Some(r) => r,
        None => {
            let probe = overlay(&TrainConfig::default(), table)?;
            recipe_of(table, &probe).map_err(|e| e.to_string())?
        }
    };
    let mut base = TrainConfig::default();
    recipe.apply(&mut base);
    let mut c = overlay(&base, table)?;
    c.recipe = recipe.name.into();
    Ok(c)
}

/// The checkpoint of a run: `run` itself when it is a file, else `run/checkpoint.safetensors`.
pub fn checkpoint_path(run: &Path) -> PathBuf {
    if run.is_dir() {
        run.join(CHECKPOINT)
    } else {
        run.to_path_buf()
    }
}

/// The configuration a checkpoint was written with.
pub fn saved_config(checkpoint: &Path) -> Result<TrainConfig> {
    let json = checkpoint::stored_config(checkpoint)?;
    serde_json::from_str(&json).map_err(|e| Error::Checkpoint {
        path: checkpoint.into(),
        reason: format!("unreadable configuration ({e})"),
    })
}

/// The thread count a run recorded in its folder's `config.json`, if it did.
pub fn saved_threads(run_dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(run_dir.join(RUN_CONFIG)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["threads"].as_u64().map(|n| n as usize)
}

/// Reads a [`ConfigFile`] (TOML, or JSON when the name ends in `.json`).
pub fn read_config(path: &Path) -> Result<ConfigFile> {
    let bad = |reason: String| Error::Data {
        path: path.into(),
        reason: format!("not a valid configuration: {reason}"),
    };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut table: toml::Table = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?
    } else {
        toml::from_str(&text).map_err(|e| bad(e.to_string()))?
    };
    let out = match table.remove("out") {
        Some(toml::Value::String(s)) => Some(PathBuf::from(s)),
        Some(v) => return Err(bad(format!("out must be a path string, got {v}"))),
        None => None,
    };
    let threads = match table.remove("threads") {
        Some(toml::Value::Integer(n)) if n >= 1 => Some(n as usize),
        Some(v) => return Err(bad(format!("threads must be a positive integer, got {v}"))),
        None => None,
    };
    let train = over_recipe(&table, None).map_err(bad)?;
    Ok(ConfigFile {
        train,
        table,
        out,
        threads,
    })
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
pub fn monitor(
    byol: &Byol,
    state: &crate::byol::ByolState,
    train: &Dataset,
    test: &Dataset,
    aug: &Augmenter,
    cfg: &TrainConfig,
) -> Result<Monitor> {
    let (enc, run) = (byol.encoder_params(), byol.encoder_running());
    let (params, running) = (&state.online[enc], &state.online_running[run]);
    let bank_idx = labelled(train);
    let bank = embed(&byol.encoder, params, running, train, &bank_idx, aug, 256)?;
    let queries = embed(
        &byol.encoder,
        params,
        running,
        test,
        &labelled(test),
        aug,
        256,
    )?;
    let bank_labels: Vec<u16> = bank_idx.iter().map(|&i| train.labels[i]).collect();
    let dim = byol.encoder.repr_dim();
    let knn_top1 = knn_accuracy(
        &bank,
        &bank_labels,
        &queries,
        &test.labels,
        dim,
        train.classes,
        cfg.knn_k,
        cfg.knn_temperature as f32,
    );
    let n = bank_idx.len().min(1024);
    let z = byol.projections(state, &bank[..n * dim])?;
    Ok(Monitor {
        knn_top1,
        collapse: diagnose(&bank[..n * dim], dim, &z, byol.projector.output),
    })
}

/// Trains as configured. Returns the per-epoch record.
pub fn train(cfg: &TrainConfig, opts: &RunOptions) -> Result<Summary> {
    cfg.validate()?;
    prepare_out(&opts.out)?;
    let (train, test) = load_data(cfg)?;
    if cfg.batch_size > train.len() {
        return Err(Error::InvalidArgument(format!(
            "batch size {} is larger than the training set ({} images)",
            cfg.batch_size,
            train.len()
        )));
    }
    if train.h != train.w {
        return Err(Error::InvalidArgument(format!(
            "images are {}×{}: BYOL's crops need square images",
            train.h, train.w
        )));
    }
    let aug = augmenter(&train, cfg)?;
    let byol = Byol::new(cfg.byol_config()?)?;
    let mut state = match &opts.resume {
        None => byol.init(cfg.seed),
        Some(path) => {
            let (state, stored) = checkpoint::load(path, &byol)?;
            let stored: TrainConfig =
                serde_json::from_str(&stored).map_err(|e| Error::Checkpoint {
                    path: path.clone(),
                    reason: format!("unreadable configuration ({e})"),
                })?;
            if &stored != cfg {
                return Err(Error::Checkpoint {
                    path: path.clone(),
                    reason: format!(
                        "it was written by another configuration: {}",
                        config_diff(&stored, cfg)
                    ),
                });
            }
            state
        }
    };
    // config.json is a valid `--config` file; it also records the thread count, on which
    // the bits of the run depend (the conv layers split their sums by thread).
    let mut config_json = serde_json::to_value(cfg).expect("a config serialises");
    config_json["threads"] = rayon::current_num_threads().into();
    let config_json = serde_json::to_string_pretty(&config_json).expect("JSON serialises");
    crate::files::write_atomic(&opts.out.join(RUN_CONFIG), config_json.as_bytes())?;
    let metrics_path = opts.out.join("metrics.jsonl");
    let (b, n) = (cfg.batch_size, train.len());
    let steps_per_epoch = n / b;
    let first_epoch = (state.step / steps_per_epoch as u64) as usize;
    if opts.resume.is_some() {
        metrics_before(&metrics_path, state.step, first_epoch)?;
    }
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(opts.resume.is_some())
        .write(true)
        .truncate(opts.resume.is_none())
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;
    let mut record = |line: serde_json::Value| -> Result<()> {
        writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))
    };

    let total = (cfg.epochs * steps_per_epoch) as u64;
    let warmup = cfg.warmup_epochs * steps_per_epoch;
    let peak = cfg.base_lr * b as f64 / 256.0;
    let lr_mult = LrMultipliers {
        projector: cfg.projector_lr_mult as f32,
        predictor: cfg.predictor_lr_mult as f32,
    };
    let optimizer = cfg.optimizer()?;
    let last_epoch = opts.stop_after_epochs.unwrap_or(cfg.epochs).min(cfg.epochs);

    let knn_init = if opts.resume.is_none() {
        let acc = monitor(&byol, &state, &train, &test, &aug, cfg)?.knn_top1;
        record(serde_json::json!({"kind": "epoch", "epoch": 0, "knn_top1": acc}))?;
        if opts.progress {
            eprintln!("kNN top-1 at initialisation: {:.2}%", 100.0 * acc);
        }
        Some(acc)
    } else {
        None
    };
    let mut work = byol.work(b, aug.size, aug.size)?;
    let px = aug.size * aug.size * 3;
    let mut epochs = Vec::new();
    let mut collapsed_at = None;
    let (run_start, mut images) = (Instant::now(), 0usize);
    for epoch in first_epoch..last_epoch {
        let start = Instant::now();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(
            cfg.seed ^ mix(epoch as u64)
        )));
        let mut loss_sum = 0.0f64;
        // Augmentation runs on its own thread, up to two batches ahead of the step.
        std::thread::scope(|scope| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<[Vec<f32>; 2]>(2);
            let (aug, train, order) = (&aug, &train, &order);
            scope.spawn(move || {
                for s in 0..steps_per_epoch {
                    let k = (epoch * steps_per_epoch + s) as u64;
                    let (mut v1, mut v2) = (vec![0.0f32; b * px], vec![0.0f32; b * px]);
                    aug.batch(
                        train,
                        &order[s * b..(s + 1) * b],
                        mix(cfg.seed ^ mix(k ^ 0x5eed)),
                        [&mut v1, &mut v2],
                    );
                    if tx.send([v1, v2]).is_err() {
                        return; // the step stopped (an error): nothing more to make
                    }
                }
            });
            for s in 0..steps_per_epoch {
                let [v1, v2] = rx
                    .recv()
                    .expect("the augmentation thread sends every batch");
                let k = state.step as usize;
                let (lr, t) = (
                    learning_rate(peak, k, warmup, total as usize),
                    cfg.tau_constant
                        .unwrap_or_else(|| tau_to(cfg.tau_base, cfg.tau_end, k, total as usize)),
                );
                let step_start = Instant::now();
                let loss = byol
                    .step(
                        &mut state,
                        &mut work,
                        [&v1, &v2],
                        lr as f32,
                        t as f32,
                        &optimizer,
                        lr_mult,
                    )?
                    .loss;
                loss_sum += loss as f64;
                images += b;
                let ips = b as f64 / step_start.elapsed().as_secs_f64();
                record(
                    serde_json::json!({"kind": "step", "step": k, "epoch": epoch + 1, "loss": loss, "lr": lr, "tau": t, "images_per_s": ips}),
                )?;
                if opts.progress {
                    let ips = images as f64 / run_start.elapsed().as_secs_f64();
                    let left = (total - state.step) as usize * b;
                    progress(
                        epoch + 1,
                        cfg.epochs,
                        s + 1,
                        steps_per_epoch,
                        loss,
                        lr,
                        t,
                        ips,
                        left,
                    );
                }
            }
            Ok(())
        })?;
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
        checkpoint::save(&opts.out.join(CHECKPOINT), &byol, &state, &cfg.json())?;
        if opts.progress {
            let line = format!(
                "epoch {}/{}: loss {:.4}, kNN top-1 {:.2}%, projection std·√d {:.3}, effective rank {:.1}{}, {:.0} s",
                rec.epoch,
                cfg.epochs,
                rec.loss,
                100.0 * acc,
                collapse.projection_std / collapse.healthy_std,
                collapse.effective_rank,
                if collapse.collapsed { " COLLAPSED" } else { "" },
                rec.seconds
            );
            eprintln!(
                "{}{line}",
                if std::io::stderr().is_terminal() {
                    "\r\x1b[2K"
                } else {
                    ""
                }
            );
        }
        epochs.push(rec);
    }
    crate::plot::plot_metrics(&metrics_path, &opts.out.join("training.png"))?;
    Ok(Summary {
        knn_init,
        epochs,
        collapsed_at,
        images_per_s: images as f64 / run_start.elapsed().as_secs_f64(),
        out: opts.out.clone(),
    })
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
    for (i, line) in text.lines().enumerate() {
        let record: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::Data {
            path: path.into(),
            reason: format!("line {} is not a JSON record ({e})", i + 1),
        })?;
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
    images_left: usize,
) {
    let width = 20;
    let filled = width * s / steps;
    let bar = "#".repeat(filled) + &".".repeat(width - filled);
    let eta = (images_left as f64 / ips.max(1e-9)) as u64;
    let line = format!(
        "epoch {epoch}/{epochs} [{bar}] step {s}/{steps} loss {loss:.4} lr {lr:.4} τ {tau:.4} {ips:.0} img/s ETA {}m{:02}s",
        eta / 60,
        eta % 60
    );
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K{line}");
    } else if s == steps || s.is_multiple_of(10) {
        eprintln!("{line}");
    }
}

/// The fields in which two configurations differ, `name: stored → requested`.
fn config_diff(stored: &TrainConfig, requested: &TrainConfig) -> String {
    let (a, b) = (
        serde_json::to_value(stored).unwrap(),
        serde_json::to_value(requested).unwrap(),
    );
    let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
    let diffs: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {v} → {}", b[k]))
        .collect();
    diffs.join(", ")
}

//! The training run: data, augmentation on a prefetch thread, the BYOL step with its
//! schedules, the kNN monitor after every epoch, metrics (JSONL), checkpoints and resuming.
//!
//! Files in the output folder: `metrics.jsonl` (one record per step and per epoch),
//! `checkpoint.safetensors` (after every epoch, written atomically), `config.json`, and at
//! the end `training.png` (loss, kNN accuracy, lr and τ).
//! A run is a pure function of its configuration: the seed fixes initialisation, data order
//! and augmentations, so with the same thread count two runs are bit-identical, and a run
//! resumed from an epoch's checkpoint continues exactly as the uninterrupted one.

use crate::backend::cpu::Cpu;
use crate::backend::distributed::Distributed;
use crate::backend::{AugmentOp, Backend, Device, Precision};
use crate::byol::schedule::{learning_rate, tau_to};
use crate::byol::{
    closed_form, Byol, ByolConfig, LrMultipliers, Objective, Optimizer, OptimizerKind,
    PredictorKind,
};
use crate::checkpoint;
use crate::data::augment::{mix, Augmenter, ViewConfig};
use crate::data::formats::{self, UNLABELED};
use crate::data::{synthetic, Dataset};
use crate::dist::{bits, checksum, disagreement, Collective, Single};
use crate::error::{Error, Result};
use crate::eval::{data_statistics, diagnose, embed, knn_accuracy, Collapse};
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

/// Everything that defines a run, declared once and nested by who reads it, as the official
/// code's `configs/byol.py`: the data pipeline reads `data`, the networks `model`, the step's
/// optimiser and schedules `optim`, the augmenter `augment`, the paper's ablations `ablation`,
/// the kNN monitor `monitor`. The serde fields are the keys of configuration files and of
/// `config.json` (`[optim] base_lr = 0.3`); the clap arguments are `host train`'s flags
/// (`--base-lr`, flat: every field name is unique); each doc comment is both the field's
/// documentation and the flag's help. A flag overrides the recipe and the file only when it is
/// given (see [`given_fields`]), so the clap defaults are never used.
///
/// Adding a knob: a field in its section (and its value in the section's `Default`), the code
/// that reads it, its test.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The recipe the hyper-parameters start from: small, imagenet-40, imagenet-100,
    /// imagenet-300, imagenet-1000 [default: small for images of 96 px and below, else
    /// imagenet-40]. Fields set explicitly override it; it is recorded so a run says where it
    /// came from.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub recipe: String,
    /// Fixes initialisation, data order and augmentations.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub seed: u64,
    #[command(flatten, next_help_heading = "Data")]
    pub data: DataConfig,
    #[command(flatten, next_help_heading = "Model")]
    pub model: ModelConfig,
    #[command(flatten, next_help_heading = "Optimiser and schedules")]
    pub optim: OptimConfig,
    #[command(flatten, next_help_heading = "Augmentations")]
    pub augment: AugmentConfig,
    #[command(flatten, next_help_heading = "Ablations (the paper's §5)")]
    pub ablation: AblationConfig,
    #[command(flatten, next_help_heading = "kNN monitor")]
    pub monitor: MonitorConfig,
}

/// The data set and its splits.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
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
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dataset: "synthetic".into(),
            data_dir: None,
            image_size: 64,
            train_size: 5000,
            test_size: 1000,
            limit_train: None,
            limit_test: None,
        }
    }
}

/// The encoder, the projector and the predictor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// resnet18, resnet34 or resnet50.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub arch: String,
    /// cifar (3×3, no max-pool) or imagenet (7×7 stride 2, max-pool).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub stem: String,
    /// Channels of the first stage (torchvision: 64).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub width: usize,
    /// Hidden units of the projector MLP (4096 in the paper).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub projector_hidden: usize,
    /// Output size of the projector, and so of the predictor (256 in the paper).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub projection_dim: usize,
    /// Hidden units of the predictor MLP (4096 in the paper).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub predictor_hidden: usize,
    /// Linear layers of the projector (2 in the paper; 1 is a single Linear; the paper's
    /// depth ablation).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub projector_depth: usize,
    /// Linear layers of the predictor.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub predictor_depth: usize,
    /// How fresh weights are drawn: torchvision (PyTorch's defaults, as the PyTorch ports) or
    /// official (the official BYOL code's Haiku defaults: truncated normal 1/√fan_in, zero
    /// biases, each bottleneck block's last BatchNorm γ = 0).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub init: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            arch: "resnet18".into(),
            stem: "cifar".into(),
            width: 16,
            projector_hidden: 4096,
            projection_dim: 256,
            predictor_hidden: 4096,
            projector_depth: 2,
            predictor_depth: 2,
            init: "torchvision".into(),
        }
    }
}

/// The optimiser, the learning-rate and τ schedules, the target's start.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Passes over the training images; the learning-rate and τ schedules span them.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub epochs: usize,
    /// Images per step, over all ranks of a data-parallel run (4096 in the paper).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub batch_size: usize,
    /// Epochs of linear learning-rate warm-up before the cosine decay (10 in the paper).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub warmup_epochs: usize,
    /// lars (the paper's), sgd (momentum 0.9) or adamw (β₁ 0.9).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub optimizer: String,
    /// Learning rate per 256 images (lr = base_lr · batch / 256).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub base_lr: f64,
    /// Weight decay of every weight but biases and BatchNorm's (1.5e-6 in the paper).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub weight_decay: f64,
    /// Momentum of LARS and SGD, β₁ of AdamW (0.9 in the paper and the official code).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub momentum: f64,
    /// LARS trust coefficient η (1e-3 in the official code).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub lars_eta: f64,
    /// Cap LARS's per-tensor rate at the scheduled learning rate (LARC's clip mode).
    #[arg(long, action = clap::ArgAction::Set, default_value_t, hide_default_value = true)]
    pub lars_clip: bool,
    /// Target decay at step 0, rising to tau_end along a cosine.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub tau_base: f64,
    /// Where the cosine τ schedule ends (1 in the paper).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub tau_end: f64,
    /// How the target network starts: independent (official) or copy (of the online one).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub target_init: String,
}

impl Default for OptimConfig {
    /// The official 40-epoch values; [`TrainConfig::default`] lays the small recipe over them.
    fn default() -> Self {
        OptimConfig {
            epochs: 40,
            batch_size: 128,
            warmup_epochs: 10,
            optimizer: "lars".into(),
            base_lr: 0.45,
            weight_decay: 1e-6,
            momentum: 0.9,
            lars_eta: 1e-3,
            lars_clip: false,
            tau_base: 0.97,
            tau_end: 1.0,
            target_init: "independent".into(),
        }
    }
}

/// The two augmentation distributions T and T′.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Augmentation set: full (the paper's T and T′), symmetric, no-colour, no-grayscale,
    /// no-blur, no-flip, crop-only, crop-flip, crop-colour, crop-blur.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub augmentations: String,
    /// Probability of the gaussian blur in T (view 1; paper 1.0).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub blur_t: f64,
    /// Probability of the gaussian blur in T′ (view 2; paper 0.1).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub blur_t_prime: f64,
    /// Smallest area of the random resized crop, as a fraction of the image (paper 0.08).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub crop_min_scale: f64,
    /// Strength of the colour jitter, a factor on the paper's brightness 0.4, contrast 0.4,
    /// saturation 0.2 and hue 0.1 (1: the paper's; SimCLR's strength s is this over 2).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub colour_strength: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            augmentations: "full".into(),
            blur_t: 1.0,
            blur_t_prime: 0.1,
            crop_min_scale: 0.08,
            colour_strength: 1.0,
        }
    }
}

/// The paper's ablations (its §5 and appendix); the defaults are BYOL.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct AblationConfig {
    /// A constant target decay instead of the cosine schedule (0: the target copies the online
    /// network every step; 1: it stays at its initialisation).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[arg(long)]
    pub tau_constant: Option<f64>,
    /// Whether the online network has a predictor (false: the online projection is compared
    /// with the target's directly).
    #[arg(long, action = clap::ArgAction::Set, default_value_t, hide_default_value = true)]
    pub predictor: bool,
    /// The closed-form optimal linear predictor (least squares on each batch) in place of the
    /// learned one; needs batch size > projection dim.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value_t, hide_default_value = true)]
    pub closed_form_predictor: bool,
    /// Whether ψ comes from a target network (false: the loss compares with the online
    /// projection itself, gradient included; with --contrastive-beta 1 --predictor false:
    /// SimCLR).
    #[arg(long, action = clap::ArgAction::Set, default_value_t, hide_default_value = true)]
    pub target_network: bool,
    /// Weight β of the contrastive (InfoNCE) term (paper §4.4); 0 is BYOL.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub contrastive_beta: f64,
    /// Temperature α of the contrastive term.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub contrastive_temperature: f64,
    /// How predictions and targets are normalised in the loss: l2 (BYOL), none, layernorm or
    /// batchnorm.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub loss_normalisation: String,
    /// Learning-rate multiplier of the predictor (λ).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub predictor_lr_mult: f64,
    /// Learning-rate multiplier of the projector (μ).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub projector_lr_mult: f64,
}

impl Default for AblationConfig {
    fn default() -> Self {
        AblationConfig {
            tau_constant: None,
            predictor: true,
            closed_form_predictor: false,
            target_network: true,
            contrastive_beta: 0.0,
            contrastive_temperature: 0.1,
            loss_normalisation: "l2".into(),
            predictor_lr_mult: 1.0,
            projector_lr_mult: 1.0,
        }
    }
}

/// The kNN monitor run after every epoch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Neighbours of the kNN monitor.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub knn_k: usize,
    /// Temperature of the kNN monitor's vote.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub knn_temperature: f64,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            knn_k: 200,
            knn_temperature: 0.1,
        }
    }
}

/// The sections of a configuration, as its files name them.
pub const SECTIONS: [&str; 6] = ["data", "model", "optim", "augment", "ablation", "monitor"];

/// The fields of `parsed` whose flags were given on the command line (`matches` are those of
/// the command that flattens it: a [`TrainConfig`] or one of its sections), as a (nested) table
/// to lay over a configuration with [`overlay`].
pub fn given_fields<T: Serialize>(parsed: &T, matches: &clap::ArgMatches) -> toml::Table {
    let given = |field: &String| {
        matches.value_source(field) == Some(clap::parser::ValueSource::CommandLine)
    };
    let mut out = toml::Table::new();
    for (key, value) in toml::Table::try_from(parsed).expect("a config is a TOML table") {
        match value {
            toml::Value::Table(section) => {
                let section: toml::Table = section.into_iter().filter(|(f, _)| given(f)).collect();
                if !section.is_empty() {
                    out.insert(key, section.into());
                }
            }
            value if given(&key) => {
                out.insert(key, value);
            }
            _ => {}
        }
    }
    out
}

impl Default for TrainConfig {
    /// The embedded data set with the small-image recipe ([`crate::recipe::SMALL`]): about five
    /// minutes on two cores.
    fn default() -> Self {
        let mut c = TrainConfig {
            recipe: String::new(),
            seed: 0,
            data: DataConfig::default(),
            model: ModelConfig::default(),
            optim: OptimConfig::default(),
            augment: AugmentConfig::default(),
            ablation: AblationConfig::default(),
            monitor: MonitorConfig::default(),
        };
        crate::recipe::SMALL.apply(&mut c);
        c
    }
}

impl TrainConfig {
    /// `self` changed by `f`: `TrainConfig::default().with(|c| c.optim.epochs = 6)`.
    pub fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }

    /// Rejects settings no run can use, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if !DATASETS.contains(&self.data.dataset.as_str()) {
            return bad(format!(
                "dataset {:?} is not available: expected one of {}",
                self.data.dataset,
                DATASETS.join(", ")
            ));
        }
        if self.data.dataset != "synthetic" && self.data.data_dir.is_none() {
            return bad(format!(
                "dataset {:?} reads files: give their folder as data_dir (--data-dir)",
                self.data.dataset
            ));
        }
        if self.optim.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        for (name, v) in [
            ("limit_train", self.data.limit_train.unwrap_or(1)),
            ("limit_test", self.data.limit_test.unwrap_or(1)),
            ("width", self.model.width),
            ("projector_hidden", self.model.projector_hidden),
            ("projection_dim", self.model.projection_dim),
            ("predictor_hidden", self.model.predictor_hidden),
            ("image_size", self.data.image_size),
        ] {
            if v == 0 {
                return bad(format!("{name} is a size: it must be at least 1, got 0"));
            }
        }
        if self.optim.batch_size < 2 {
            return bad(format!(
                "batch size must be at least 2 (BatchNorm needs two samples), got {}",
                self.optim.batch_size
            ));
        }
        if self.data.dataset == "synthetic" && self.optim.batch_size > self.data.train_size {
            return bad(format!(
                "batch size {} is larger than the training set ({} images)",
                self.optim.batch_size, self.data.train_size
            ));
        }
        if !(self.optim.base_lr > 0.0 && self.optim.base_lr.is_finite()) {
            return bad(format!(
                "base lr must be positive, got {}",
                self.optim.base_lr
            ));
        }
        if !(self.optim.weight_decay >= 0.0 && self.optim.weight_decay.is_finite()) {
            return bad(format!(
                "weight decay must be ≥ 0, got {}",
                self.optim.weight_decay
            ));
        }
        if let Some(t) = self
            .ablation
            .tau_constant
            .filter(|t| !(0.0..=1.0).contains(t))
        {
            return bad(format!("tau_constant must lie in [0, 1], got {t}"));
        }
        if !(self.ablation.predictor_lr_mult >= 0.0 && self.ablation.projector_lr_mult >= 0.0) {
            return bad("learning-rate multipliers must be ≥ 0 (0 freezes the part)".into());
        }
        self.views()?;
        for (name, p) in [
            ("blur_t", self.augment.blur_t),
            ("blur_t_prime", self.augment.blur_t_prime),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{name} is a probability: expected [0, 1], got {p}"));
            }
        }
        if !(self.augment.crop_min_scale > 0.0 && self.augment.crop_min_scale <= 1.0) {
            return bad(format!(
                "crop_min_scale is a fraction of the image: expected (0, 1], got {}",
                self.augment.crop_min_scale
            ));
        }
        // Hue shifts are turns in [-0.5, 0.5]: 0.1 · strength must stay within them.
        if !(0.0..=5.0).contains(&self.augment.colour_strength) {
            return bad(format!(
                "colour_strength scales the paper's colour jitter: expected [0, 5], got {}",
                self.augment.colour_strength
            ));
        }
        if !(self.optim.lars_eta > 0.0 && self.optim.lars_eta.is_finite()) {
            return bad(format!(
                "lars_eta (the trust coefficient) must be positive, got {}",
                self.optim.lars_eta
            ));
        }
        self.optimizer()?;
        if !self.recipe.is_empty() {
            crate::recipe::named(&self.recipe)?;
        }
        if !(0.0..=1.0).contains(&self.optim.tau_base) {
            return bad(format!(
                "tau_base must lie in [0, 1], got {}",
                self.optim.tau_base
            ));
        }
        if !(self.optim.tau_end >= self.optim.tau_base && self.optim.tau_end <= 1.0) {
            return bad(format!(
                "tau_end must lie in [tau_base, 1] = [{}, 1], got {}",
                self.optim.tau_base, self.optim.tau_end
            ));
        }
        if self.data.test_size == 0
            || self.monitor.knn_k == 0
            || self.monitor.knn_temperature <= 0.0
        {
            return bad(
                "the kNN monitor needs a test split, k ≥ 1 and a positive temperature".into(),
            );
        }
        self.byol_config().map(|_| ())
    }

    pub fn byol_config(&self) -> Result<ByolConfig> {
        let stem = match self.model.stem.as_str() {
            "cifar" => Stem::Cifar,
            "imagenet" => Stem::ImageNet,
            s => {
                return Err(Error::InvalidArgument(format!(
                    "stem {s:?}: expected cifar or imagenet"
                )))
            }
        };
        let arch: Arch = self.model.arch.parse()?;
        let predictor = match (self.ablation.predictor, self.ablation.closed_form_predictor) {
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
        if self.ablation.closed_form_predictor {
            closed_form::check_shape(self.optim.batch_size, self.model.projection_dim)?;
        }
        if self.model.projector_depth == 0 || self.model.predictor_depth == 0 {
            return Err(Error::InvalidArgument(
                "projector_depth and predictor_depth count Linear layers: at least 1".into(),
            ));
        }
        if !self.ablation.target_network && self.ablation.tau_constant.is_some() {
            return Err(Error::InvalidArgument(
                "tau_constant sets the target network's decay, but target_network = false".into(),
            ));
        }
        let objective = Objective {
            normalisation: self.ablation.loss_normalisation.parse()?,
            beta: self.ablation.contrastive_beta as f32,
            temperature: self.ablation.contrastive_temperature as f32,
        };
        objective.validate()?;
        Ok(ByolConfig {
            encoder: ResNetConfig {
                arch,
                stem,
                width: self.model.width,
                in_channels: 3,
            },
            projector_hidden: self.model.projector_hidden,
            projection: self.model.projection_dim,
            predictor_hidden: self.model.predictor_hidden,
            projector_depth: self.model.projector_depth,
            predictor_depth: self.model.predictor_depth,
            predictor,
            target_network: self.ablation.target_network,
            target_init: self.optim.target_init.parse()?,
            init: self.model.init.parse()?,
            objective,
        })
    }

    /// The optimiser of the run, from `optimizer`, `lars_eta`, `lars_clip`, `momentum` and
    /// `weight_decay`.
    pub fn optimizer(&self) -> Result<Optimizer> {
        if !(0.0..1.0).contains(&self.optim.momentum) {
            return Err(Error::InvalidArgument(format!(
                "momentum must lie in [0, 1), got {}",
                self.optim.momentum
            )));
        }
        let kind = match self.optim.optimizer.as_str() {
            "lars" => OptimizerKind::Lars {
                trust_coefficient: self.optim.lars_eta as f32,
                clip: self.optim.lars_clip,
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
            momentum: self.optim.momentum as f32,
            weight_decay: self.optim.weight_decay as f32,
        })
    }

    /// The side of the images the encoder sees, known from the configuration alone (the
    /// recipe is chosen by it).
    pub fn image_side(&self) -> usize {
        match self.data.dataset.as_str() {
            "stl10" => 96,
            "mnist" => 28,
            "folder" => self.data.image_size,
            _ => 32,
        }
    }

    /// The two augmentation distributions: the named set over the paper's T and T′ with this
    /// run's blur probabilities, smallest crop and colour strength.
    pub fn views(&self) -> Result<[ViewConfig; 2]> {
        let crop_scale = (self.augment.crop_min_scale as f32, 1.0);
        let base = [
            (ViewConfig::BYOL_T, self.augment.blur_t),
            (ViewConfig::BYOL_T_PRIME, self.augment.blur_t_prime),
        ]
        .map(|(v, blur)| ViewConfig {
            blur: blur as f32,
            crop_scale,
            ..v.with_colour_strength(self.augment.colour_strength as f32)
        });
        ViewConfig::named_over(&self.augment.augmentations, base)
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
        differs(
            "tau_constant",
            opt(self.ablation.tau_constant),
            opt(d.ablation.tau_constant),
        );
        differs(
            "predictor",
            self.ablation.predictor.to_string(),
            d.ablation.predictor.to_string(),
        );
        let (cf, dcf) = (
            self.ablation.closed_form_predictor,
            d.ablation.closed_form_predictor,
        );
        differs("closed_form_predictor", cf.to_string(), dcf.to_string());
        let (tn, dtn) = (self.ablation.target_network, d.ablation.target_network);
        differs("target_network", tn.to_string(), dtn.to_string());
        let depths =
            |c: &TrainConfig| format!("{},{}", c.model.projector_depth, c.model.predictor_depth);
        differs("depth(projector,predictor)", depths(self), depths(&d));
        let lr = |c: &TrainConfig| {
            format!(
                "{},{}",
                c.ablation.predictor_lr_mult, c.ablation.projector_lr_mult
            )
        };
        differs("lr_mult(predictor,projector)", lr(self), lr(&d));
        let beta = |c: &TrainConfig| {
            format!(
                "{} (α {})",
                c.ablation.contrastive_beta, c.ablation.contrastive_temperature
            )
        };
        if self.ablation.contrastive_beta != 0.0 {
            differs("contrastive_beta", beta(self), beta(&d));
        }
        let norm = self.ablation.loss_normalisation.clone();
        differs(
            "loss_normalisation",
            norm,
            d.ablation.loss_normalisation.clone(),
        );
        differs(
            "augmentations",
            self.augment.augmentations.clone(),
            d.augment.augmentations,
        );
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
    /// The same with BatchNorm statistics of the training images in place of the
    /// placeholder mean 0, variance 1 ([`crate::eval::batchnorm`]).
    pub knn_init_data_bn: Option<f64>,
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
    let limit = |data: Dataset, limit: Option<usize>, field: &str, tag: u64| match limit {
        Some(n) if n > data.len() => Err(Error::InvalidArgument(format!(
            "{field} is {n}, but the split has only {} images",
            data.len()
        ))),
        Some(n) => Ok(data.stratified(n, mix(DATA_SEED ^ tag))),
        None => Ok(data),
    };
    Ok((
        limit(train, cfg.data.limit_train, "limit_train", 0x7ea1)?,
        limit(test, cfg.data.limit_test, "limit_test", 0x7e57)?,
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

/// `base` with the fields of `table` set, section by section (a table of `[optim] epochs = 3`
/// changes that field only); the error is the TOML reader's.
pub fn overlay<T: Serialize + serde::de::DeserializeOwned>(
    base: &T,
    table: &toml::Table,
) -> std::result::Result<T, String> {
    fn merge(into: &mut toml::Table, from: &toml::Table) {
        for (key, value) in from {
            match (into.get_mut(key), value) {
                (Some(toml::Value::Table(inner)), toml::Value::Table(v)) => merge(inner, v),
                _ => {
                    into.insert(key.clone(), value.clone());
                }
            }
        }
    }
    let mut merged = toml::Table::try_from(base).map_err(|e| e.to_string())?;
    merge(&mut merged, table);
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
    parse_saved_config(&json).map_err(|e| Error::Checkpoint {
        path: checkpoint.into(),
        reason: format!("unreadable configuration ({e})"),
    })
}

/// A configuration as checkpoints store it (JSON), in the nested form or in the flat one of
/// the checkpoints written before the configuration had sections.
pub fn parse_saved_config(json: &str) -> std::result::Result<TrainConfig, String> {
    let mut value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if let Some(fields) = value.as_object_mut() {
        fields.retain(|_, v| !v.is_null()); // the flat form wrote unset options as null
    }
    let table: toml::Table = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let table = nest_flat_fields(table);
    table.try_into().map_err(|e: toml::de::Error| e.to_string())
}

/// The sections of the fields of the flat configuration that checkpoints and files used
/// before sections existed (files also had the run's `out` and `threads` at the top). Frozen:
/// new fields exist only in the nested form.
const FLAT_FIELDS: [(&str, &[&str]); 7] = [
    (
        "data",
        &[
            "dataset",
            "data_dir",
            "image_size",
            "train_size",
            "test_size",
            "limit_train",
            "limit_test",
        ],
    ),
    (
        "model",
        &[
            "arch",
            "stem",
            "width",
            "projector_hidden",
            "projection_dim",
            "predictor_hidden",
            "projector_depth",
            "predictor_depth",
        ],
    ),
    (
        "optim",
        &[
            "epochs",
            "batch_size",
            "warmup_epochs",
            "optimizer",
            "base_lr",
            "weight_decay",
            "momentum",
            "lars_eta",
            "lars_clip",
            "tau_base",
            "tau_end",
            "target_init",
        ],
    ),
    (
        "augment",
        &["augmentations", "blur_t", "blur_t_prime", "crop_min_scale"],
    ),
    (
        "ablation",
        &[
            "tau_constant",
            "predictor",
            "closed_form_predictor",
            "target_network",
            "contrastive_beta",
            "contrastive_temperature",
            "loss_normalisation",
            "predictor_lr_mult",
            "projector_lr_mult",
        ],
    ),
    ("monitor", &["knn_k", "knn_temperature"]),
    ("run", &["out", "threads"]),
];

/// `table` with the fields of the old flat form moved into their sections.
fn nest_flat_fields(mut table: toml::Table) -> toml::Table {
    for (section, fields) in FLAT_FIELDS {
        for field in fields.iter() {
            if let Some(v) = table.remove(*field) {
                let s = table
                    .entry(section)
                    .or_insert_with(|| toml::Table::new().into());
                if let Some(s) = s.as_table_mut() {
                    s.insert(field.to_string(), v);
                }
            }
        }
    }
    table
}

/// The thread count a run recorded in its folder's `config.json`, if it did.
pub fn saved_threads(run_dir: &Path) -> Option<usize> {
    read_config(&run_dir.join(RUN_CONFIG)).ok()?.threads
}

/// Reads a [`ConfigFile`] (TOML, or JSON when the name ends in `.json`). Besides the
/// configuration's own fields, a `[run]` table may set the output folder `out` and `threads`,
/// which a checkpoint does not need to match.
pub fn read_config(path: &Path) -> Result<ConfigFile> {
    let bad = |reason: String| Error::Data {
        path: path.into(),
        reason: format!("not a valid configuration: {reason}"),
    };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let table: toml::Table = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?
    } else {
        toml::from_str(&text).map_err(|e| bad(e.to_string()))?
    };
    let mut table = nest_flat_fields(table);
    let mut run = match table.remove("run") {
        Some(toml::Value::Table(run)) => run,
        Some(v) => return Err(bad(format!("run must be a table (out, threads), got {v}"))),
        None => toml::Table::new(),
    };
    let out = match run.remove("out") {
        Some(toml::Value::String(s)) => Some(PathBuf::from(s)),
        Some(v) => return Err(bad(format!("run.out must be a path string, got {v}"))),
        None => None,
    };
    let threads = match run.remove("threads") {
        Some(toml::Value::Integer(n)) if n >= 1 => Some(n as usize),
        Some(v) => {
            return Err(bad(format!(
                "run.threads must be a positive integer, got {v}"
            )))
        }
        None => None,
    };
    if let Some(field) = run.keys().next() {
        return Err(bad(format!(
            "unknown field `{field}` in [run]: expected out or threads"
        )));
    }
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
/// run's five minutes on 2 cores).
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
        return Err(Error::InvalidArgument(format!(
            "batch size {} is larger than the training set ({} images)",
            cfg.optim.batch_size,
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
    let mut host_state = match &opts.resume {
        None => byol.init(cfg.seed),
        Some(path) => {
            let (state, stored) = checkpoint::load(path, &byol)?;
            let stored = parse_saved_config(&stored).map_err(|e| Error::Checkpoint {
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
    let metrics_path = opts.out.join("metrics.jsonl");
    let mut metrics = None;
    if lead {
        // config.json is a valid `--config` file; it also records the thread count, on
        // which the bits of the run depend (the conv layers split their sums by thread),
        // and the number of ranks.
        let mut config_json = serde_json::to_value(cfg).expect("a config serialises");
        config_json["run"] = serde_json::json!({"threads": rayon::current_num_threads()});
        if world > 1 {
            config_json["run"]["ranks"] = world.into();
        }
        let config_json = serde_json::to_string_pretty(&config_json).expect("JSON serialises");
        crate::files::write_atomic(&opts.out.join(RUN_CONFIG), config_json.as_bytes())?;
        if opts.resume.is_some() {
            metrics_before(&metrics_path, state.step, first_epoch)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(opts.resume.is_some())
            .write(true)
            .truncate(opts.resume.is_none())
            .open(&metrics_path)
            .map_err(|e| Error::io(&metrics_path, e))?;
        metrics = Some(file);
    }
    // Only the first rank writes the record.
    let mut record = |line: serde_json::Value| -> Result<()> {
        match &mut metrics {
            Some(m) => writeln!(m, "{line}").map_err(|e| Error::io(&metrics_path, e)),
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

    let (knn_init, knn_init_data_bn) = if opts.resume.is_none() {
        let data_bn =
            knn_with_data_statistics(&byol, &state, &train, &test, &aug, cfg, (rank, shard))?;
        match data_bn {
            Some(data_bn) => {
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
                (Some(acc), Some(data_bn))
            }
            None => (None, None),
        }
    } else {
        (None, None)
    };
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
            let line = format!(
                "epoch {}/{}: loss {:.4}, kNN top-1 {:.2}%, projection std·√d {:.3}, effective rank {:.1}{}, {:.0} s",
                rec.epoch,
                cfg.optim.epochs,
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
    if lead && epochs.is_empty() && opts.resume.is_none() {
        // `--stop-after-epochs 0`: the untrained networks, to export or to resume.
        let host_state = state.to_host(&byol.backend)?;
        checkpoint::save(&opts.out.join(CHECKPOINT), &byol, &host_state, &cfg.json())?;
    }
    if lead {
        crate::plot::plot_metrics(&metrics_path, &opts.out.join("training.png"))?;
    }
    // No rank leaves (and finalises its collective) before the first has written its files.
    collective.barrier()?;
    Ok(Summary {
        knn_init,
        knn_init_data_bn,
        epochs,
        collapsed_at,
        images_per_s: images as f64 / run_start.elapsed().as_secs_f64(),
        out: opts.out.clone(),
    })
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

/// The fields in which two configurations differ, `section.name: stored → requested`.
fn config_diff(stored: &TrainConfig, requested: &TrainConfig) -> String {
    fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v.as_object() {
            Some(fields) => {
                for (k, v) in fields {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&path, v, out);
                }
            }
            None => out.push((prefix.to_string(), v.to_string())),
        }
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    leaves("", &serde_json::to_value(stored).unwrap(), &mut a);
    leaves("", &serde_json::to_value(requested).unwrap(), &mut b);
    let value = |fields: &[(String, String)], k: &str| {
        let v = fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
        v.unwrap_or_else(|| "(unset)".into())
    };
    let mut keys: Vec<String> = a.iter().chain(&b).map(|(k, _)| k.clone()).collect();
    keys.sort();
    keys.dedup();
    let diffs: Vec<String> = keys
        .iter()
        .filter(|k| value(&a, k) != value(&b, k))
        .map(|k| format!("{k}: {} → {}", value(&a, k), value(&b, k)))
        .collect();
    diffs.join(", ")
}

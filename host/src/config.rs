//! A run's configuration: [`TrainConfig`], nested by who reads it (data, model, optim,
//! augment, ablation, monitor), how it is checked ([`TrainConfig::validate`]) and turned into
//! the networks' and the optimiser's settings, and the files it lives in: configuration files
//! (TOML, or a run's `config.json`), flags laid over them ([`given_fields`], [`overlay`]), the
//! copy a checkpoint stores ([`saved_config`]), and its older flat form.
//!
//! The order a run's configuration is assembled in: the recipe for its images (or the one it
//! names, [`crate::recipe`]), then the file's fields, then the flags given.

use crate::byol::{closed_form, ByolConfig, Objective, Optimizer, OptimizerKind, PredictorKind};
use crate::checkpoint;
use crate::data::augment::ViewConfig;
use crate::error::{field_name, Error, Origin, Result};
use crate::nn::mlp::SimplicialEmbedding;
use crate::nn::{Arch, ResNetConfig, Stem};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The checkpoint's name in a run folder.
pub const CHECKPOINT: &str = "checkpoint.safetensors";

/// The configuration's name in a run folder (JSON, a valid `--config` file).
pub const RUN_CONFIG: &str = "config.json";

/// The metrics' name in a run folder (JSON lines: a record per step and per epoch).
pub const METRICS: &str = "metrics.jsonl";

/// The evaluations' name in a run folder (JSON lines: a record per `host eval knn|linear`).
pub const EVALUATIONS: &str = "evaluations.jsonl";

/// The plot's name in a run folder (loss, kNN accuracy, lr and τ; `host plot` redraws it).
pub const PLOT: &str = "training.png";

/// The data sets [`crate::train::load_data`] reads.
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
    /// imagenet-40]. Each is written out, field by field, in `configs/<recipe>.toml`. Fields set
    /// explicitly override it; it is recorded so a run says where it came from.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub recipe: String,
    /// Fixes initialisation (unless `init_seed` is set), data order and augmentations.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub seed: u64,
    /// Draws the initial weights from this seed instead of `seed`, which then fixes only the
    /// data order and the augmentations: to tell a bad initialisation from a bad data stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[arg(long)]
    pub init_seed: Option<u64>,
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
    /// Hidden units of the projector MLP (4096 in the paper and the official presets; 1024 in
    /// the small recipe).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub projector_hidden: usize,
    /// Output size of the projector, and so of the predictor (256 in the paper).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub projection_dim: usize,
    /// Hidden units of the predictor MLP (as the projector's).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub predictor_hidden: usize,
    /// Linear layers of the projector (2 in the paper; 1 is a single Linear; the paper's
    /// depth ablation).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub projector_depth: usize,
    /// Linear layers of the predictor.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub predictor_depth: usize,
    /// A simplicial embedding in front of the projector, as byol-pytorch builds by default (not
    /// in the paper): off, or GROUPSxSIZE (byol-pytorch's is 32x8: a Linear to 256 features,
    /// a BatchNorm, then a softmax over each of 32 groups of 8).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub simplicial_embedding: String,
    /// Temperature of the simplicial embedding's softmax (byol-pytorch: 0.1).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub simplicial_temperature: f64,
    /// How fresh weights are drawn: torchvision (PyTorch's defaults, as the PyTorch ports) or
    /// official (the official BYOL code's Haiku defaults: truncated normal 1/√fan_in, zero
    /// biases, each bottleneck block's last BatchNorm γ = 0).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub init: String,
    /// Start residual blocks as their shortcuts: γ = 0 on the BatchNorm that closes each
    /// block's residual branch (torchvision's `zero_init_residual`), whatever `init` draws.
    #[arg(long, action = clap::ArgAction::Set, default_value_t, hide_default_value = true)]
    pub zero_init_residual: bool,
    /// With `zero_init_residual`, the first stage (1–4, torchvision's `layer1`–`layer4`)
    /// whose blocks start from zero: 1 zeroes every block (torchvision's), 3 the last two
    /// stages only and leaves the first two as drawn.
    #[arg(long, default_value_t, hide_default_value = true)]
    pub zero_init_from_stage: usize,
}

impl ModelConfig {
    /// The first stage whose residual blocks start as their shortcuts, or `None` when
    /// `zero_init_residual` is off: the one reading of the two fields.
    pub fn zero_residual_from_stage(&self) -> Option<usize> {
        self.zero_init_residual.then_some(self.zero_init_from_stage)
    }

    /// Sets `zero_init_residual` and `zero_init_from_stage` from that reading (`None`: every
    /// branch as drawn, the stage back at its default 1).
    pub fn set_zero_residual_from_stage(&mut self, stage: Option<usize>) {
        self.zero_init_residual = stage.is_some();
        self.zero_init_from_stage = stage.unwrap_or(1);
    }

    /// The projector's simplicial embedding from `simplicial_embedding` and
    /// `simplicial_temperature`: `None` for `off`.
    pub fn simplicial_embedding(&self) -> Result<Option<SimplicialEmbedding>> {
        let field = "model.simplicial_embedding";
        let text = self.simplicial_embedding.as_str();
        if text == "off" {
            return Ok(None);
        }
        let parsed = text
            .split_once('x')
            .and_then(|(g, v)| Some((g.parse::<usize>().ok()?, v.parse::<usize>().ok()?)))
            .filter(|&(g, v)| g > 0 && v > 0);
        let Some((groups, group)) = parsed else {
            return Err(Error::setting(
                field,
                format!("{text:?}: expected off or GROUPSxSIZE with both at least 1 (byol-pytorch's: 32x8)"),
            ));
        };
        let t = self.simplicial_temperature;
        if !(t > 0.0 && t.is_finite()) {
            return Err(Error::setting(
                "model.simplicial_temperature",
                format!("the softmax temperature must be positive, got {t}"),
            ));
        }
        Ok(Some(SimplicialEmbedding {
            groups,
            group,
            temperature: t as f32,
        }))
    }
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
            simplicial_embedding: "off".into(),
            simplicial_temperature: 0.1,
            init: "torchvision".into(),
            zero_init_residual: false,
            zero_init_from_stage: 1,
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
    /// LARS trust coefficient η (1e-3 in the official code; the small recipe's is 0.05 below
    /// batch 128 and 0.02 from 128 up, unless given).
    #[arg(long, default_value_t, hide_default_value = true)]
    pub lars_eta: f64,
    /// Cap LARS's per-tensor rate at the scheduled learning rate (LARC's clip mode).
    #[arg(long, action = clap::ArgAction::Set, default_value_t, hide_default_value = true)]
    pub lars_clip: bool,
    /// Target decay at step 0, rising to tau_end along a cosine (0.996 in the paper; the small
    /// recipe's is 0.9 up to 200 epochs and 0.99 from 201 up, unless given).
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

/// Whether `table` (flags from [`given_fields`], or a file's fields) sets `field`, a key
/// `section.name` (`data.dataset`) or a top-level one (`recipe`).
pub fn sets(table: &toml::Table, field: &str) -> bool {
    match field.split_once('.') {
        Some((section, name)) => (table.get(section))
            .and_then(toml::Value::as_table)
            .is_some_and(|t| t.contains_key(name)),
        None => table.contains_key(field),
    }
}

/// `e` with its origin set when it is an [`Error::Setting`]: the flag when `flags` (from
/// [`given_fields`], nested by section) holds the field, else the file when its table does;
/// other errors pass unchanged.
pub fn attribute(e: Error, flags: &toml::Table, file: Option<(&Path, &toml::Table)>) -> Error {
    let origin = match (&e, file) {
        (Error::Setting { field, .. }, _) if sets(flags, field) => Origin::Flag,
        (Error::Setting { field, .. }, Some((path, table))) if sets(table, field) => {
            Origin::File(path.into())
        }
        _ => Origin::Unknown,
    };
    e.set_in(origin)
}

impl Default for TrainConfig {
    /// The embedded data set with the small-image recipe ([`crate::recipe::SMALL`]): about five
    /// minutes on two cores.
    fn default() -> Self {
        let mut c = TrainConfig {
            recipe: String::new(),
            seed: 0,
            init_seed: None,
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

    /// Rejects settings no run can use with an [`Error::Setting`] naming the field (the
    /// caller that knows where each value came from sets its origin: [`attribute`]).
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: String| Err(Error::setting(field, reason));
        if !DATASETS.contains(&self.data.dataset.as_str()) {
            return bad(
                "data.dataset",
                format!(
                    "dataset {:?} is not available: expected one of {}",
                    self.data.dataset,
                    DATASETS.join(", ")
                ),
            );
        }
        if self.data.dataset != "synthetic" && self.data.data_dir.is_none() {
            let fetch = match crate::data::download::source(&self.data.dataset) {
                Ok(_) => format!(
                    "; `host download {}` fetches it into data/, then pass --data-dir data",
                    self.data.dataset
                ),
                Err(_) => String::new(),
            };
            return bad(
                "data.dataset",
                format!(
                    "dataset {:?} reads files: give their folder as data_dir (--data-dir){fetch}",
                    self.data.dataset
                ),
            );
        }
        if self.data.dataset == "synthetic" && self.data.data_dir.is_some() {
            // Without this the folder would be ignored and the embedded set trained on.
            return bad(
                "data.data_dir",
                format!(
                    "the embedded data set (dataset \"synthetic\") is generated and reads no folder: \
                     name the folder's data set with --dataset (one of {})",
                    DATASETS
                        .iter()
                        .filter(|d| **d != "synthetic")
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        if self.optim.epochs == 0 {
            return bad("optim.epochs", "epochs must be at least 1".into());
        }
        for (field, v) in [
            ("data.limit_train", self.data.limit_train.unwrap_or(1)),
            ("data.limit_test", self.data.limit_test.unwrap_or(1)),
            ("model.width", self.model.width),
            ("model.projector_hidden", self.model.projector_hidden),
            ("model.projection_dim", self.model.projection_dim),
            ("model.predictor_hidden", self.model.predictor_hidden),
            ("data.image_size", self.data.image_size),
        ] {
            if v == 0 {
                let name = field_name(field);
                return bad(
                    field,
                    format!("{name} is a size: it must be at least 1, got 0"),
                );
            }
        }
        if self.optim.batch_size < 2 {
            return bad(
                "optim.batch_size",
                format!(
                    "batch size must be at least 2 (BatchNorm needs two samples), got {}",
                    self.optim.batch_size
                ),
            );
        }
        if self.data.dataset == "synthetic" && self.optim.batch_size > self.data.train_size {
            return bad(
                "optim.batch_size",
                format!(
                    "batch size {} is larger than the training set ({} images)",
                    self.optim.batch_size, self.data.train_size
                ),
            );
        }
        if !(self.optim.base_lr > 0.0 && self.optim.base_lr.is_finite()) {
            return bad(
                "optim.base_lr",
                format!("base lr must be positive, got {}", self.optim.base_lr),
            );
        }
        if !(self.optim.weight_decay >= 0.0 && self.optim.weight_decay.is_finite()) {
            return bad(
                "optim.weight_decay",
                format!("weight decay must be ≥ 0, got {}", self.optim.weight_decay),
            );
        }
        if let Some(t) = self
            .ablation
            .tau_constant
            .filter(|t| !(0.0..=1.0).contains(t))
        {
            return bad(
                "ablation.tau_constant",
                format!("tau_constant must lie in [0, 1], got {t}"),
            );
        }
        for (field, m) in [
            (
                "ablation.predictor_lr_mult",
                self.ablation.predictor_lr_mult,
            ),
            (
                "ablation.projector_lr_mult",
                self.ablation.projector_lr_mult,
            ),
        ] {
            if !(m >= 0.0 && m.is_finite()) {
                return bad(
                    field,
                    format!("learning-rate multipliers must be ≥ 0 (0 freezes the part), got {m}"),
                );
            }
        }
        self.views()
            .map_err(Error::about("augment.augmentations"))?;
        for (field, p) in [
            ("augment.blur_t", self.augment.blur_t),
            ("augment.blur_t_prime", self.augment.blur_t_prime),
        ] {
            if !(0.0..=1.0).contains(&p) {
                let name = field_name(field);
                return bad(
                    field,
                    format!("{name} is a probability: expected [0, 1], got {p}"),
                );
            }
        }
        if !(self.augment.crop_min_scale > 0.0 && self.augment.crop_min_scale <= 1.0) {
            return bad(
                "augment.crop_min_scale",
                format!(
                    "crop_min_scale is a fraction of the image: expected (0, 1], got {}",
                    self.augment.crop_min_scale
                ),
            );
        }
        // Hue shifts are turns in [-0.5, 0.5]: 0.1 · strength must stay within them.
        if !(0.0..=5.0).contains(&self.augment.colour_strength) {
            return bad(
                "augment.colour_strength",
                format!(
                    "colour_strength scales the paper's colour jitter: expected [0, 5], got {}",
                    self.augment.colour_strength
                ),
            );
        }
        if !(self.optim.lars_eta > 0.0 && self.optim.lars_eta.is_finite()) {
            return bad(
                "optim.lars_eta",
                format!(
                    "lars_eta (the trust coefficient) must be positive, got {}",
                    self.optim.lars_eta
                ),
            );
        }
        self.optimizer()?;
        if !self.recipe.is_empty() {
            crate::recipe::named(&self.recipe).map_err(Error::about("recipe"))?;
        }
        if !(0.0..=1.0).contains(&self.optim.tau_base) {
            return bad(
                "optim.tau_base",
                format!("tau_base must lie in [0, 1], got {}", self.optim.tau_base),
            );
        }
        if !(self.optim.tau_end >= self.optim.tau_base && self.optim.tau_end <= 1.0) {
            return bad(
                "optim.tau_end",
                format!(
                    "tau_end must lie in [tau_base, 1] = [{}, 1], got {}",
                    self.optim.tau_base, self.optim.tau_end
                ),
            );
        }
        let monitor = "the kNN monitor needs a test split, k ≥ 1 and a positive temperature";
        if self.data.test_size == 0 {
            return bad("data.test_size", format!("{monitor}, got 0 images"));
        }
        if self.monitor.knn_k == 0 {
            return bad("monitor.knn_k", format!("{monitor}, got k = 0"));
        }
        if !(self.monitor.knn_temperature > 0.0 && self.monitor.knn_temperature.is_finite()) {
            return bad(
                "monitor.knn_temperature",
                format!("{monitor}, got {}", self.monitor.knn_temperature),
            );
        }
        self.byol_config().map(|_| ())
    }

    pub fn byol_config(&self) -> Result<ByolConfig> {
        let stem = match self.model.stem.as_str() {
            "cifar" => Stem::Cifar,
            "imagenet" => Stem::ImageNet,
            s => {
                return Err(Error::setting(
                    "model.stem",
                    format!("stem {s:?}: expected cifar or imagenet"),
                ))
            }
        };
        let arch: Arch = self
            .model
            .arch
            .parse()
            .map_err(Error::about("model.arch"))?;
        let predictor = match (self.ablation.predictor, self.ablation.closed_form_predictor) {
            (true, false) => PredictorKind::Learned,
            (true, true) => PredictorKind::ClosedForm,
            (false, false) => PredictorKind::None,
            (false, true) => {
                return Err(Error::setting(
                    "ablation.closed_form_predictor",
                    "closed_form_predictor replaces the predictor: it cannot be combined with predictor = false",
                ))
            }
        };
        if self.ablation.closed_form_predictor {
            closed_form::check_shape(self.optim.batch_size, self.model.projection_dim)
                .map_err(Error::about("ablation.closed_form_predictor"))?;
        }
        for (field, depth) in [
            ("model.projector_depth", self.model.projector_depth),
            ("model.predictor_depth", self.model.predictor_depth),
        ] {
            if depth == 0 {
                return Err(Error::setting(
                    field,
                    "projector_depth and predictor_depth count Linear layers: at least 1",
                ));
            }
        }
        if !(1..=4).contains(&self.model.zero_init_from_stage) {
            return Err(Error::setting(
                "model.zero_init_from_stage",
                format!(
                    "a ResNet has stages 1 to 4 (torchvision's layer1 to layer4), got {}",
                    self.model.zero_init_from_stage
                ),
            ));
        }
        if !self.ablation.target_network && self.ablation.tau_constant.is_some() {
            return Err(Error::setting(
                "ablation.tau_constant",
                "tau_constant sets the target network's decay, but target_network = false",
            ));
        }
        let objective = Objective {
            normalisation: (self.ablation.loss_normalisation.parse())
                .map_err(Error::about("ablation.loss_normalisation"))?,
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
            projector_embedding: self.model.simplicial_embedding()?,
            predictor,
            target_network: self.ablation.target_network,
            target_init: (self.optim.target_init.parse())
                .map_err(Error::about("optim.target_init"))?,
            init: self
                .model
                .init
                .parse()
                .map_err(Error::about("model.init"))?,
            zero_residual_from_stage: self.model.zero_residual_from_stage(),
            objective,
        })
    }

    /// The optimiser of the run, from `optimizer`, `lars_eta`, `lars_clip`, `momentum` and
    /// `weight_decay`.
    pub fn optimizer(&self) -> Result<Optimizer> {
        if !(0.0..1.0).contains(&self.optim.momentum) {
            return Err(Error::setting(
                "optim.momentum",
                format!("momentum must lie in [0, 1), got {}", self.optim.momentum),
            ));
        }
        let kind = match self.optim.optimizer.as_str() {
            "lars" => OptimizerKind::Lars {
                trust_coefficient: self.optim.lars_eta as f32,
                clip: self.optim.lars_clip,
            },
            "sgd" => OptimizerKind::Sgd,
            "adamw" => OptimizerKind::AdamW,
            o => {
                return Err(Error::setting(
                    "optim.optimizer",
                    format!("optimizer {o:?}: expected lars, sgd or adamw"),
                ))
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
        if self.model.simplicial_embedding != "off" {
            let embedding = |c: &TrainConfig| {
                let m = &c.model;
                format!(
                    "{} (T {})",
                    m.simplicial_embedding, m.simplicial_temperature
                )
            };
            differs("simplicial_embedding", embedding(self), embedding(&d));
        }
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

    /// The fields this configuration does not read, each with what its value would have
    /// shaped and why it shapes nothing here (the message after the field's name): whatever
    /// they hold, the run is the same. A command refuses them where the user set them, so
    /// that no value is dropped without a word (`--lars-eta` under SGD, `--image-size` on
    /// CIFAR-10).
    pub fn unread_fields(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut unread = |fields: &[&'static str], when: bool, why: &dyn Fn() -> String| {
            if when {
                out.extend(fields.iter().map(|f| (*f, why())));
            }
        };
        let dataset = &self.data.dataset;
        unread(&["data.image_size"], dataset != "folder", &|| {
            format!("is read by dataset \"folder\" only; {dataset:?} keeps its images' side")
        });
        unread(
            &["data.train_size", "data.test_size"],
            dataset != "synthetic",
            &|| {
                format!(
                    "is read by dataset \"synthetic\" only; for {dataset:?} limit_train and \
                     limit_test (--limit-train, --limit-test) take subsets"
                )
            },
        );
        let optimizer = &self.optim.optimizer;
        unread(
            &["optim.lars_eta", "optim.lars_clip"],
            optimizer != "lars",
            &|| format!("is read by optimizer \"lars\" only; this run's is {optimizer:?}"),
        );
        let a = &self.ablation;
        unread(
            &["optim.tau_base", "optim.tau_end", "optim.target_init"],
            !a.target_network,
            &|| "shapes the target network, which target_network = false leaves out".into(),
        );
        if let Some(t) = a.tau_constant.filter(|_| a.target_network) {
            unread(&["optim.tau_base", "optim.tau_end"], true, &|| {
                format!("shapes the cosine τ schedule, which tau_constant = {t} replaces")
            });
        }
        let no_learned_predictor = match (a.predictor, a.closed_form_predictor) {
            (false, _) => Some("predictor = false leaves out"),
            (true, true) => Some("closed_form_predictor = true replaces"),
            (true, false) => None,
        };
        if let Some(how) = no_learned_predictor {
            unread(
                &[
                    "model.predictor_hidden",
                    "model.predictor_depth",
                    "ablation.predictor_lr_mult",
                ],
                true,
                &|| format!("shapes the learned predictor, which {how}"),
            );
        }
        unread(
            &["model.zero_init_from_stage"],
            !self.model.zero_init_residual,
            &|| "picks the blocks that zero_init_residual starts from zero; it is false".into(),
        );
        unread(
            &["model.simplicial_temperature"],
            self.model.simplicial_embedding == "off",
            &|| "is the simplicial embedding's; simplicial_embedding is off".into(),
        );
        unread(
            &["ablation.contrastive_temperature"],
            a.contrastive_beta == 0.0,
            &|| "is the contrastive term's; contrastive_beta = 0 leaves it out (BYOL)".into(),
        );
        // The augmentation set decides which of T and T′ blur and jitter: a blur probability
        // is read where the views change with it, the colour strength where a view jitters.
        let set = &self.augment.augmentations;
        let views_with = |f: &dyn Fn(&mut AugmentConfig)| {
            let mut c = self.clone();
            f(&mut c.augment);
            c.views().ok()
        };
        for (field, blur) in [
            (
                "augment.blur_t",
                (|a, p| a.blur_t = p) as fn(&mut AugmentConfig, f64),
            ),
            ("augment.blur_t_prime", |a, p| a.blur_t_prime = p),
        ] {
            let (off, on) = (views_with(&|a| blur(a, 0.0)), views_with(&|a| blur(a, 1.0)));
            let never = off.is_some() && off == on;
            unread(&[field], never, &|| {
                format!(
                    "is a blur probability that augmentation set {set:?} does not use (the view \
                     has no blur, or takes T's)"
                )
            });
        }
        let jitters = self.views().is_ok_and(|v| v.iter().any(|v| v.jitter > 0.0));
        unread(&["augment.colour_strength"], !jitters, &|| {
            format!("scales the colour jitter; augmentation set {set:?} has none")
        });
        out
    }

    /// The configuration as `config.json` and checkpoints store it.
    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("a config serialises")
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

/// [`checkpoint_path`] of a run that has one; else an error naming `run` and saying whether
/// the run or its checkpoint is missing.
pub fn existing_checkpoint(run: &Path) -> Result<PathBuf> {
    existing_run_file(
        run,
        checkpoint_path(run),
        "run folder or checkpoint file",
        &format!("{CHECKPOINT} in that folder (a run writes it at the end of each epoch)"),
    )
}

/// `run/metrics.jsonl` of a run that has one; else an error naming `run` and saying whether
/// the run or its record is missing.
pub fn existing_metrics(run: &Path) -> Result<PathBuf> {
    existing_run_file(
        run,
        run.join(METRICS),
        "run folder",
        &format!("{METRICS} in that folder (a run writes it as it trains)"),
    )
}

/// `path` when it is a file; else an error naming `run`: "no such `run_kind`" when `run` is not
/// a folder, "no `file`" when the folder lacks the file.
fn existing_run_file(run: &Path, path: PathBuf, run_kind: &str, file: &str) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path);
    }
    let reason = if run.is_dir() {
        format!("no {file}")
    } else {
        format!("no such {run_kind}")
    };
    Err(Error::Data {
        path: run.into(),
        reason,
    })
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
        // toml's messages end in a newline, which would leave a blank line under the error.
        reason: format!("not a valid configuration: {}", reason.trim_end()),
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

/// `Err` with the fields that differ ([`config_diff`]) unless `stored` (a checkpoint's, a
/// finished run's) and `requested` define the same run. Where the data set's files are does
/// not change a run: data moved since, or a relative folder read from elsewhere, is read from
/// where `requested.data.data_dir` says.
pub fn same_run(stored: &TrainConfig, requested: &TrainConfig) -> std::result::Result<(), String> {
    let stored = TrainConfig {
        data: DataConfig {
            data_dir: requested.data.data_dir.clone(),
            ..stored.data.clone()
        },
        ..stored.clone()
    };
    if &stored == requested {
        Ok(())
    } else {
        Err(config_diff(&stored, requested))
    }
}

/// The fields in which two configurations differ, `section.name: stored → requested`.
pub fn config_diff(stored: &TrainConfig, requested: &TrainConfig) -> String {
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

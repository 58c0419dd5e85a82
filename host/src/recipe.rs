//! Recipes: the hyper-parameters a run starts from, chosen by the scale of the data.
//!
//! The official presets (`imagenet-40|100|300|1000`, README "Recipes") are the paper's ImageNet
//! schedules at batch 4096: LARS with η = 1e-3, an independently initialised target, τ rising
//! to 1, blur on every T view. At batch 128 on 32-px images they barely move the weights (a
//! LARS step moves each tensor by about lr·η of its norm) and the kNN accuracy first falls
//! below the random encoder's. `small` is the recipe for images of 96 px and below (CIFAR,
//! STL-10, MNIST sizes, batch 64–512), chosen by the `recipe` study (`host ablate recipe`,
//! README "Recipes"), which turns each of its elements on alone against the official one.
//! `train` picks `small` for images of 96 px and below and `imagenet-40` above, unless
//! `--recipe` or `--preset` says otherwise; every field can still be set on its own. Two values
//! follow the run's shape: `small`'s LARS η follows the batch ([`Recipe::lars_eta_at`]) and its
//! τ_base the number of epochs ([`Recipe::tau_base_at`]); `train` derives them again
//! ([`follow_batch`], [`follow_length`]) when a file or a flag sets the batch or the epochs and
//! not the value itself.

use crate::byol::schedule::{preset, Preset, PRESETS};
use crate::config::TrainConfig;
use crate::error::{Error, Result};

/// The hyper-parameters a recipe sets; everything else in [`TrainConfig`] is left alone.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recipe {
    pub name: &'static str,
    pub epochs: usize,
    /// The batch the recipe was chosen at; `None` leaves the run's (the official presets are
    /// for batch 4096, which runs here rarely have: their lr scales with the batch instead).
    pub batch_size: Option<usize>,
    pub warmup_epochs: usize,
    pub optimizer: &'static str,
    pub base_lr: f64,
    pub weight_decay: f64,
    /// LARS's trust coefficient η below the batch of `lars_eta_large_batch`.
    pub lars_eta: f64,
    /// From this batch up, η is this instead of `lars_eta` (`None`: `lars_eta` at every batch).
    pub lars_eta_large_batch: Option<(usize, f64)>,
    pub lars_clip: bool,
    /// The target's decay at step 0, below the epochs of `tau_base_long_run`.
    pub tau_base: f64,
    /// From this many epochs up, τ_base is this instead of `tau_base` (`None`: `tau_base` at
    /// every length).
    pub tau_base_long_run: Option<(usize, f64)>,
    pub tau_end: f64,
    pub target_init: &'static str,
    /// Blur probabilities of T and T′.
    pub blur: [f64; 2],
    /// Smallest area of the random resized crop.
    pub crop_min_scale: f64,
    /// Learning-rate multiplier of the predictor (λ; 1 in the paper's main runs).
    pub predictor_lr_mult: f64,
    /// Hidden units of the projector and of the predictor MLP (4096 in the paper).
    pub mlp_hidden: usize,
    /// The first encoder stage (1–4) whose residual blocks start as their shortcuts (γ = 0
    /// on the BatchNorm closing each branch), or `None`: every branch as drawn.
    pub zero_init_from_stage: Option<usize>,
}

/// The recipe for images of 96 px and below (see the module's docs and the README for the
/// measurements behind each value).
pub const SMALL: Recipe = Recipe {
    name: "small",
    epochs: 8,
    // At this scale more, smaller steps win: the default run reached 71.6% kNN after 8 of 10
    // epochs at batch 64 against 53.6% after 10 at batch 128, for about the same time per
    // epoch (39 s vs 35–39 s here); README "Recipes".
    batch_size: Some(64),
    warmup_epochs: 1,
    optimizer: "lars",
    base_lr: 1.0,
    weight_decay: 1e-4,
    lars_eta: 0.05,
    // At batch 128 η 0.05 failed on two Fashion-MNIST seeds of seven (kNN 45.2 and 47.55: the
    // representation's rank fell to 4–5 at the peak lr and did not recover); η 0.02 ended
    // 3.9 ± 2.2 points higher over the seven, failed on none, and was ahead on the real digits
    // too (+1.75 ± 1.2 over four seeds). At batch 64 the two are level on Fashion-MNIST and
    // η 0.02 loses on the digits (−3.55 ± 3.6 over four seeds, behind on three), so the
    // small η is for the larger batches only; README "Recipes", "η follows the batch".
    lars_eta_large_batch: Some((128, 0.02)),
    lars_clip: true,
    // A target that moves fast early: the paper's cosine rise to 1, from 0.9. Against 0.99 → 1
    // the default run ends 18.3 ± 7.5 points of kNN higher (five seeds, level or ahead on all),
    // ten epochs on Fashion-MNIST 2.60 ± 0.73 higher at batch 128 (thirteen seeds, ahead on
    // eleven) and level at batch 64 (−0.20 ± 0.96, thirteen seeds). At twenty epochs it is level
    // over three real sets (+0.82 ± 0.91, fourteen seeds; CIFAR-10 +1.84 ± 1.07), and at thirty
    // ahead on CIFAR-10 (+1.38 ± 0.62, six seeds) and level on Fashion-MNIST (−0.38 ± 0.81, six),
    // where it gains from the longer run as much as 0.99 → 1 does; at forty epochs ahead on
    // Fashion-MNIST (+1.53 ± 0.81, six seeds, on a GPU) and on CIFAR-10 (+1.58 ± 0.65, seven),
    // where the two gain the same from the ten more epochs; at sixty epochs still ahead on
    // Fashion-MNIST (+1.31 ± 0.76, twelve seeds, on a GPU), though there the slower target
    // gains more from forty to sixty (+2.99 against +2.44 over six seeds), and on CIFAR-10
    // within the noise (+1.76 ± 0.97, seven seeds; the two gain the same from forty); at a
    // hundred epochs ahead on CIFAR-10 (+1.99 ± 0.94, seven seeds, ahead on six), and at a hundred
    // and fifty further ahead (+5.02 ± 0.82, six seeds, ahead on six), and at two hundred still
    // ahead (+4.01 ± 0.55, six seeds, ahead on six). Never behind on average up to two hundred
    // epochs over six seeds or more, so it runs that far; longer runs keep the paper's slower
    // target, as solo-learn's and lightly's CIFAR configurations do for hundreds of epochs, until
    // a longer run says otherwise. Where the slower target comes closest, Fashion-MNIST, the fast
    // one is ahead at a hundred epochs over six seeds too (+1.38 ± 0.80, behind on the first two;
    // the linear probe has it ahead on five, +0.50 ± 0.24), and at two hundred by less (+0.59 ±
    // 0.23, six seeds, level on one; the linear probe level, −0.28 ± 0.37): the slower target
    // gains there as the run grows, which agrees with going back to 0.99 past two hundred epochs.
    // Level too at fifteen epochs (+0.3 ± 1.2, three seeds), at the studies' six epochs
    // (+2.3 ± 7.7, five) and at batch 256 (+0.5 ± 7.7, three). README "Recipes", "τ follows the
    // length".
    tau_base: 0.9,
    tau_base_long_run: Some((201, 0.99)),
    tau_end: 1.0,
    target_init: "copy",
    blur: [0.0, 0.0],
    // The paper's. 0.2 lifts the embedded set (62.2% mean kNN over five seeds against 42.7%:
    // its small shapes fall outside 8% crops) but loses 3.4 points on average over four
    // Fashion-MNIST seeds, whose garments fill the frame, and 4–11 on two seeds of real
    // digits; README "Training".
    crop_min_scale: 0.08,
    predictor_lr_mult: 1.0,
    // Over thirteen Fashion-MNIST seeds at batch 64, 1024 hidden units end 1.95 ± 1.10 points
    // above the paper's 4096 after ten epochs (ahead on nine; two of the three stalled runs
    // recover), 3.03 ± 1.97 above byol-pytorch (5.25 ± 0.73 on the six seeds held out from
    // the choice); an epoch takes about 13% less time. README "Recipes", "MLP width".
    mlp_hidden: 1024,
    // The blocks of `layer3` and `layer4` start as their shortcuts. Over thirteen
    // Fashion-MNIST seeds (second draw, batch 128, ten epochs) no run failed, 4.13 ± 0.90
    // points above byol-pytorch (drawn branches: 0.83 ± 1.88), and +6.29 ± 1.35 over 13 at
    // batch 64 on the first draw. Every block from zero did as well there but left the
    // embedded set's default run at 24%; with these four it reads 27.5% → 61.8%. README
    // "Recipes", "Residual branches".
    zero_init_from_stage: Some(3),
};

/// The names [`named`] knows.
pub const RECIPES: [&str; 5] = [
    "small",
    "imagenet-40",
    "imagenet-100",
    "imagenet-300",
    "imagenet-1000",
];

/// An official preset as a recipe: its length, base lr, weight decay and τ_base, 10 warm-up
/// epochs, and the official code's LARS, target initialisation, τ end and augmentations.
pub fn imagenet(p: Preset) -> Recipe {
    Recipe {
        name: match p.epochs {
            40 => "imagenet-40",
            100 => "imagenet-100",
            300 => "imagenet-300",
            _ => "imagenet-1000",
        },
        epochs: p.epochs,
        batch_size: None,
        warmup_epochs: 10,
        optimizer: "lars",
        base_lr: p.base_lr,
        weight_decay: p.weight_decay,
        lars_eta: 1e-3,
        lars_eta_large_batch: None,
        lars_clip: false,
        tau_base: p.tau_base,
        tau_base_long_run: None,
        tau_end: 1.0,
        target_init: "independent",
        blur: [1.0, 0.1],
        crop_min_scale: 0.08,
        predictor_lr_mult: 1.0,
        mlp_hidden: 4096,
        zero_init_from_stage: None,
    }
}

/// The recipe called `name`: `small` or `imagenet-<epochs>`.
pub fn named(name: &str) -> Result<Recipe> {
    if name == "small" {
        return Ok(SMALL);
    }
    name.strip_prefix("imagenet-")
        .and_then(preset)
        .map(imagenet)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown recipe {name:?}: expected one of {}",
                RECIPES.join(", ")
            ))
        })
}

/// The recipe `train` uses for images of `side` pixels when none is named.
pub fn for_image_side(side: usize) -> Recipe {
    if side <= 96 {
        SMALL
    } else {
        imagenet(PRESETS[0])
    }
}

impl Recipe {
    /// LARS's η at `batch`.
    pub fn lars_eta_at(&self, batch: usize) -> f64 {
        stepped(self.lars_eta, self.lars_eta_large_batch, batch)
    }

    /// τ_base for a run of `epochs`.
    pub fn tau_base_at(&self, epochs: usize) -> f64 {
        stepped(self.tau_base, self.tau_base_long_run, epochs)
    }

    /// Sets the recipe's fields of `c` (and records its name there).
    pub fn apply(&self, c: &mut TrainConfig) {
        c.recipe = self.name.into();
        c.optim.epochs = self.epochs;
        if let Some(b) = self.batch_size {
            c.optim.batch_size = b;
        }
        c.optim.warmup_epochs = self.warmup_epochs;
        c.optim.optimizer = self.optimizer.into();
        c.optim.base_lr = self.base_lr;
        c.optim.weight_decay = self.weight_decay;
        c.optim.lars_eta = self.lars_eta_at(c.optim.batch_size);
        c.optim.lars_clip = self.lars_clip;
        c.optim.tau_base = self.tau_base_at(c.optim.epochs);
        c.optim.tau_end = self.tau_end;
        c.optim.target_init = self.target_init.into();
        [c.augment.blur_t, c.augment.blur_t_prime] = self.blur;
        c.augment.crop_min_scale = self.crop_min_scale;
        c.ablation.predictor_lr_mult = self.predictor_lr_mult;
        c.model.projector_hidden = self.mlp_hidden;
        c.model.predictor_hidden = self.mlp_hidden;
        c.model
            .set_zero_residual_from_stage(self.zero_init_from_stage);
    }
}

/// `value` below the first of `step` (a batch, a number of epochs), its second from there up.
fn stepped(value: f64, step: Option<(usize, f64)>, at: usize) -> f64 {
    match step {
        Some((from, stepped)) if at >= from => stepped,
        _ => value,
    }
}

/// Sets `c`'s η to the one its recipe gives at its batch, for a configuration whose batch was
/// set after its recipe (by a file, a flag or a study) and whose η was not. A recipe name that
/// is not one of [`RECIPES`] leaves η alone.
pub fn follow_batch(c: &mut TrainConfig) {
    if let Ok(r) = named(&c.recipe) {
        c.optim.lars_eta = r.lars_eta_at(c.optim.batch_size);
    }
}

/// Sets `c`'s τ_base to the one its recipe gives for its number of epochs, for a configuration
/// whose epochs were set after its recipe (by a file, a flag or a study) and whose τ_base was
/// not. A recipe name that is not one of [`RECIPES`] leaves τ_base alone.
pub fn follow_length(c: &mut TrainConfig) {
    if let Ok(r) = named(&c.recipe) {
        c.optim.tau_base = r.tau_base_at(c.optim.epochs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagenet_recipes_should_be_the_official_presets_exactly() {
        // The official configuration: epochs → (base lr, weight decay, τ_base), warm-up 10 epochs, LARS
        // η = 1e-3 unclipped, target from its own seed, τ → 1, blur 1.0 / 0.1.
        for (name, epochs, lr, wd, tau) in [
            ("imagenet-40", 40, 0.45, 1e-6, 0.97),
            ("imagenet-100", 100, 0.45, 1e-6, 0.99),
            ("imagenet-300", 300, 0.3, 1e-6, 0.99),
            ("imagenet-1000", 1000, 0.2, 1.5e-6, 0.996),
        ] {
            let r = named(name).unwrap();
            assert_eq!(r.name, name);
            assert_eq!(
                (r.epochs, r.base_lr, r.weight_decay, r.tau_base),
                (epochs, lr, wd, tau)
            );
            assert_eq!(
                (r.warmup_epochs, r.optimizer, r.lars_eta),
                (10, "lars", 1e-3)
            );
            assert!(!r.lars_clip);
            assert_eq!(
                (r.tau_end, r.target_init, r.blur),
                (1.0, "independent", [1.0, 0.1])
            );
            assert_eq!((r.crop_min_scale, r.predictor_lr_mult), (0.08, 1.0));
            assert_eq!(r.mlp_hidden, 4096, "the paper's projector and predictor");
            assert_eq!(r.zero_init_from_stage, None, "residual branches as drawn");
            assert_eq!(r.batch_size, None, "the run's batch; lr scales with it");
        }
        assert!(named("imagenet-50").is_err() && named("large").is_err());
    }

    #[test]
    fn the_small_recipes_eta_should_drop_from_batch_128() {
        assert_eq!(
            [32, 64, 127, 128, 512].map(|b| SMALL.lars_eta_at(b)),
            [0.05, 0.05, 0.05, 0.02, 0.02]
        );
        assert_eq!(imagenet(PRESETS[0]).lars_eta_at(128), 1e-3);
        let mut c = TrainConfig::default();
        c.optim.batch_size = 256;
        follow_batch(&mut c);
        assert_eq!(c.optim.lars_eta, 0.02);
        c.optim.batch_size = 128;
        SMALL.apply(&mut c);
        assert_eq!(c.optim.lars_eta, 0.05, "the recipe sets its own batch, 64");
        // A configuration from no known recipe keeps its η.
        (c.recipe, c.optim.batch_size, c.optim.lars_eta) = ("mine".into(), 256, 0.3);
        follow_batch(&mut c);
        assert_eq!(c.optim.lars_eta, 0.3);
    }

    #[test]
    fn the_small_recipes_tau_base_should_rise_after_200_epochs() {
        assert_eq!(
            [1, 8, 60, 61, 100, 101, 150, 151, 200, 201, 300].map(|e| SMALL.tau_base_at(e)),
            [0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.99, 0.99]
        );
        for p in PRESETS {
            assert_eq!(
                imagenet(p).tau_base_at(1),
                p.tau_base,
                "one τ_base at every length"
            );
        }
        let mut c = TrainConfig::default();
        assert_eq!((c.optim.epochs, c.optim.tau_base), (8, 0.9));
        c.optim.epochs = 201;
        follow_length(&mut c);
        assert_eq!(c.optim.tau_base, 0.99);
        // A configuration from no known recipe keeps its τ_base.
        (c.recipe, c.optim.epochs, c.optim.tau_base) = ("mine".into(), 5, 0.5);
        follow_length(&mut c);
        assert_eq!(c.optim.tau_base, 0.5);
    }

    #[test]
    fn the_recipe_should_follow_the_image_side() {
        assert_eq!(for_image_side(28).name, "small");
        assert_eq!(for_image_side(96).name, "small");
        assert_eq!(for_image_side(97).name, "imagenet-40");
        assert_eq!(for_image_side(224).name, "imagenet-40");
    }

    #[test]
    fn applying_a_recipe_should_set_every_one_of_its_fields() {
        let mut c = TrainConfig::default();
        named("imagenet-1000").unwrap().apply(&mut c);
        assert_eq!(c.recipe, "imagenet-1000");
        assert_eq!(
            (c.optim.epochs, c.optim.base_lr, c.optim.tau_base),
            (1000, 0.2, 0.996)
        );
        assert_eq!(
            (
                c.optim.optimizer.as_str(),
                c.optim.lars_eta,
                c.optim.lars_clip
            ),
            ("lars", 1e-3, false)
        );
        assert_eq!(
            (
                c.optim.target_init.as_str(),
                c.augment.blur_t,
                c.augment.blur_t_prime
            ),
            ("independent", 1.0, 0.1)
        );
        assert_eq!(
            (c.model.projector_hidden, c.model.predictor_hidden),
            (4096, 4096)
        );
        assert!(!c.model.zero_init_residual);
        c.optim.batch_size = 1024;
        named("imagenet-40").unwrap().apply(&mut c);
        assert_eq!(
            c.optim.batch_size, 1024,
            "an official preset keeps the run's batch"
        );
        SMALL.apply(&mut c);
        assert_eq!(c.optim.batch_size, 64);
        assert_eq!(
            (c.model.projector_hidden, c.model.predictor_hidden),
            (1024, 1024)
        );
        assert!(c.model.zero_init_residual);
        assert_eq!(c.model.zero_init_from_stage, 3);
        assert_eq!(c, TrainConfig::default(), "the default is the small recipe");
    }
}

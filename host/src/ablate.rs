//! The paper's ablations as studies (docs/DESIGN.md §2): a study is a list of runs, each a change
//! to a base configuration, paired with the paper's ImageNet top-1 for the same setting.
//! Every run trains in its own folder, is evaluated by kNN, linear evaluation and the collapse
//! flag, and leaves `result.json`; a study skips finished runs and resumes interrupted ones
//! from their checkpoint. The table (`results.md`) puts our numbers beside the paper's; at
//! this scale the numbers differ from ImageNet, the qualitative findings are what to compare.

use crate::backend::Device;
use crate::byol::schedule::PRESETS;
use crate::config::{self, TrainConfig, CHECKPOINT, RUN_CONFIG};
use crate::error::{Error, Result};
use crate::recipe::{imagenet, SMALL};
use crate::train::{self, RunOptions};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One run of a study: a label, its configuration, and the paper's result for the setting.
#[derive(Clone, Debug)]
pub struct StudyRun {
    pub label: String,
    pub config: TrainConfig,
    pub paper: &'static str,
}

/// What a finished run reports (its `result.json`). A diverged run has no figures: they are
/// NaN here and `null` in the file (JSON has no NaN), and `diverged_at_step` says when.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    pub label: String,
    #[serde(deserialize_with = "nan_if_null")]
    pub knn_top1: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub linear_top1: f64,
    pub collapsed_at_epoch: Option<usize>,
    #[serde(deserialize_with = "nan_if_null")]
    pub projection_spread: f64,
    /// The step whose loss was not finite (the files of earlier versions lack the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged_at_step: Option<u64>,
}

/// Reads back the `null` that serde_json writes for NaN, so a finished diverged run is
/// skipped on a rerun instead of trained again.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The studies [`study`] knows.
pub const STUDIES: [&str; 11] = [
    "recipe",
    "tau",
    "predictor-lr",
    "predictor-projector-lr",
    "closed-form-predictor",
    "beta",
    "augmentations",
    "batch-size",
    "weight-decay",
    "depth",
    "normalisation",
];

/// The base configuration of studies: the default run, shortened to 6 epochs so that a study
/// fits about half an hour on two cores (scale it with `--epochs`, `--train-size`).
pub fn base() -> TrainConfig {
    TrainConfig::default().with(|c| (c.optim.epochs, c.optim.warmup_epochs) = (6, 1))
}

/// The runs of study `name` over `base`.
pub fn study(name: &str, base: &TrainConfig) -> Result<Vec<StudyRun>> {
    let run = |label: String, paper: &'static str, f: &dyn Fn(&mut TrainConfig)| {
        let mut config = base.clone();
        f(&mut config);
        StudyRun {
            label,
            config,
            paper,
        }
    };
    Ok(match name {
        "recipe" => recipe_study(base)
            .into_iter()
            .map(|(label, f)| run(label, "—", &*f))
            .collect(),
        "tau" => [
            (1.0, "18.8"),
            (0.999, "69.8"),
            (0.99, "72.5"),
            (0.9, "68.4"),
            (0.0, "0.3"),
        ]
        .into_iter()
        .map(|(t, paper)| {
            run(format!("tau={t}"), paper, &|c| {
                c.ablation.tau_constant = Some(t)
            })
        })
        .collect(),
        "predictor-lr" => [
            (0.0, "0.01"),
            (1.0, "5.5"),
            (2.0, "62.8"),
            (10.0, "66.6"),
            (20.0, "66.3"),
        ]
        .into_iter()
        .map(|(l, paper)| {
            run(format!("tau=0,lambda={l}"), paper, &|c| {
                c.ablation.tau_constant = Some(0.0);
                c.ablation.predictor_lr_mult = l;
            })
        })
        .collect(),
        "predictor-projector-lr" => [(1.0, "66.9"), (1.5, "66.0"), (5.0, "60.5"), (10.0, "8.3")]
            .into_iter()
            .map(|(m, paper)| {
                run(format!("tau=0,lambda=10,mu={m}"), paper, &|c| {
                    c.ablation.tau_constant = Some(0.0);
                    c.ablation.predictor_lr_mult = 10.0;
                    c.ablation.projector_lr_mult = m;
                })
            })
            .collect(),
        "augmentations" => [
            ("full", "72.5"),
            ("symmetric", "72.5"),
            ("no-colour", "63.4"),
            ("no-grayscale", "70.3"),
            ("crop-colour", "70.7"),
            ("crop-blur", "61.1"),
            ("crop-flip", "60.1"),
            ("crop-only", "59.4"),
        ]
        .into_iter()
        .map(|(a, paper)| {
            run(a.to_string(), paper, &|c| {
                c.augment.augmentations = a.into()
            })
        })
        .collect(),
        "batch-size" => [(256, "71.8"), (128, "69.6"), (64, "59.7"), (32, "—")]
            .into_iter()
            // The batch alone, as in the paper's study: η stays the base's (the small recipe
            // would lower it from batch 128 in `train`; README "Recipes").
            .map(|(b, paper)| run(format!("batch={b}"), paper, &|c| c.optim.batch_size = b))
            .collect(),
        "weight-decay" => [
            (1e-5, "69.6"),
            (1e-6, "72.5"),
            (5e-7, "72.6"),
            (0.0, "diverges"),
        ]
        .into_iter()
        .map(|(w, paper)| run(format!("wd={w:e}"), paper, &|c| c.optim.weight_decay = w))
        .collect(),
        // The least-squares predictor needs batch > projection dim: all three runs use a
        // projection half the batch wide (32-d at the default batch 64; the paper's is 256-d
        // at batch 4096).
        "closed-form-predictor" => {
            let d = (base.optim.batch_size / 2).max(1);
            [
                ("byol", "72.5 (BYOL)", None, false),
                ("tau=0,learned", "0.3", Some(0.0), false),
                ("tau=0,closed-form", "52.5", Some(0.0), true),
            ]
            .into_iter()
            .map(|(label, paper, tau, closed)| {
                run(format!("{label},proj={d}"), paper, &|c| {
                    c.model.projection_dim = d;
                    c.ablation.tau_constant = tau;
                    c.ablation.closed_form_predictor = closed;
                })
            })
            .collect()
        }
        // Table 5b of the paper: β, the predictor and the target network.
        "beta" => [
            ("byol", "72.5", 0.0, true, true),
            ("beta=1,predictor,target", "70.9", 1.0, true, true),
            ("no-predictor", "0.2", 0.0, false, true),
            ("no-target", "0.3", 0.0, true, false),
            ("no-predictor,no-target", "0.1", 0.0, false, false),
            (
                "simclr(beta=1,no-predictor,no-target)",
                "69.4",
                1.0,
                false,
                false,
            ),
        ]
        .into_iter()
        .map(|(label, paper, beta, predictor, target)| {
            run(label.into(), paper, &|c| {
                c.ablation.contrastive_beta = beta;
                c.ablation.predictor = predictor;
                c.ablation.target_network = target;
            })
        })
        .collect(),
        "depth" => [
            ((2, 2), "72.5"),
            ((1, 1), "61.9"),
            ((1, 2), "—"),
            ((2, 1), "—"),
            ((3, 3), "—"),
        ]
        .into_iter()
        .map(|((g, q), paper)| {
            run(format!("projector={g},predictor={q}"), paper, &|c| {
                (c.model.projector_depth, c.model.predictor_depth) = (g, q)
            })
        })
        .collect(),
        "normalisation" => [
            ("l2", "72.5"),
            ("layernorm", "72.5"),
            ("none", "67.4"),
            ("batchnorm", "65.3"),
        ]
        .into_iter()
        .map(|(n, paper)| {
            run(n.into(), paper, &|c| {
                c.ablation.loss_normalisation = n.into()
            })
        })
        .collect(),
        n => {
            return Err(Error::InvalidArgument(format!(
                "unknown study {n:?}: expected one of {}",
                STUDIES.join(", ")
            )))
        }
    })
}

/// A change to a configuration.
type Change = Box<dyn Fn(&mut TrainConfig)>;

/// The elements in which the small-image recipe differs from the official one, each a
/// change that copies the small recipe's values of its fields.
pub fn recipe_elements() -> Vec<(&'static str, Change)> {
    let s = SMALL;
    vec![
        (
            "optimizer",
            Box::new(move |c: &mut TrainConfig| {
                c.optim.optimizer = s.optimizer.into();
                (c.optim.base_lr, c.optim.weight_decay) = (s.base_lr, s.weight_decay);
                c.optim.lars_eta = s.lars_eta_at(c.optim.batch_size);
                c.optim.lars_clip = s.lars_clip;
            }),
        ),
        (
            "target-copy",
            Box::new(move |c| c.optim.target_init = s.target_init.into()),
        ),
        (
            "tau",
            Box::new(move |c| {
                (c.optim.tau_base, c.optim.tau_end) = (s.tau_base_at(c.optim.epochs), s.tau_end)
            }),
        ),
        (
            "blur",
            Box::new(move |c| [c.augment.blur_t, c.augment.blur_t_prime] = s.blur),
        ),
        (
            "crop",
            Box::new(move |c| c.augment.crop_min_scale = s.crop_min_scale),
        ),
        (
            "predictor-lr",
            Box::new(move |c| c.ablation.predictor_lr_mult = s.predictor_lr_mult),
        ),
        (
            "mlp-width",
            Box::new(move |c| {
                (c.model.projector_hidden, c.model.predictor_hidden) = (s.mlp_hidden, s.mlp_hidden)
            }),
        ),
        (
            "zero-init",
            Box::new(move |c| c.model.set_zero_residual_from_stage(s.zero_init_from_stage)),
        ),
    ]
}

/// The runs of the `recipe` study over `base`'s budget: the official recipe
/// (`imagenet-40`'s values), each element of `small` turned on alone, and all together;
/// elements in which the two recipes agree are left out.
fn recipe_study(base: &TrainConfig) -> Vec<(String, Change)> {
    let (epochs, warmup) = (base.optim.epochs, base.optim.warmup_epochs);
    let official = move |c: &mut TrainConfig| {
        imagenet(PRESETS[0]).apply(c);
        (c.optim.epochs, c.optim.warmup_epochs) = (epochs, warmup);
    };
    let mut runs: Vec<(String, Change)> = vec![("official".into(), Box::new(official))];
    let mut all: Vec<Change> = Vec::new();
    for (label, element) in recipe_elements() {
        let (mut a, mut b) = (base.clone(), base.clone());
        official(&mut a);
        official(&mut b);
        element(&mut b);
        if a == b {
            continue;
        }
        let element = std::rc::Rc::new(element);
        let e = element.clone();
        runs.push((
            format!("official+{label}"),
            Box::new(move |c| {
                official(c);
                e(c)
            }),
        ));
        all.push(Box::new(move |c| element(c)));
    }
    runs.push((
        "small".into(),
        Box::new(move |c| {
            official(c);
            all.iter().for_each(|e| e(c));
            c.recipe = SMALL.name.into();
        }),
    ));
    runs
}

/// Trains (or resumes, or skips) one run in `dir` and evaluates it.
pub fn run_one(r: &StudyRun, dir: &Path, progress: bool, device: Device) -> Result<RunResult> {
    let result_path = dir.join("result.json");
    if let Ok(text) = std::fs::read_to_string(&result_path) {
        if let Ok(done) = serde_json::from_str::<RunResult>(&text) {
            // A finished run counts only for the configuration it ran (a rerun of the study
            // with other --epochs into the same folder would otherwise reuse its results).
            let ran = config::read_config(&dir.join(RUN_CONFIG))?.train;
            config::same_run(&ran, &r.config).map_err(|diff| {
                Error::InvalidArgument(format!(
                    "{}: a finished run of another configuration ({diff}): give the study another --out, or remove this folder to run it again",
                    dir.display()
                ))
            })?;
            return Ok(done);
        }
    }
    let ckpt = dir.join(CHECKPOINT);
    let resume = ckpt.exists().then(|| ckpt.clone());
    let summary = match train::train(
        &r.config,
        &RunOptions {
            out: dir.to_path_buf(),
            resume,
            stop_after_epochs: None,
            progress,
            replicas: None,
            device,
            precision: Default::default(),
            augment_on: Default::default(),
        },
    ) {
        Ok(s) => s,
        Err(Error::Diverged { step, cause }) => {
            if progress {
                eprintln!("{}: diverged at step {step}: {cause}", r.label);
            }
            let diverged = RunResult {
                label: r.label.clone(),
                knn_top1: f64::NAN,
                linear_top1: f64::NAN,
                collapsed_at_epoch: None,
                projection_spread: f64::NAN,
                diverged_at_step: Some(step),
            };
            write_result(&result_path, &diverged)?;
            return Ok(diverged);
        }
        Err(e) => return Err(e),
    };
    let last = summary.epochs.last();
    let linear = linear_top1(&r.config, &ckpt)?;
    let result = RunResult {
        label: r.label.clone(),
        knn_top1: last.map_or(f64::NAN, |e| e.knn_top1),
        linear_top1: linear,
        collapsed_at_epoch: summary.collapsed_at.map(|(e, _)| e),
        projection_spread: last.map_or(f64::NAN, |e| {
            e.collapse.projection_std / e.collapse.healthy_std
        }),
        diverged_at_step: None,
    };
    write_result(&result_path, &result)?;
    Ok(result)
}

fn write_result(path: &Path, r: &RunResult) -> Result<()> {
    crate::files::write_atomic(path, serde_json::to_string_pretty(r).unwrap().as_bytes())
}

/// Linear evaluation of a finished run's checkpoint.
fn linear_top1(cfg: &TrainConfig, ckpt: &Path) -> Result<f64> {
    let byol = crate::byol::Byol::new(cfg.byol_config()?)?;
    let (state, _) = crate::checkpoint::load(ckpt, &byol)?;
    let (train_set, test) = train::load_data(cfg)?;
    let aug = train::augmenter(&train_set, cfg)?;
    // The encoder's parameters and statistics lead the online buffers.
    let (params, running) = (&state.online, &state.online_running);
    let (ti, qi) = (train::labelled(&train_set), train::labelled(&test));
    let x = crate::eval::embed(
        &byol.backend,
        &byol.encoder,
        params,
        running,
        &train_set,
        &ti,
        &aug,
        256,
    )?;
    let tx = crate::eval::embed(
        &byol.backend,
        &byol.encoder,
        params,
        running,
        &test,
        &qi,
        &aug,
        256,
    )?;
    let y: Vec<u16> = ti.iter().map(|&i| train_set.labels[i]).collect();
    let ty: Vec<u16> = qi.iter().map(|&i| test.labels[i]).collect();
    let lin = crate::eval::LinearConfig {
        epochs: 40,
        ..Default::default()
    };
    Ok(crate::eval::linear_eval(
        &x,
        &y,
        &tx,
        &ty,
        byol.encoder.repr_dim(),
        train_set.classes,
        &lin,
    )
    .test_accuracy)
}

/// Mean and sample standard deviation (0 for one value).
fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// A percentage, or "diverged" for a run that did.
fn pct(v: f64) -> String {
    if v.is_nan() {
        "diverged".to_string()
    } else {
        format!("{:.1}", 100.0 * v)
    }
}

/// One setting's figure over the seeds: the value for one seed; for several, mean ± sample
/// standard deviation and the values seed by seed.
fn over_seeds(v: &[f64]) -> String {
    let each = v.iter().map(|&x| pct(x)).collect::<Vec<_>>().join(", ");
    if v.len() == 1 || v.iter().any(|x| x.is_nan()) {
        return each;
    }
    let (m, sd) = mean_sd(v);
    format!("{} ± {:.1} ({each})", pct(m), 100.0 * sd)
}

/// The kNN difference from the first setting, paired by seed: mean ± standard error and
/// the seeds on which the setting is ahead. Runs of one seed differ by several points from
/// their own reruns, so a difference under about two standard errors is no finding.
fn paired_difference(v: &[f64], first: &[f64]) -> String {
    let d: Vec<f64> = v.iter().zip(first).map(|(a, b)| a - b).collect();
    if d.iter().any(|x| x.is_nan()) {
        return "—".into();
    }
    let (m, sd) = mean_sd(&d);
    let ahead = d.iter().filter(|&&x| x > 0.0).count();
    format!(
        "{:+.1} ± {:.1} (ahead on {ahead} of {})",
        100.0 * m,
        100.0 * sd / (d.len() as f64).sqrt(),
        d.len()
    )
}

/// The Markdown table of a study: `results[i][s]` is setting `i` on seed `s`. With several
/// seeds each figure is a mean ± standard deviation, and a column compares every setting
/// with the first, seed by seed.
pub fn table(name: &str, runs: &[StudyRun], results: &[Vec<RunResult>], seeds: &[u64]) -> String {
    let several = seeds.len() > 1;
    let mut t = format!("### Study `{name}`\n\n");
    if several {
        let list: Vec<String> = seeds.iter().map(|s| s.to_string()).collect();
        t += &format!(
            "Seeds {}: mean ± standard deviation (each seed's value).\n\n",
            list.join(", ")
        );
    }
    let mut headers = vec![
        "setting",
        "paper (ImageNet top-1, 300 epochs)",
        "our kNN top-1",
        "our linear top-1",
    ];
    if several {
        headers.push("kNN − first setting's, paired by seed");
    }
    headers.extend(["projection spread (std·√d)", "collapsed"]);
    t += &format!(
        "| {} |\n|{}\n",
        headers.join(" | "),
        "---|".repeat(headers.len())
    );
    let column =
        |res: &[RunResult], f: fn(&RunResult) -> f64| res.iter().map(f).collect::<Vec<_>>();
    let first_knn = column(&results[0], |r| r.knn_top1);
    for (r, res) in runs.iter().zip(results) {
        let collapsed: Vec<String> = res
            .iter()
            .zip(seeds)
            .filter_map(|(x, s)| {
                let seed = if several {
                    format!("seed {s} ")
                } else {
                    String::new()
                };
                match (x.diverged_at_step, x.collapsed_at_epoch) {
                    (Some(step), _) => Some(format!("{seed}diverged at step {step}")),
                    (None, Some(e)) if several => Some(format!("{seed}from epoch {e}")),
                    (None, Some(e)) => Some(format!("yes, from epoch {e}")),
                    (None, None) => None,
                }
            })
            .collect();
        let knn = column(res, |r| r.knn_top1);
        t += &format!(
            "| {} | {} | {} | {} |",
            r.label,
            r.paper,
            over_seeds(&knn),
            over_seeds(&column(res, |r| r.linear_top1)),
        );
        if several {
            t += &format!(" {} |", paired_difference(&knn, &first_knn));
        }
        let spread = mean_sd(&column(res, |r| r.projection_spread)).0;
        let spread = if spread.is_nan() {
            "—".to_string()
        } else {
            format!("{spread:.3}")
        };
        t += &format!(
            " {spread} | {} |\n",
            if collapsed.is_empty() {
                "no".to_string()
            } else {
                collapsed.join("; ")
            }
        );
    }
    t
}

/// Runs study `name` over `base` once per seed of `seeds`, in `out/<name>/<run>/` for one
/// seed and `out/<name>/<run>/seed-<S>/` for several; writes `results.md`, `results.png` and
/// `curves.png` (each run's curves by epoch, its first seed) there and returns the table. Each
/// run trains on `device`.
pub fn run_study(
    name: &str,
    base: &TrainConfig,
    seeds: &[u64],
    out: &Path,
    progress: bool,
    device: Device,
) -> Result<String> {
    if seeds.is_empty() {
        return Err(Error::InvalidArgument(
            "seed: expected at least one seed".into(),
        ));
    }
    if let Some(s) = seeds
        .iter()
        .enumerate()
        .find_map(|(i, s)| seeds[..i].contains(s).then_some(s))
    {
        return Err(Error::InvalidArgument(format!(
            "seed: {s} is listed twice; expected distinct seeds"
        )));
    }
    let runs = study(name, base)?;
    let dir = out.join(name);
    let (mut results, mut first_seed_metrics) = (Vec::new(), Vec::new());
    for (i, r) in runs.iter().enumerate() {
        let run_dir = dir.join(r.label.replace(['=', ','], "_"));
        let mut per_seed = Vec::new();
        for &seed in seeds {
            if progress {
                eprintln!(
                    "[{name} {}/{}] {} (seed {seed})",
                    i + 1,
                    runs.len(),
                    r.label
                );
            }
            let mut seeded = r.clone();
            seeded.config.seed = seed;
            let at = if seeds.len() > 1 {
                run_dir.join(format!("seed-{seed}"))
            } else {
                run_dir.clone()
            };
            per_seed.push(run_one(&seeded, &at, progress, device)?);
            if seed == seeds[0] {
                first_seed_metrics.push((r.label.clone(), at.join(crate::config::METRICS)));
            }
        }
        results.push(per_seed);
    }
    let t = table(name, &runs, &results, seeds);
    crate::files::write_atomic(&dir.join("results.md"), t.as_bytes())?;
    // One point per setting, in table order: its mean over the seeds.
    let points = |f: fn(&RunResult) -> f64, scale: f64| -> Vec<(f64, f64)> {
        let mean = |res: &[RunResult]| mean_sd(&res.iter().map(f).collect::<Vec<_>>()).0;
        let at = |(i, res): (usize, &Vec<RunResult>)| (i as f64 + 1.0, scale * mean(res));
        results.iter().enumerate().map(at).collect()
    };
    let (knn, lin, spread) = (
        points(|r| r.knn_top1, 100.0),
        points(|r| r.linear_top1, 100.0),
        points(|r| r.projection_spread, 1.0),
    );
    crate::plot::plot(
        &dir.join("results.png"),
        &[
            crate::plot::Series {
                title: "kNN top-1 (%) by run",
                x_label: "run (results.md order)",
                lines: vec![&knn],
                marks: &[],
            },
            crate::plot::Series {
                title: "linear top-1 (%) by run",
                x_label: "run",
                lines: vec![&lin],
                marks: &[],
            },
            crate::plot::Series {
                title: "projection spread std*sqrt(d)",
                x_label: "run",
                lines: vec![&spread],
                marks: &[],
            },
        ],
        &[],
    )?;
    // How each setting got there: its curves by epoch (the first seed), one colour each.
    crate::plot::plot_comparison(&first_seed_metrics, &dir.join("curves.png"))?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn studies_should_change_only_their_knob() {
        let base = base();
        for name in STUDIES.into_iter().filter(|&n| n != "recipe") {
            let runs = study(name, &base).unwrap();
            assert!(runs.len() >= 3, "{name}");
            for r in &runs {
                r.config.validate().unwrap();
                // Reset every knob a study may turn; what is left must be the base.
                let mut c = r.config.clone();
                (
                    c.ablation.tau_constant,
                    c.ablation.predictor_lr_mult,
                    c.ablation.projector_lr_mult,
                ) = (None, base.ablation.predictor_lr_mult, 1.0);
                (
                    c.augment.augmentations,
                    c.optim.batch_size,
                    c.optim.weight_decay,
                ) = (
                    base.augment.augmentations.clone(),
                    base.optim.batch_size,
                    base.optim.weight_decay,
                );
                (c.model.projector_depth, c.model.predictor_depth) = (2, 2);
                (
                    c.ablation.predictor,
                    c.ablation.closed_form_predictor,
                    c.ablation.target_network,
                ) = (true, false, true);
                (c.ablation.contrastive_beta, c.ablation.loss_normalisation) = (0.0, "l2".into());
                if name == "closed-form-predictor" {
                    c.model.projection_dim = base.model.projection_dim;
                }
                assert_eq!(c, base, "{name}/{} changes something else", r.label);
            }
        }
        assert!(study("nope", &base).is_err());
    }

    #[test]
    fn a_table_over_seeds_should_give_mean_sd_and_the_paired_difference() {
        let base = base();
        let runs = study("normalisation", &base).unwrap()[..2].to_vec();
        let result = |knn: f64| RunResult {
            label: String::new(),
            knn_top1: knn,
            linear_top1: knn + 0.1,
            collapsed_at_epoch: None,
            projection_spread: 0.8,
            diverged_at_step: None,
        };
        let results = vec![
            [0.5, 0.3, 0.4].map(result).to_vec(),
            [0.6, 0.2, 0.7].map(result).to_vec(),
        ];
        let t = table("normalisation", &runs, &results, &[0, 1, 2]);
        // By hand: mean 0.4, sample sd √((0.01 + 0.01 + 0) / 2) = 0.1; the differences
        // 0.1, −0.1, 0.3 have mean 0.1, sd 0.2 and standard error 0.2 / √3 = 0.1155.
        assert!(t.contains("| 40.0 ± 10.0 (50.0, 30.0, 40.0) | 50.0 ± 10.0 (60.0, 40.0, 50.0) | +0.0 ± 0.0 (ahead on 0 of 3) |"), "{t}");
        assert!(t.contains("| 50.0 ± 26.5 (60.0, 20.0, 70.0) |"), "{t}");
        assert!(t.contains("| +10.0 ± 11.5 (ahead on 2 of 3) |"), "{t}");
        assert!(t.contains("Seeds 0, 1, 2"), "{t}");
        // One seed: the single-run table, without the paired column.
        let one = table(
            "normalisation",
            &runs,
            &[vec![result(0.5)], vec![result(0.6)]],
            &[7],
        );
        assert!(one.contains("| 50.0 | 60.0 | 0.800 | no |"), "{one}");
        assert!(!one.contains("paired"), "{one}");
    }

    /// A diverged run reads back from its `result.json` (so a rerun skips it), and its row
    /// says when it diverged instead of printing NaN.
    #[test]
    fn a_diverged_run_should_be_kept_and_shown_as_diverged() {
        let diverged = RunResult {
            label: "none".into(),
            knn_top1: f64::NAN,
            linear_top1: f64::NAN,
            collapsed_at_epoch: None,
            projection_spread: f64::NAN,
            diverged_at_step: Some(57),
        };
        let path = std::env::temp_dir().join(format!("byol-diverged-{}.json", std::process::id()));
        write_result(&path, &diverged).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let back: RunResult = serde_json::from_str(&text).unwrap();
        assert!(
            back.knn_top1.is_nan() && back.linear_top1.is_nan() && back.projection_spread.is_nan()
        );
        assert_eq!(
            (back.label.as_str(), back.diverged_at_step),
            ("none", Some(57))
        );
        // A result of an earlier version (no step recorded) still reads.
        let old = r#"{"label":"x","knn_top1":null,"linear_top1":null,"collapsed_at_epoch":null,"projection_spread":null}"#;
        assert_eq!(
            serde_json::from_str::<RunResult>(old)
                .unwrap()
                .diverged_at_step,
            None
        );

        let runs = study("normalisation", &base()).unwrap()[..1].to_vec();
        let t = table("normalisation", &runs, &[vec![diverged.clone()]], &[0]);
        assert!(
            t.contains("| diverged | diverged | — | diverged at step 57 |"),
            "{t}"
        );
        assert!(!t.contains("NaN"), "{t}");
        let finished = RunResult {
            diverged_at_step: None,
            knn_top1: 0.5,
            ..diverged.clone()
        };
        let t = table("normalisation", &runs, &[vec![finished, diverged]], &[0, 1]);
        assert!(t.contains("seed 1 diverged at step 57"), "{t}");
    }

    #[test]
    fn the_recipe_study_should_go_from_the_official_recipe_to_the_small_one() {
        let base = base();
        let runs = study("recipe", &base).unwrap();
        let budget = |mut c: TrainConfig| {
            (c.optim.epochs, c.optim.warmup_epochs) = (base.optim.epochs, base.optim.warmup_epochs);
            c
        };
        let mut official = base.clone();
        imagenet(PRESETS[0]).apply(&mut official);
        assert_eq!(
            runs[0].config,
            budget(official.clone()),
            "the official recipe"
        );
        assert_eq!(
            runs.last().unwrap().config,
            base,
            "all elements: the small recipe"
        );
        // Each middle run turns on one element: it differs from the official run, and from
        // the small one, unless the small recipe has that one element alone.
        assert!(runs.len() >= 4);
        for r in &runs[1..runs.len() - 1] {
            r.config.validate().unwrap();
            assert_ne!(r.config, runs[0].config, "{}", r.label);
            assert_ne!(r.config, base, "{}", r.label);
        }
    }
}

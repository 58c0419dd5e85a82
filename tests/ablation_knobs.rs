//! The ablation knobs change what they should and nothing else, and the diagnostics see the
//! collapse the paper describes: without a predictor and with τ = 0 the projections collapse;
//! BYOL's default does not.

#[path = "common/scratch.rs"]
mod scratch;

use host::byol::{
    Byol, ByolConfig, LrMultipliers, Normalisation, Objective, Optimizer, PredictorKind,
};
use host::config::TrainConfig;
use host::nn::{Arch, ResNetConfig, Stem};
use host::train::{train, RunOptions};
use rand::{Rng, SeedableRng};
use scratch::Scratch;

fn tiny_config() -> ByolConfig {
    let encoder = ResNetConfig {
        arch: Arch::ResNet18,
        stem: Stem::Cifar,
        width: 4,
        in_channels: 3,
    };
    ByolConfig::byol(encoder, 32, 16, 32)
}

fn tiny_byol(predictor: bool) -> Byol {
    let predictor = if predictor {
        PredictorKind::Learned
    } else {
        PredictorKind::None
    };
    Byol::new(ByolConfig {
        predictor,
        ..tiny_config()
    })
    .unwrap()
}

fn views(batch: usize) -> Vec<Vec<f32>> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    (0..2)
        .map(|_| {
            (0..batch * 8 * 8 * 3)
                .map(|_| r.random_range(-1.0..1.0))
                .collect()
        })
        .collect()
}

/// Online parameters after one step with the given multipliers.
fn one_step(byol: &Byol, mult: LrMultipliers) -> Vec<f32> {
    let mut state = byol.init(1);
    let mut work = byol.work(4, 8, 8).unwrap();
    let v = views(4);
    byol.step(
        &mut state,
        &mut work,
        [&v[0], &v[1]],
        0.5,
        0.99,
        &Optimizer::official_lars(1.5e-6),
        mult,
    )
    .unwrap();
    state.online
}

#[test]
fn learning_rate_multipliers_should_scale_only_their_own_part() {
    let byol = tiny_byol(true);
    let base = one_step(&byol, LrMultipliers::default());
    assert_eq!(
        one_step(
            &byol,
            LrMultipliers {
                projector: 1.0,
                predictor: 1.0
            }
        ),
        base,
        "λ = μ = 1 is the default, bit for bit"
    );
    let start = byol.init(1).online;
    let (enc, proj, pred) = (
        byol.encoder_params(),
        byol.projector_params(),
        byol.predictor_params(),
    );
    let lambda = one_step(
        &byol,
        LrMultipliers {
            projector: 1.0,
            predictor: 3.0,
        },
    );
    assert_eq!(lambda[enc.clone()], base[enc.clone()]);
    assert_eq!(lambda[proj.clone()], base[proj.clone()]);
    // The first step from zero momentum moves each parameter by lr·trust·g: λ triples it.
    for i in pred.clone() {
        let (d1, d3) = (base[i] - start[i], lambda[i] - start[i]);
        assert!(
            (d3 - 3.0 * d1).abs() <= 1e-6 * (1.0 + d1.abs()),
            "predictor[{i}]: {d1} vs {d3}"
        );
    }
    let mu = one_step(
        &byol,
        LrMultipliers {
            projector: 2.0,
            predictor: 1.0,
        },
    );
    assert_eq!(mu[enc.clone()], base[enc]);
    assert_eq!(mu[pred.clone()], base[pred]);
    assert_ne!(mu[proj.clone()], base[proj]);
}

#[test]
fn removing_the_predictor_should_remove_its_parameters_and_compare_projections_directly() {
    let (with, without) = (tiny_byol(true), tiny_byol(false));
    assert!(without.predictor.is_none() && without.predictor_params().is_empty());
    assert_eq!(without.registry.param_len(), with.predictor_params().start);
    assert!(!without
        .registry
        .params
        .iter()
        .any(|p| p.name.starts_with("predictor.")));
    let after = one_step(&without, LrMultipliers::default());
    assert!(after.iter().all(|v| v.is_finite()));
    assert_ne!(after, without.init(1).online, "the step still learns");
}

#[test]
fn constant_tau_should_copy_or_freeze_the_target() {
    let byol = tiny_byol(true);
    let v = views(4);
    for (tau, expect_copy) in [(0.0f32, true), (1.0, false)] {
        let mut state = byol.init(1);
        let target0 = state.target.clone();
        let mut work = byol.work(4, 8, 8).unwrap();
        byol.step(
            &mut state,
            &mut work,
            [&v[0], &v[1]],
            0.5,
            tau,
            &Optimizer::official_lars(1.5e-6),
            LrMultipliers::default(),
        )
        .unwrap();
        let shared = byol.projector_params().end;
        if expect_copy {
            assert_eq!(
                state.target,
                state.online[..shared],
                "τ = 0: the target is the online network"
            );
        } else {
            assert_eq!(
                state.target, target0,
                "τ = 1: the target stays at its random start"
            );
        }
    }
}

fn collapse_run(cfg: TrainConfig, name: &str) -> host::train::Summary {
    let out = Scratch::new("ablation", name);
    train(
        &cfg,
        &RunOptions {
            out: out.to_path_buf(),
            ..RunOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn without_predictor_and_target_the_projections_should_collapse_and_byol_should_not() {
    // 8 epochs suffice and keep this the slowest test under half a minute: at epoch 8 the
    // ablated run's spread is 0.017 (loss 0.0013) and BYOL's 0.68, far from both thresholds.
    let base = TrainConfig::default().with(|c| {
        c.data.train_size = 256;
        c.data.test_size = 64;
        c.model.width = 4;
        c.optim.epochs = 8;
        c.optim.batch_size = 32;
        c.optim.warmup_epochs = 0;
        c.optim.base_lr = 1.0;
        c.model.projector_hidden = 64;
        c.model.projection_dim = 32;
        c.model.predictor_hidden = 64;
        c.monitor.knn_k = 10;
    });
    let ablated = collapse_run(
        base.clone().with(|c| {
            c.ablation.tau_constant = Some(0.0);
            c.ablation.predictor = false;
        }),
        "collapse",
    );
    let byol = collapse_run(base, "byol");
    let spread = |s: &host::train::Summary| {
        let c = s.epochs.last().unwrap().collapse;
        c.projection_std / c.healthy_std
    };
    assert!(
        ablated.collapsed_at.is_some(),
        "no collapse flagged: spread {}",
        spread(&ablated)
    );
    assert!(
        byol.collapsed_at.is_none() && spread(&byol) > 0.5,
        "BYOL collapsed: spread {}",
        spread(&byol)
    );
    assert!(spread(&ablated) < 0.1 && ablated.epochs.last().unwrap().loss < 0.05);
}

#[test]
fn depth_should_set_the_number_of_linear_layers_and_their_names() {
    let names = |g: usize, q: usize| -> Vec<String> {
        let byol = Byol::new(ByolConfig {
            projector_depth: g,
            predictor_depth: q,
            ..tiny_config()
        })
        .unwrap();
        let r = &byol.registry;
        let params = r.params.iter().map(|p| (&p.name, &p.shape));
        params
            .chain(r.buffers.iter().map(|b| (&b.name, &b.shape)))
            .filter(|(name, _)| !name.starts_with("encoder."))
            .map(|(name, shape)| format!("{name}{shape:?}"))
            .collect()
    };
    assert_eq!(
        names(1, 3),
        [
            "projector.linear1.weight[16, 32]", // the encoder's 32-d output straight to 16
            "predictor.linear1.weight[32, 16]",
            "predictor.linear1.bias[32]",
            "predictor.bn1.weight[32]",
            "predictor.bn1.bias[32]",
            "predictor.linear2.weight[32, 32]",
            "predictor.linear2.bias[32]",
            "predictor.bn2.weight[32]",
            "predictor.bn2.bias[32]",
            "predictor.linear3.weight[16, 32]",
            "predictor.bn1.running_mean[32]",
            "predictor.bn1.running_var[32]",
            "predictor.bn2.running_mean[32]",
            "predictor.bn2.running_var[32]",
        ]
    );
    // Depth 2 keeps the names BYOL's PyTorch ports use.
    assert!(names(2, 2).contains(&"projector.bn.weight[32]".to_string()));
    let byol = Byol::new(ByolConfig {
        projector_depth: 3,
        predictor_depth: 1,
        ..tiny_config()
    })
    .unwrap();
    let after = one_step(&byol, LrMultipliers::default());
    assert!(after.iter().all(|v| v.is_finite()));
    assert_ne!(after, byol.init(1).online);
}

#[test]
fn closed_form_predictor_should_have_no_parameters_and_need_more_samples_than_dimensions() {
    let byol = Byol::new(ByolConfig {
        predictor: PredictorKind::ClosedForm,
        ..tiny_config()
    })
    .unwrap();
    assert!(byol.predictor_params().is_empty() && byol.predictor.is_none());
    // Projection 16: batch 16 would fit the targets exactly.
    assert!(byol.work(16, 8, 8).is_err());
    let mut state = byol.init(1);
    let mut work = byol.work(20, 8, 8).unwrap();
    let v = views(20);
    let mut losses = Vec::new();
    for _ in 0..3 {
        let report = byol
            .step(
                &mut state,
                &mut work,
                [&v[0], &v[1]],
                0.5,
                0.0,
                &Optimizer::official_lars(1.5e-6),
                LrMultipliers::default(),
            )
            .unwrap();
        losses.push(report.loss);
    }
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{losses:?}"
    );
    // τ = 0: the target is hard-copied from the online network, as in the paper's appendix.
    assert_eq!(state.target, state.online[..byol.projector_params().end]);
}

/// The gradient a step computes (`work.grads`) against central differences of the loss it
/// reports, at the coordinates with the largest gradients of each part of the network.
fn step_gradient_matches_finite_differences(byol: &Byol, what: &str) {
    let (batch, side) = (6, 8);
    let v = views(batch); // 8 × 8 images
    let state0 = byol.init(3);
    let loss_and_grads = |online: &[f32]| {
        let mut state = state0.clone();
        state.online.copy_from_slice(online);
        let mut work = byol.work(batch, side, side).unwrap();
        let report = byol
            .step(
                &mut state,
                &mut work,
                [&v[0], &v[1]],
                0.0,
                1.0,
                &Optimizer::official_lars(1.5e-6),
                LrMultipliers::default(),
            )
            .unwrap();
        (report.loss as f64, work.grads)
    };
    let (_, grads) = loss_and_grads(&state0.online);
    let max = grads.iter().fold(0f32, |m, g| m.max(g.abs())) as f64;
    let parts = [
        byol.encoder_params(),
        byol.projector_params(),
        byol.predictor_params(),
    ];
    let mut checked = 0;
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        let mut idx: Vec<usize> = part.collect();
        idx.sort_by(|&a, &b| grads[b].abs().total_cmp(&grads[a].abs()));
        for &k in idx.iter().take(8) {
            // Small steps: through BatchNorm over 6 samples the loss curves fast (1e-2 was off by 15%).
            let eps = 1e-3 * state0.online[k].abs().max(0.1);
            let mut p = state0.online.clone();
            p[k] += eps;
            let plus = loss_and_grads(&p).0;
            p[k] -= 2.0 * eps;
            let minus = loss_and_grads(&p).0;
            let fd = (plus - minus) / (2.0 * eps as f64);
            let g = grads[k] as f64;
            assert!(
                (fd - g).abs() <= 0.05 * g.abs() + 0.02 * max,
                "{what}: {} [{k}]: analytic {g:.5} vs numeric {fd:.5}",
                byol.registry
                    .params
                    .iter()
                    .find(|p| p.range.contains(&k))
                    .unwrap()
                    .name
            );
            checked += 1;
        }
    }
    assert!(checked >= 16);
}

#[test]
fn steps_without_a_target_network_should_differentiate_through_both_views() {
    // ψ online: the gradient flows through both branches (SimCLR when β = 1 and there is
    // no predictor); with a target network it reaches the online branch only.
    let simclr = Byol::new(ByolConfig {
        predictor: PredictorKind::None,
        target_network: false,
        objective: Objective {
            beta: 1.0,
            ..Objective::default()
        },
        ..tiny_config()
    })
    .unwrap();
    assert!(simclr.init(0).target.is_empty());
    step_gradient_matches_finite_differences(&simclr, "SimCLR");
    step_gradient_matches_finite_differences(&tiny_byol(true), "BYOL");
    let no_target = Byol::new(ByolConfig {
        target_network: false,
        ..tiny_config()
    })
    .unwrap();
    step_gradient_matches_finite_differences(&no_target, "no target, β = 0");
    let contrastive_byol = Byol::new(ByolConfig {
        objective: Objective {
            beta: 1.0,
            ..Objective::default()
        },
        ..tiny_config()
    })
    .unwrap();
    step_gradient_matches_finite_differences(&contrastive_byol, "BYOL + β = 1");
    let layernorm = Byol::new(ByolConfig {
        objective: Objective {
            normalisation: Normalisation::LayerNorm,
            ..Objective::default()
        },
        ..tiny_config()
    })
    .unwrap();
    step_gradient_matches_finite_differences(&layernorm, "LayerNorm loss");
}

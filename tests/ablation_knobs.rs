//! The ablation knobs change what they should and nothing else, and the diagnostics see the
//! collapse the paper describes: without a predictor and with τ = 0 the projections collapse;
//! BYOL's default does not.

use host::byol::{Byol, ByolConfig, LarsConfig, LrMultipliers};
use host::nn::{Arch, ResNetConfig, Stem};
use host::train::{train, RunOptions, TrainConfig};
use rand::{Rng, SeedableRng};

fn tiny_byol(predictor: bool) -> Byol {
    Byol::new(ByolConfig {
        encoder: ResNetConfig {
            arch: Arch::ResNet18,
            stem: Stem::Cifar,
            width: 4,
            in_channels: 3,
        },
        projector_hidden: 32,
        projection: 16,
        predictor_hidden: 32,
        predictor,
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
        &LarsConfig::default(),
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
            &LarsConfig::default(),
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
    let out = std::env::temp_dir().join(format!("byol-ablation-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    train(
        &cfg,
        &RunOptions {
            out,
            ..RunOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn without_predictor_and_target_the_projections_should_collapse_and_byol_should_not() {
    let base = TrainConfig {
        train_size: 256,
        test_size: 64,
        width: 4,
        epochs: 24,
        batch_size: 32,
        warmup_epochs: 0,
        base_lr: 1.0,
        projector_hidden: 64,
        projection_dim: 32,
        predictor_hidden: 64,
        knn_k: 10,
        ..TrainConfig::default()
    };
    let ablated = collapse_run(
        TrainConfig {
            tau_constant: Some(0.0),
            predictor: false,
            ..base.clone()
        },
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

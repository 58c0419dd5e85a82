//! Training runs end to end on a tiny configuration: reproducibility, resuming, checkpoints
//! and export, bad input, divergence.

#[path = "common/scratch.rs"]
mod scratch;

use host::config::TrainConfig;
use host::train::{train, RunOptions};
use host::Error;
use scratch::Scratch;
use std::path::{Path, PathBuf};

fn tiny() -> TrainConfig {
    TrainConfig::default().with(|c| {
        c.data.train_size = 64;
        c.data.test_size = 32;
        c.model.width = 4;
        c.optim.epochs = 2;
        c.optim.batch_size = 16;
        c.optim.warmup_epochs = 1;
        c.model.projector_hidden = 64;
        c.model.projection_dim = 32;
        c.model.predictor_hidden = 64;
        c.monitor.knn_k = 10;
    })
}

fn dir(name: &str) -> Scratch {
    Scratch::new("test", name)
}

fn opts(out: &Path) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        ..RunOptions::default()
    }
}

fn losses(out: &Path) -> Vec<String> {
    let m = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    m.lines()
        .filter(|l| l.contains("\"step\""))
        .map(|l| {
            l.split("\"loss\":")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn same_seed_should_give_bit_identical_runs() {
    let (a, b) = (dir("rep-a"), dir("rep-b"));
    let sa = train(&tiny(), &opts(&a)).unwrap();
    train(&tiny(), &opts(&b)).unwrap();
    let read = |d: &Path| std::fs::read(d.join("checkpoint.safetensors")).unwrap();
    assert_eq!(read(&a), read(&b), "checkpoints differ");
    assert_eq!(losses(&a), losses(&b));
    assert_eq!(losses(&a).len(), 8, "2 epochs of 64/16 steps");
    assert!(sa.knn_init.is_some() && sa.epochs.len() == 2);
    assert!(a.join("training.png").exists() && a.join("config.json").exists());
    let c = dir("rep-c");
    train(&TrainConfig { seed: 1, ..tiny() }, &opts(&c)).unwrap();
    assert_ne!(losses(&a), losses(&c), "another seed, another run");
}

/// `init_seed` draws the weights alone: the run starts from that seed's networks and keeps
/// `seed`'s data order and augmentations.
#[test]
fn init_seed_should_fix_the_weights_and_leave_the_data_stream_to_seed() {
    let start = |cfg: &TrainConfig, name: &str| {
        let out = dir(name);
        let stop = RunOptions {
            stop_after_epochs: Some(0),
            ..opts(&out)
        };
        train(cfg, &stop).unwrap();
        let byol = host::byol::Byol::new(cfg.byol_config().unwrap()).unwrap();
        let (state, _) =
            host::checkpoint::load(&out.join("checkpoint.safetensors"), &byol).unwrap();
        (state.online, state.target)
    };
    let mixed = tiny().with(|c| (c.seed, c.init_seed) = (1, Some(0)));
    let weights = start(&mixed, "init-mixed");
    assert!(weights == start(&tiny(), "init-seed0"));
    assert!(weights != start(&tiny().with(|c| c.seed = 1), "init-seed1"));
    let (m, zero, one) = (dir("init-run-mixed"), dir("init-run-0"), dir("init-run-1"));
    train(&mixed, &opts(&m)).unwrap();
    train(&tiny(), &opts(&zero)).unwrap();
    train(&tiny().with(|c| c.seed = 1), &opts(&one)).unwrap();
    // Same weights as seed 0 but another loss at the first step: the views are seed 1's.
    assert_ne!(losses(&m)[0], losses(&zero)[0]);
    assert_ne!(
        losses(&m)[0],
        losses(&one)[0],
        "and the weights are not seed 1's"
    );
}

/// The first reading also gives the random encoder with the data's BatchNorm statistics (the
/// placeholder ones are mean 0, variance 1), in the summary and in metrics.jsonl, without
/// touching the run; a resumed run has no initialisation to read.
#[test]
fn the_first_reading_should_also_give_the_data_statistics_baseline() {
    let (run, part) = (dir("data-bn"), dir("data-bn-part"));
    let s = train(&tiny(), &opts(&run)).unwrap();
    let data_bn = s.knn_init_data_bn.expect("a fresh run reads it");
    assert!((0.0..=1.0).contains(&data_bn));
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["epoch"], 0);
    assert_eq!(first["knn_top1_data_bn"].as_f64(), Some(data_bn));
    assert_eq!(first["knn_top1"].as_f64(), s.knn_init);
    // Stopped before any epoch: the untrained networks' checkpoint, from which the run
    // continues as if never stopped (so the reading left the state alone).
    let stop = RunOptions {
        stop_after_epochs: Some(0),
        ..opts(&part)
    };
    let stopped = train(&tiny(), &stop).unwrap();
    assert!(stopped.epochs.is_empty());
    assert_eq!(stopped.knn_init_data_bn, Some(data_bn));
    let resume = RunOptions {
        resume: Some(part.join("checkpoint.safetensors")),
        ..opts(&part)
    };
    let resumed = train(&tiny(), &resume).unwrap();
    assert_eq!((resumed.knn_init, resumed.knn_init_data_bn), (None, None));
    let read = |d: &Path| std::fs::read(d.join("checkpoint.safetensors")).unwrap();
    assert!(
        read(&run) == read(&part),
        "resumed from epoch 0, the checkpoint differs"
    );
    assert_eq!(losses(&run), losses(&part));
}

/// The views made on the step's device (`--augment-on gpu`; here the CPU backend applies the
/// drawn views itself) are the worker threads' views: the same run, bit for bit, with blur
/// and solarisation in play.
#[test]
fn views_made_on_the_device_should_equal_the_workers_views() {
    let cfg = tiny().with(|c| {
        c.augment.blur_t = 1.0;
        c.augment.blur_t_prime = 0.5;
    });
    let (workers, device) = (dir("aug-workers"), dir("aug-device"));
    train(&cfg, &opts(&workers)).unwrap();
    let on_device = RunOptions {
        augment_on: host::train::AugmentOn::Device,
        ..opts(&device)
    };
    train(&cfg, &on_device).unwrap();
    let read = |d: &Path| std::fs::read(d.join("checkpoint.safetensors")).unwrap();
    assert_eq!(losses(&workers), losses(&device));
    assert!(read(&workers) == read(&device), "checkpoints differ");
}

#[test]
fn a_resumed_run_should_equal_the_uninterrupted_run() {
    let (full, part) = (dir("full"), dir("part"));
    train(&tiny(), &opts(&full)).unwrap();
    train(
        &tiny(),
        &RunOptions {
            stop_after_epochs: Some(1),
            ..opts(&part)
        },
    )
    .unwrap();
    let resume = RunOptions {
        resume: Some(part.join("checkpoint.safetensors")),
        ..opts(&part)
    };
    let s = train(&tiny(), &resume).unwrap();
    assert_eq!(s.epochs.len(), 1, "one epoch left");
    let read = |d: &Path| std::fs::read(d.join("checkpoint.safetensors")).unwrap();
    assert_eq!(
        losses(&full),
        losses(&part),
        "metrics.jsonl continues where it stopped"
    );
    assert!(
        read(&full) == read(&part),
        "resumed checkpoint differs from the uninterrupted one"
    );
}

#[test]
fn every_optimizer_should_resume_bit_for_bit() {
    // AdamW's second moment and step count travel in the checkpoint like LARS's momentum.
    for optimizer in ["adamw", "sgd", "lars"] {
        let cfg = tiny().with(|c| {
            c.optim.optimizer = optimizer.into();
            c.optim.base_lr = if optimizer == "adamw" { 1e-3 } else { 0.1 };
        });
        let (full, part) = (
            dir(&format!("{optimizer}-full")),
            dir(&format!("{optimizer}-part")),
        );
        train(&cfg, &opts(&full)).unwrap();
        let stop = RunOptions {
            stop_after_epochs: Some(1),
            ..opts(&part)
        };
        train(&cfg, &stop).unwrap();
        let resume = RunOptions {
            resume: Some(part.join("checkpoint.safetensors")),
            ..opts(&part)
        };
        train(&cfg, &resume).unwrap();
        let read = |d: &Path| std::fs::read(d.join("checkpoint.safetensors")).unwrap();
        assert_eq!(losses(&full), losses(&part), "{optimizer}");
        assert!(
            read(&full) == read(&part),
            "{optimizer}: resumed checkpoint differs"
        );
    }
}

#[test]
fn a_projector_with_a_simplicial_embedding_should_train_save_it_and_resume_bit_for_bit() {
    let cfg = tiny().with(|c| c.model.simplicial_embedding = "4x8".into());
    let (full, part, plain) = (dir("sem-full"), dir("sem-part"), dir("sem-off"));
    train(&cfg, &opts(&full)).unwrap();
    train(
        &cfg,
        &RunOptions {
            stop_after_epochs: Some(1),
            ..opts(&part)
        },
    )
    .unwrap();
    let resume = RunOptions {
        resume: Some(part.join("checkpoint.safetensors")),
        ..opts(&part)
    };
    train(&cfg, &resume).unwrap();
    let read = |d: &Path| std::fs::read(d.join("checkpoint.safetensors")).unwrap();
    assert_eq!(losses(&full), losses(&part));
    assert!(read(&full) == read(&part), "resumed checkpoint differs");
    // The option is not ignored: the same run without it takes other steps.
    train(&tiny(), &opts(&plain)).unwrap();
    assert_ne!(losses(&full)[0], losses(&plain)[0]);
    // The block is saved, online and target, under its own names: 4 groups of 8 = 32
    // features from the 32-wide representation of a width-4 ResNet-18, then the projector's
    // first Linear reads those 32 features.
    let bytes = read(&full);
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, shape) in [
        ("online.projector.embed.linear.weight", vec![32, 32]),
        ("target.projector.embed.bn.running_var", vec![32]),
        ("online.projector.linear1.weight", vec![64, 32]),
    ] {
        let t = file.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.shape(), &shape[..], "{name}");
    }
    // A checkpoint with the block does not resume a run without it.
    let e = train(
        &tiny(),
        &RunOptions {
            resume: Some(full.join("checkpoint.safetensors")),
            ..opts(&dir("sem-refused"))
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("simplicial_embedding"), "{e}");
}

#[test]
fn the_target_should_start_as_configured() {
    for (init, same) in [("copy", true), ("independent", false)] {
        let cfg = tiny().with(|c| {
            c.optim.target_init = init.into();
        });
        let byol = host::byol::Byol::new(cfg.byol_config().unwrap()).unwrap();
        let s = byol.init(cfg.seed);
        assert_eq!(s.target[..] == s.online[..s.target.len()], same, "{init}");
        assert_eq!(s.target.len(), byol.projector_params().end);
    }
}

#[test]
fn export_should_write_the_encoder_under_torchvision_names() {
    let out = dir("export");
    train(
        &tiny().with(|c| {
            c.optim.epochs = 1;
        }),
        &opts(&out),
    )
    .unwrap();
    let cfg = tiny();
    let byol = host::byol::Byol::new(cfg.byol_config().unwrap()).unwrap();
    let (state, _) = host::checkpoint::load(&out.join("checkpoint.safetensors"), &byol).unwrap();
    let path = out.join("encoder.safetensors");
    host::checkpoint::export_encoder(&path, &byol, &state).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    let mut expected: Vec<String> = byol
        .encoder
        .registry
        .params
        .iter()
        .map(|p| p.name.clone())
        .collect();
    expected.extend(byol.encoder.registry.buffers.iter().map(|b| b.name.clone()));
    expected.sort();
    assert_eq!(
        names.into_iter().map(String::from).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(st.tensor("conv1.weight").unwrap().shape(), [4, 3, 3, 3]);
}

#[test]
fn bad_input_should_be_refused_before_any_work_with_a_clear_error() {
    let out = dir("bad");
    let cases: Vec<(TrainConfig, &str)> = vec![
        (
            tiny().with(|c| {
                c.optim.batch_size = 1;
            }),
            "batch size must be at least 2",
        ),
        (
            tiny().with(|c| {
                c.optim.batch_size = 65;
            }),
            "larger than the training set",
        ),
        (
            tiny().with(|c| {
                c.optim.tau_base = 1.5;
            }),
            "tau_base must lie in [0, 1]",
        ),
        (
            tiny().with(|c| {
                c.optim.base_lr = 0.0;
            }),
            "base lr must be positive",
        ),
        (
            tiny().with(|c| {
                c.optim.epochs = 0;
            }),
            "epochs must be at least 1",
        ),
        (
            tiny().with(|c| {
                c.model.arch = "vgg".into();
            }),
            "unknown architecture",
        ),
        (
            tiny().with(|c| {
                c.data.dataset = "imagenet".into();
            }),
            "not available",
        ),
        (
            tiny().with(|c| {
                c.data.dataset = "cifar10".into();
            }),
            "give their folder as data_dir",
        ),
        (
            tiny().with(|c| {
                c.ablation.closed_form_predictor = true;
            }),
            "batch 16 ≤ projection 32",
        ),
        (
            tiny().with(|c| {
                c.ablation.contrastive_beta = 1.0;
                c.ablation.loss_normalisation = "none".into();
            }),
            "needs the l2 loss normalisation",
        ),
        (
            tiny().with(|c| {
                c.ablation.loss_normalisation = "cosine".into();
            }),
            "expected l2, none, layernorm or batchnorm",
        ),
        (
            tiny().with(|c| {
                c.model.projector_depth = 0;
            }),
            "at least 1",
        ),
        (
            tiny().with(|c| {
                c.ablation.target_network = false;
                c.ablation.tau_constant = Some(0.0);
            }),
            "target_network = false",
        ),
        (
            tiny().with(|c| {
                c.optim.optimizer = "adam".into();
            }),
            "optimizer \"adam\": expected lars, sgd or adamw",
        ),
        (
            tiny().with(|c| {
                c.optim.lars_eta = 0.0;
            }),
            "lars_eta (the trust coefficient) must be positive",
        ),
        (
            tiny().with(|c| {
                c.optim.tau_base = 0.99;
                c.optim.tau_end = 0.9;
            }),
            "tau_end must lie in [tau_base, 1]",
        ),
        (
            tiny().with(|c| {
                c.augment.blur_t_prime = 1.5;
            }),
            "blur_t_prime is a probability",
        ),
        (
            tiny().with(|c| {
                c.augment.crop_min_scale = 0.0;
            }),
            "crop_min_scale is a fraction of the image",
        ),
        (
            tiny().with(|c| {
                c.augment.colour_strength = -1.0;
            }),
            "colour_strength scales the paper's colour jitter: expected [0, 5], got -1",
        ),
        (
            tiny().with(|c| {
                c.optim.target_init = "same".into();
            }),
            "target_init \"same\": expected copy or independent",
        ),
        (
            tiny().with(|c| {
                c.model.init = "haiku".into();
            }),
            "init \"haiku\": expected torchvision or official",
        ),
        (
            TrainConfig {
                recipe: "huge".into(),
                ..tiny()
            },
            "unknown recipe \"huge\"",
        ),
        (
            tiny().with(|c| c.model.simplicial_embedding = "32by8".into()),
            "\"32by8\": expected off or GROUPSxSIZE with both at least 1",
        ),
        (
            tiny().with(|c| c.model.simplicial_embedding = "0x8".into()),
            "expected off or GROUPSxSIZE",
        ),
        (
            tiny().with(|c| {
                c.model.simplicial_embedding = "4x8".into();
                c.model.simplicial_temperature = 0.0;
            }),
            "the softmax temperature must be positive, got 0",
        ),
    ];
    for (cfg, message) in cases {
        let e = train(&cfg, &opts(&out)).unwrap_err().to_string();
        assert!(e.contains(message), "{e:?} should say {message:?}");
    }
    // An output folder that cannot be created (a file stands in its way).
    let blocker = dir("blocker");
    std::fs::write(&blocker, b"x").unwrap();
    let e = train(&tiny(), &opts(&blocker.join("run"))).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("blocker"), "{e}");
}

#[test]
fn a_bad_setting_should_name_its_field_and_flag() {
    let cases: Vec<(TrainConfig, &str)> = vec![
        (tiny().with(|c| c.optim.base_lr = -3.0), "optim.base_lr"),
        (tiny().with(|c| c.model.arch = "vgg".into()), "model.arch"),
        (
            tiny().with(|c| c.model.predictor_depth = 0),
            "model.predictor_depth",
        ),
        (
            tiny().with(|c| c.data.limit_test = Some(0)),
            "data.limit_test",
        ),
        (
            tiny().with(|c| c.ablation.contrastive_temperature = 0.0),
            "ablation.contrastive_temperature",
        ),
        (
            tiny().with(|c| c.ablation.loss_normalisation = "cosine".into()),
            "ablation.loss_normalisation",
        ),
        (
            tiny().with(|c| c.ablation.closed_form_predictor = true),
            "ablation.closed_form_predictor",
        ),
        (
            tiny().with(|c| c.ablation.projector_lr_mult = f64::INFINITY),
            "ablation.projector_lr_mult",
        ),
        (
            tiny().with(|c| c.augment.augmentations = "all".into()),
            "augment.augmentations",
        ),
        (tiny().with(|c| c.monitor.knn_k = 0), "monitor.knn_k"),
        (tiny().with(|c| c.optim.momentum = 1.0), "optim.momentum"),
        (
            tiny().with(|c| c.optim.target_init = "same".into()),
            "optim.target_init",
        ),
        (
            tiny().with(|c| c.model.simplicial_embedding = "on".into()),
            "model.simplicial_embedding",
        ),
        (
            tiny().with(|c| {
                c.model.simplicial_embedding = "32x8".into();
                c.model.simplicial_temperature = f64::NAN;
            }),
            "model.simplicial_temperature",
        ),
        (
            tiny().with(|c| c.model.zero_init_from_stage = 5),
            "model.zero_init_from_stage",
        ),
        (
            tiny().with(|c| c.model.zero_init_from_stage = 0),
            "model.zero_init_from_stage",
        ),
    ];
    for (cfg, key) in cases {
        let e = cfg.validate().unwrap_err();
        assert!(
            matches!(&e, Error::Setting { field, .. } if *field == key),
            "{e:?} should be about {key}"
        );
        // Without knowing where the value came from, the message gives the key and the flag.
        let flag = key.rsplit('.').next().unwrap().replace('_', "-");
        let named = format!("{key} (--{flag}): ");
        assert!(
            e.to_string().starts_with(&named),
            "{e} should start {named:?}"
        );
    }
}

#[test]
fn resume_should_refuse_other_checkpoints_with_a_clear_error() {
    let out = dir("resume-bad");
    train(
        &tiny().with(|c| {
            c.optim.epochs = 1;
        }),
        &opts(&out),
    )
    .unwrap();
    let ckpt = out.join("checkpoint.safetensors");
    // Another architecture.
    let other = tiny().with(|c| {
        c.optim.epochs = 1;
        c.model.width = 8;
    });
    let e = train(
        &other,
        &RunOptions {
            resume: Some(ckpt.clone()),
            ..opts(&dir("r2"))
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("checkpoint") && (e.contains("width") || e.contains("other networks")),
        "{e}"
    );
    // Another configuration of the same networks.
    let e = train(
        &tiny().with(|c| {
            c.optim.epochs = 1;
            c.seed = 5;
        }),
        &RunOptions {
            resume: Some(ckpt.clone()),
            ..opts(&dir("r3"))
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("seed: 0 → 5"), "{e}");
    // A truncated file, and a missing one.
    let cut = dir("cut.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = train(
        &tiny().with(|c| {
            c.optim.epochs = 1;
        }),
        &RunOptions {
            resume: Some(cut.to_path_buf()),
            ..opts(&dir("r4"))
        },
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::Checkpoint { .. }) && e.to_string().contains("cut.safetensors"),
        "{e}"
    );
    let e = train(
        &tiny().with(|c| {
            c.optim.epochs = 1;
        }),
        &RunOptions {
            resume: Some(dir("missing").to_path_buf()),
            ..opts(&dir("r5"))
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
}

#[test]
fn the_stored_configuration_should_be_read_from_the_header_alone() {
    let out = dir("header");
    let cfg = tiny().with(|c| c.optim.epochs = 1);
    train(&cfg, &opts(&out)).unwrap();
    let bytes = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let saved = |name: &str, cut: usize| {
        let file = dir(name);
        std::fs::write(&file, &bytes[..cut]).unwrap();
        host::config::saved_config(&file)
    };
    // The tensors cut off: the configuration is still there, the run's own.
    assert_eq!(saved("tensors-cut", header + 16).unwrap(), cfg);
    // The header cut, and a file that is no checkpoint: errors that name the file.
    let e = saved("header-cut", header / 2).unwrap_err();
    assert!(matches!(e, Error::Checkpoint { .. }), "{e}");
    assert!(
        e.to_string().contains("header-cut") && e.to_string().contains("the header ends after"),
        "{e}"
    );
    let e = saved("short", 5).unwrap_err();
    assert!(e.to_string().contains("not a safetensors file"), "{e}");
}

#[test]
fn a_diverging_run_should_stop_at_once_and_leave_the_last_checkpoint_intact() {
    let out = dir("diverge");
    train(
        &tiny().with(|c| {
            c.optim.epochs = 1;
        }),
        &opts(&out),
    )
    .unwrap();
    let before = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    // An absurd learning rate, unclipped (a clipped LARS step is at most η of a tensor's
    // norm): the weights overflow within the first epoch.
    let wild = tiny().with(|c| {
        c.optim.base_lr = 1e30;
        c.optim.lars_clip = false;
        c.optim.warmup_epochs = 0;
        c.optim.epochs = 1;
    });
    let e = train(&wild, &opts(&out)).unwrap_err();
    match e {
        Error::Diverged { step, .. } => assert!(step < 4, "stopped at step {step}"),
        other => panic!("expected divergence, got {other}"),
    }
    assert_eq!(
        std::fs::read(out.join("checkpoint.safetensors")).unwrap(),
        before,
        "the last good checkpoint must survive"
    );
}

#[test]
fn toml_configs_should_fill_defaults_and_refuse_unknown_fields() {
    let d = dir("toml");
    std::fs::create_dir_all(&d).unwrap();
    let path = d.join("run.toml");
    std::fs::write(
        &path,
        "[optim]\nepochs = 3\ntau_base = 0.99\n[model]\nwidth = 8\n[run]\nout = \"somewhere\"\nthreads = 2\n",
    )
    .unwrap();
    let file = host::config::read_config(&path).unwrap();
    assert_eq!(
        (
            file.train.optim.epochs,
            file.train.model.width,
            file.train.optim.tau_base
        ),
        (3, 8, 0.99)
    );
    assert_eq!(
        file.train.optim.batch_size,
        TrainConfig::default().optim.batch_size,
        "unset fields keep their defaults"
    );
    assert_eq!(
        (file.out, file.threads),
        (Some(PathBuf::from("somewhere")), Some(2))
    );
    std::fs::write(&path, "[optim]\nepoch = 3\n").unwrap();
    let e = host::config::read_config(&path).unwrap_err().to_string();
    assert!(
        e.contains("run.toml") && e.contains("unknown field `epoch`"),
        "{e}"
    );
    std::fs::write(&path, "[run]\nthreads = 0\n").unwrap();
    assert!(host::config::read_config(&path)
        .unwrap_err()
        .to_string()
        .contains("run.threads must be a positive integer"));
    std::fs::write(&path, "[model]\nwidth = \"wide\"\n").unwrap();
    let e = host::config::read_config(&path).unwrap_err().to_string();
    assert!(e.contains("`model.width`"), "{e}");
    assert_eq!(e.trim_end(), e, "no blank line under the error");
}

#[test]
fn a_run_should_train_on_cifar10_files() {
    // A CIFAR-10 folder in the binary format: 5 training batches and a test batch, 8 images
    // each, labels cycling through the classes.
    let data = dir("cifar10-data");
    std::fs::create_dir_all(&data).unwrap();
    let record = |i: usize| -> Vec<u8> {
        let mut r = vec![(i % 10) as u8];
        r.extend((0..3 * 32 * 32).map(|k| ((k * 7 + i * 31) % 256) as u8));
        r
    };
    for b in 1..=5 {
        let bytes: Vec<u8> = (0..8).flat_map(|i| record(b * 8 + i)).collect();
        std::fs::write(data.join(format!("data_batch_{b}.bin")), bytes).unwrap();
    }
    let test: Vec<u8> = (0..8).flat_map(record).collect();
    std::fs::write(data.join("test_batch.bin"), test).unwrap();
    let out = dir("cifar10-run");
    let summary = train(
        &tiny().with(|c| {
            c.data.dataset = "cifar10".into();
            c.data.data_dir = Some(data.to_path_buf());
            c.optim.epochs = 1;
            c.monitor.knn_k = 5;
        }),
        &opts(&out),
    )
    .unwrap();
    assert_eq!(summary.epochs.len(), 1);
    assert!(summary.epochs[0].loss.is_finite());
    assert!(out.join("checkpoint.safetensors").exists());

    // --limit-train / --limit-test: seeded stratified subsets of any data set.
    let limited = tiny().with(|c| {
        c.data.dataset = "cifar10".into();
        c.data.data_dir = Some(data.to_path_buf());
        c.data.limit_train = Some(20);
        c.data.limit_test = Some(5);
    });
    let (train_set, test_set) = host::train::load_data(&limited).unwrap();
    assert_eq!((train_set.len(), test_set.len()), (20, 5));
    for class in 0..10 {
        let n = train_set.labels.iter().filter(|&&l| l == class).count();
        assert_eq!(n, 2, "4 of each class in 40, so 2 in 20");
    }
    // The run's seed does not choose the data: the same subset, and the same embedded images.
    let reseeded = host::train::load_data(&limited.clone().with(|c| c.seed = 7)).unwrap();
    assert_eq!(reseeded.0.images, train_set.images);
    assert_eq!(reseeded.1.images, test_set.images);
    let embedded = |seed: u64| host::train::load_data(&tiny().with(|c| c.seed = seed)).unwrap();
    let (a, b) = (embedded(0), embedded(7));
    assert_eq!((a.0.images, a.1.images), (b.0.images, b.1.images));
    let too_many = limited.with(|c| {
        c.data.limit_train = Some(41);
    });
    let e = host::train::load_data(&too_many).unwrap_err().to_string();
    assert!(
        e.contains("limit_train is 41") && e.contains("only 40"),
        "{e}"
    );
}

#[test]
fn a_study_over_several_seeds_should_train_every_setting_on_every_seed() {
    use host::ablate::{run_study, RunResult};
    let base = tiny().with(|c| c.optim.epochs = 1);
    let out = dir("study-seeds");
    let device = Default::default();
    let table = run_study("normalisation", &base, &[0, 3], &out, false, device).unwrap();
    let read = |setting: &str, seed: u64| -> (RunResult, serde_json::Value) {
        let d = out
            .join("normalisation")
            .join(setting)
            .join(format!("seed-{seed}"));
        let result = std::fs::read_to_string(d.join("result.json")).unwrap();
        let config = std::fs::read_to_string(d.join("config.json")).unwrap();
        (
            serde_json::from_str(&result).unwrap(),
            serde_json::from_str(&config).unwrap(),
        )
    };
    for setting in ["l2", "layernorm", "none", "batchnorm"] {
        let (r0, c0) = (read(setting, 0), read(setting, 3));
        assert_eq!(r0.1["seed"], 0, "{setting}");
        assert_eq!(c0.1["seed"], 3, "{setting}");
        // The table's kNN cell: the mean over both seeds, then each seed's value.
        let (a, b) = (r0.0.knn_top1 * 100.0, c0.0.knn_top1 * 100.0);
        let cell = format!(
            "{:.1} ± {:.1} ({a:.1}, {b:.1})",
            (a + b) / 2.0,
            (a - b).abs() / 2f64.sqrt()
        );
        assert!(
            table.contains(&format!("| {setting} | ")),
            "{setting}\n{table}"
        );
        assert!(table.contains(&cell), "{cell}\n{table}");
    }
    assert!(
        table.contains("| +0.0 ± 0.0 (ahead on 0 of 2) |"),
        "the first setting against itself\n{table}"
    );
    let written = std::fs::read_to_string(out.join("normalisation/results.md")).unwrap();
    assert_eq!(written, table);
    // The plots: the table's values by setting, and each setting's curves (five panels, the
    // legend of four settings in the sixth place).
    let size = |name: &str| image::image_dimensions(out.join("normalisation").join(name)).unwrap();
    assert_eq!(size("results.png"), (960, 600));
    assert_eq!(size("curves.png"), (960, 900));
    // A seed is a seed: the two runs of a setting differ.
    let ckpt = |seed: u64| {
        std::fs::read(out.join(format!(
            "normalisation/l2/seed-{seed}/checkpoint.safetensors"
        )))
        .unwrap()
    };
    assert_ne!(ckpt(0), ckpt(3));
    // A seed listed twice, or none, is refused before any training.
    for (seeds, expected) in [
        (&[1, 1][..], "seed: 1 is listed twice"),
        (&[], "at least one seed"),
    ] {
        let e = run_study(
            "normalisation",
            &base,
            seeds,
            &dir("study-bad-seeds"),
            false,
            device,
        )
        .unwrap_err();
        assert!(e.to_string().contains(expected), "{e}");
    }
}

/// A way to change `field` to another valid value, for the test below.
fn change(field: &str) -> fn(&mut TrainConfig) {
    match field {
        "data.image_size" => |c| c.data.image_size += 16,
        "optim.lars_eta" => |c| c.optim.lars_eta *= 4.0,
        "optim.lars_clip" => |c| c.optim.lars_clip = !c.optim.lars_clip,
        "optim.tau_base" => |c| c.optim.tau_base = 0.5,
        "optim.tau_end" => |c| c.optim.tau_end = 0.995,
        "optim.target_init" => |c| {
            let other = ["copy", "independent"]
                .iter()
                .find(|t| **t != c.optim.target_init);
            c.optim.target_init = other.unwrap().to_string();
        },
        "optim.base_lr" => |c| c.optim.base_lr *= 2.0,
        "model.predictor_hidden" => |c| c.model.predictor_hidden += 8,
        "model.predictor_depth" => |c| c.model.predictor_depth += 1,
        "ablation.predictor_lr_mult" => |c| c.ablation.predictor_lr_mult = 7.0,
        "model.zero_init_from_stage" => |c| c.model.zero_init_from_stage = 1,
        "model.simplicial_temperature" => |c| c.model.simplicial_temperature = 0.7,
        "ablation.contrastive_temperature" => |c| c.ablation.contrastive_temperature = 0.7,
        "augment.blur_t" => |c| c.augment.blur_t = 0.5,
        "augment.blur_t_prime" => |c| c.augment.blur_t_prime = 0.5,
        "augment.colour_strength" => |c| c.augment.colour_strength = 2.0,
        f => panic!("no change written for {f}: add one here"),
    }
}

/// What a run ends with: every step's loss, then the weights, running statistics and
/// momentum of both networks.
fn outcome(cfg: &TrainConfig, name: &str) -> (Vec<String>, Vec<Vec<f32>>) {
    let out = dir(name);
    train(cfg, &opts(&out)).unwrap();
    let byol = host::byol::Byol::new(cfg.byol_config().unwrap()).unwrap();
    let (s, _) = host::checkpoint::load(&out.join("checkpoint.safetensors"), &byol).unwrap();
    let state = [
        s.online,
        s.target,
        s.online_running,
        s.target_running,
        s.momentum,
    ];
    (losses(&out), state.into())
}

/// `TrainConfig::unread_fields` is what the CLI refuses when a user sets it, so it must name
/// only fields that change nothing: each one named, changed, gives the same run bit for bit.
/// Three configurations between them leave unread every field the list knows; a field the run
/// does read (the base lr) changes the run, so the comparison can tell.
#[test]
fn a_field_the_run_does_not_read_should_change_nothing() {
    let one_epoch = tiny().with(|c| c.optim.epochs = 1);
    let configs = [
        one_epoch
            .clone()
            .with(|c| c.augment.augmentations = "symmetric".into()),
        one_epoch.clone().with(|c| {
            c.optim.optimizer = "sgd".into();
            c.ablation.tau_constant = Some(0.5);
            c.ablation.predictor = false;
            c.model.zero_init_residual = false;
            c.augment.augmentations = "no-blur".into();
        }),
        one_epoch.with(|c| {
            c.ablation.target_network = false;
            c.ablation.closed_form_predictor = true;
            c.model.projection_dim = 8;
            c.augment.augmentations = "crop-blur".into();
        }),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (k, cfg) in configs.iter().enumerate() {
        let base = outcome(cfg, &format!("unread-{k}"));
        let unread = cfg.unread_fields();
        for (field, why) in &unread {
            let changed = cfg.clone().with(change(field));
            assert_ne!(
                &changed, cfg,
                "{field}: the change changes the configuration"
            );
            let name = format!("unread-{k}-{}", field.replace('.', "-"));
            assert!(
                outcome(&changed, &name) == base,
                "{field} ({why}) changed run {k}"
            );
            seen.insert(*field);
        }
        let read = cfg.clone().with(change("optim.base_lr"));
        assert!(outcome(&read, &format!("unread-{k}-read")) != base);
    }
    let expected = [
        "ablation.contrastive_temperature",
        "ablation.predictor_lr_mult",
        "augment.blur_t",
        "augment.blur_t_prime",
        "augment.colour_strength",
        "data.image_size",
        "model.predictor_depth",
        "model.predictor_hidden",
        "model.simplicial_temperature",
        "model.zero_init_from_stage",
        "optim.lars_clip",
        "optim.lars_eta",
        "optim.target_init",
        "optim.tau_base",
        "optim.tau_end",
    ];
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), expected);
}

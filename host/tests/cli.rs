//! The `host` binary as a user meets it: every bad input is one sentence on standard error
//! (never a panic or a Rust debug dump), and a run resumed from its folder alone continues
//! bit for bit.

#[path = "../../tests/common/scratch.rs"]
mod scratch;

use scratch::Scratch;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_host"))
        .args(args)
        .output()
        .expect("the host binary runs")
}

/// Fails the test with the command's standard error unless it succeeded.
fn assert_succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn dir(name: &str) -> Scratch {
    Scratch::new("cli", name)
}

/// A run small enough for a test: two epochs of four steps.
const TINY: [&str; 18] = [
    "--train-size",
    "64",
    "--test-size",
    "32",
    "--width",
    "4",
    "--batch-size",
    "16",
    "--epochs",
    "2",
    "--projector-hidden",
    "64",
    "--projection-dim",
    "32",
    "--predictor-hidden",
    "64",
    "--threads",
    "1",
];

fn train(extra: &[&str]) -> Output {
    let args: Vec<&str> = ["train"]
        .iter()
        .chain(&TINY)
        .chain(extra)
        .copied()
        .collect();
    host(&args)
}

#[test]
fn bad_input_should_get_one_sentence_naming_what_was_expected() {
    let cases: &[(&[&str], &str)] = &[
        (&["train", "--width", "0"], "width is a size"),
        (
            &["train", "--base-lr", "-1"],
            "base lr must be positive, got -1",
        ),
        (
            &["train", "--weight-decay", "-0.5"],
            "weight decay must be ≥ 0",
        ),
        (&["train", "--tau-base", "2"], "tau_base must lie in [0, 1]"),
        (
            &["train", "--batch-size", "1"],
            "batch size must be at least 2",
        ),
        (&["train", "--epochs", "0"], "epochs must be at least 1"),
        (
            &["train", "--dataset", "imagenet"],
            "expected one of synthetic",
        ),
        (
            &["train", "--dataset", "cifar10"],
            "give their folder as data_dir (--data-dir); `host download cifar10` fetches it",
        ),
        (
            &["train", "--data-dir", "/tmp"],
            "--data-dir: the embedded data set (dataset \"synthetic\") is generated and reads no folder",
        ),
        (
            &["train", "--threads", "0"],
            "--threads: expected at least 1 worker thread",
        ),
        (
            &["train", "--optimizer", "adam"],
            "expected lars, sgd or adamw",
        ),
        (&["train", "--lars-eta", "0"], "lars_eta"),
        (&["train", "--momentum", "1"], "momentum must lie in [0, 1)"),
        (&["train", "--augmentations", "all"], "all"),
        (&["train", "--recipe", "huge"], "huge"),
        (&["train", "--preset", "7"], "expected 40, 100, 300 or 1000"),
        (
            &["train", "--device", "tpu"],
            "expected cpu, cuda or cuda:N",
        ),
        (
            &["train", "--device", "cuda:x"],
            "expected cpu, cuda or cuda:N",
        ),
        (
            &["train", "--projection-dim", "0"],
            "projection_dim is a size",
        ),
        (
            &["train", "--config", "/nonexistent/x.toml"],
            "/nonexistent/x.toml",
        ),
        (
            &["train", "--resume", "/nonexistent/run"],
            "--resume: /nonexistent/run: no such run folder or checkpoint file",
        ),
        (
            &["train", "--resume", "/"],
            "--resume: /: no checkpoint.safetensors in that folder",
        ),
        (&["eval", "knn", "/nonexistent/run"], "/nonexistent/run"),
        (
            &["eval", "linear", "/nonexistent/run", "--epochs", "0"],
            "--epochs: expected at least 1 epoch of the linear classifier",
        ),
        (
            &["export", "/nonexistent/run", "/tmp/x"],
            "/nonexistent/run",
        ),
        (
            &["plot", "/nonexistent/run"],
            "/nonexistent/run: no such run folder",
        ),
        (&["plot", "/"], "/: no metrics.jsonl in that folder"),
        (
            &["embed", "/nonexistent/run", "--out", "/tmp/x.npy"],
            "not one .npy file",
        ),
        (
            &[
                "export-data",
                "/tmp/x.safetensors",
                "--config",
                "/nonexistent/c.json",
            ],
            "/nonexistent/c.json",
        ),
        (&["ablate", "nothing"], "nothing"),
        (
            &["ablate", "tau", "--seed", "1,2,1"],
            "seed: 1 is listed twice",
        ),
        (&["ablate", "tau", "--seed", "1,x"], "invalid value 'x'"),
        (
            &["ablate", "tau", "--threads", "0"],
            "--threads: expected at least 1 worker thread",
        ),
        (&["train", "--epochs", "many"], "invalid value 'many'"),
        (
            &["train", "--augment-on", "gpu"],
            "--augment-on gpu needs --device cuda",
        ),
        (
            &["train", "--precision", "f8"],
            "expected f32, tf32 or bf16",
        ),
    ];
    for (args, expected) in cases {
        let out = host(args);
        let err = String::from_utf8_lossy(&out.stderr);
        let what = args.join(" ");
        assert!(!out.status.success(), "{what}: should fail");
        assert!(err.contains(expected), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: a panic: {err}");
        let last = err.lines().rfind(|l| l.starts_with("error:"));
        let last = last.unwrap_or_else(|| panic!("{what}: no `error:` line: {err}"));
        // A debug dump looks like `Name { field: …`; sentences do not.
        let dump = last
            .split_whitespace()
            .zip(last.split_whitespace().skip(1))
            .any(|(a, b)| a.starts_with(char::is_uppercase) && a.len() > 3 && b == "{");
        assert!(!dump, "{what}: a debug dump: {last}");
    }
    // Settings are checked before the banner, so a bad one is the only line printed.
    let out = host(&["train", "--epochs", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// A U16 tensor of a safetensors file (labels), as values.
fn u16s(st: &safetensors::SafeTensors, name: &str) -> Vec<u16> {
    let t = st.tensor(name).unwrap();
    t.data()
        .chunks(2)
        .map(|b| u16::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The step records of a metrics file without their timings: (step, loss, lr, τ).
fn steps(run: &Path) -> Vec<String> {
    let text = String::from_utf8(read(&run.join("metrics.jsonl"))).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "step")
        .map(|r| format!("{} {} {} {}", r["step"], r["loss"], r["lr"], r["tau"]))
        .collect()
}

#[test]
fn resume_from_the_run_folder_alone_should_continue_bit_for_bit() {
    let (full, part) = (dir("full"), dir("part"));
    let full_s = full.to_str().unwrap();
    let part_s = part.to_str().unwrap();
    assert_succeeded(&train(&["--out", full_s]));
    assert_succeeded(&train(&["--out", part_s, "--stop-after-epochs", "1"]));
    // As if killed in the middle of epoch 2: its first steps are already in metrics.jsonl.
    let full_metrics = String::from_utf8(read(&full.join("metrics.jsonl"))).unwrap();
    let epoch2_first_step = full_metrics
        .lines()
        .find(|l| l.contains("\"step\":4,"))
        .unwrap();
    let mut interrupted = String::from_utf8(read(&part.join("metrics.jsonl"))).unwrap();
    interrupted.push_str(epoch2_first_step);
    interrupted.push('\n');
    std::fs::write(part.join("metrics.jsonl"), interrupted).unwrap();

    assert_succeeded(&host(&["train", "--resume", part_s]));
    let ckpt = "checkpoint.safetensors";
    assert!(
        read(&full.join(ckpt)) == read(&part.join(ckpt)),
        "checkpoints differ"
    );
    assert_eq!(
        steps(&full),
        steps(&part),
        "each step once, as in the full run"
    );
    assert_eq!(steps(&full).len(), 8);

    // Flags may not change a resumed run, except those that do not change its result; the
    // refusal comes before the banner, which would print the changed run.
    let changed = host(&["train", "--resume", part_s, "--epochs", "3"]);
    let err = String::from_utf8_lossy(&changed.stderr);
    assert!(!changed.status.success());
    assert!(
        err.starts_with("error: --resume: the flags given change the run saved in ")
            && err.contains("(optim.epochs: 2 → 3)")
            && err.contains("train the changed run into another --out"),
        "{err}"
    );
    let again = host(&[
        "train",
        "--resume",
        part_s,
        "--threads",
        "1",
        "--batch-size",
        "16",
    ]);
    assert_succeeded(&again);
}

/// A run killed while it wrote a record leaves a last line cut short: the run still plots,
/// and resumes to the uninterrupted run's end, each step once. The summaries of the two runs
/// name the files, and the stopped one says how it goes on.
#[test]
fn a_run_killed_mid_record_should_still_plot_and_resume() {
    let (full, part) = (dir("torn-full"), dir("torn-part"));
    let (full_s, part_s) = (full.to_str().unwrap(), part.to_str().unwrap());
    let (whole, stopped) = (
        train(&["--out", full_s]),
        train(&["--out", part_s, "--stop-after-epochs", "1"]),
    );
    assert_succeeded(&whole);
    assert_succeeded(&stopped);
    // The summary's last lines say where the files are, and how a stopped run goes on.
    let (whole, stopped) = (
        String::from_utf8_lossy(&whole.stdout),
        String::from_utf8_lossy(&stopped.stdout),
    );
    let checkpoint = full.join("checkpoint.safetensors");
    let written = format!("written: {}, metrics.jsonl", checkpoint.display());
    assert!(
        whole.contains(&written) && !whole.contains("stopped after"),
        "{whole}"
    );
    let goes_on = format!("stopped after 1 of 2 epochs: host train --resume {part_s} goes on");
    assert!(stopped.contains(&goes_on), "{stopped}");
    let metrics = part.join("metrics.jsonl");
    let mut text = String::from_utf8(read(&metrics)).unwrap();
    text.push_str("{\"kind\":\"step\",\"loss\":1.2");
    std::fs::write(&metrics, text).unwrap();
    assert_succeeded(&host(&["plot", part_s]));
    assert_succeeded(&host(&["train", "--resume", part_s]));
    let ckpt = "checkpoint.safetensors";
    assert!(
        read(&full.join(ckpt)) == read(&part.join(ckpt)),
        "checkpoints differ"
    );
    assert_eq!(steps(&full), steps(&part));
    assert!(String::from_utf8(read(&metrics)).unwrap().ends_with("}\n"));
}

/// `host plot` draws one run into its folder, or several side by side into one image, and names
/// a missing run among several.
#[test]
fn plot_should_draw_one_run_or_several_side_by_side() {
    let (a, b, out) = (dir("plot-a"), dir("plot-b"), dir("plot-out"));
    let (a_s, b_s, out_s) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    assert_succeeded(&train(&["--out", a_s]));
    assert_succeeded(&train(&["--out", b_s, "--seed", "1", "--tau-base", "0.99"]));
    std::fs::remove_file(a.join("training.png")).unwrap();
    assert_succeeded(&host(&["plot", a_s]));
    let size = |path: &Path| image::image_dimensions(path).unwrap();
    assert_eq!(size(&a.join("training.png")), (960, 600), "four panels");
    std::fs::create_dir_all(&out).unwrap();
    let both = host(&["plot", a_s, b_s, "--out", out_s]);
    assert_succeeded(&both);
    let image = out.join("comparison.png");
    let said = String::from_utf8_lossy(&both.stdout);
    assert!(said.contains(image.to_str().unwrap()), "{said}");
    assert_eq!(size(&image), (960, 900), "five panels and the legend");
    let named = out.join("named.png");
    assert_succeeded(&host(&["plot", a_s, b_s, "--out", named.to_str().unwrap()]));
    assert_eq!(size(&named), (960, 900));
    let new_folder = format!("{out_s}/new/");
    assert_succeeded(&host(&["plot", a_s, b_s, "--out", &new_folder]));
    assert_eq!(size(&out.join("new/comparison.png")), (960, 900));
    let missing = host(&["plot", a_s, "/nonexistent/run"]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("/nonexistent/run: no such run folder"),
        "{err}"
    );
}

/// Resuming a run with nothing left to train says so, and leaves the run as it was.
#[test]
fn resuming_a_finished_run_should_say_there_is_nothing_to_train() {
    let run = dir("finished");
    let run_s = run.to_str().unwrap();
    assert_succeeded(&train(&["--out", run_s]));
    let ckpt = read(&run.join("checkpoint.safetensors"));
    let metrics = read(&run.join("metrics.jsonl"));
    let again = host(&["train", "--resume", run_s]);
    assert_succeeded(&again);
    let said = String::from_utf8_lossy(&again.stdout);
    let expected = format!("nothing to train: {run_s} holds 2 of its 2 epochs: it is finished");
    assert!(said.contains(&expected), "{said}");
    assert!(read(&run.join("checkpoint.safetensors")) == ckpt);
    assert!(read(&run.join("metrics.jsonl")) == metrics);
    let early = host(&["train", "--resume", run_s, "--stop-after-epochs", "1"]);
    assert_succeeded(&early);
    assert!(String::from_utf8_lossy(&early.stdout).contains(&expected));
    // Stopped after epoch 1 of 2, and asked again to stop there.
    let part = dir("stopped");
    let part_s = part.to_str().unwrap();
    assert_succeeded(&train(&["--out", part_s, "--stop-after-epochs", "1"]));
    let again = host(&["train", "--resume", part_s, "--stop-after-epochs", "1"]);
    assert_succeeded(&again);
    let said = String::from_utf8_lossy(&again.stdout);
    let expected = format!("nothing to train: {part_s} holds 1 of its 2 epochs; --resume without --stop-after-epochs (or with more than 1) continues it");
    assert!(said.contains(&expected), "{said}");
}

#[test]
fn a_runs_config_json_should_be_a_config_file_that_repeats_the_run() {
    let (a, b) = (dir("config-a"), dir("config-b"));
    let a_s = a.to_str().unwrap();
    let done = train(&["--out", a_s, "--optimizer", "adamw"]);
    assert_succeeded(&done);
    let config = a.join("config.json");
    let again = host(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--out",
        b.to_str().unwrap(),
    ]);
    assert_succeeded(&again);
    let ckpt = "checkpoint.safetensors";
    assert!(
        read(&a.join(ckpt)) == read(&b.join(ckpt)),
        "the same run, bit for bit"
    );
    assert_eq!(read(&a.join("config.json")), read(&b.join("config.json")));
}

#[test]
fn a_bad_setting_should_name_the_flag_or_the_file_and_field_that_set_it() {
    let d = dir("origin");
    std::fs::create_dir_all(&d).unwrap();
    let config = d.join("bad.toml");
    std::fs::write(&config, "[optim]\nbase_lr = -3\n").unwrap();
    let config = config.to_str().unwrap();
    let folder_config = d.join("folder.toml");
    std::fs::write(
        &folder_config,
        "[data]\ndataset = \"folder\"\nimage_size = 48\n",
    )
    .unwrap();
    let folder_config = folder_config.to_str().unwrap();
    let out = d.join("studies");
    let out = out.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["train", "--config", config],
            &format!("error: {config}: optim.base_lr: base lr must be positive, got -3"),
        ),
        // A flag overrides the file, so the flag is named.
        (
            &["train", "--config", config, "--base-lr", "-1"],
            "error: --base-lr: base lr must be positive, got -1",
        ),
        (
            &["train", "--dataset", "stl10"],
            "error: --dataset: dataset \"stl10\" reads files",
        ),
        (
            &["export-data", "/tmp/x.safetensors", "--limit-test", "0"],
            "error: --limit-test: limit_test is a size",
        ),
        (
            &["train", "--out", config],
            &format!("error: {config}: the output folder is a file"),
        ),
        // A study checks its base before its first run.
        (
            &["ablate", "tau", "--epochs", "0", "--out", out],
            "error: --epochs: epochs must be at least 1",
        ),
        (
            &[
                "train",
                "--dataset",
                "mnist",
                "--data-dir",
                "/nonexistent/digits",
            ],
            "error: --data-dir: /nonexistent/digits: no such folder",
        ),
        (
            &[
                "export-data",
                "/tmp/x.safetensors",
                "--dataset",
                "mnist",
                "--data-dir",
                "/nonexistent/digits",
            ],
            "error: --data-dir: /nonexistent/digits: no such folder",
        ),
        // A field the data set does not read is refused, not dropped.
        (
            &["train", "--image-size", "96"],
            "error: --image-size: image_size is read by dataset \"folder\" only; \"synthetic\" keeps its images' side",
        ),
        (
            &[
                "ablate",
                "tau",
                "--dataset",
                "cifar10",
                "--data-dir",
                "/tmp",
                "--train-size",
                "500",
                "--out",
                out,
            ],
            "error: --train-size: train_size is read by dataset \"synthetic\" only; for \"cifar10\" limit_train",
        ),
        (
            &["train", "--config", folder_config, "--dataset", "mnist", "--data-dir", "/tmp"],
            &format!("error: {folder_config}: data.image_size: image_size is read by dataset \"folder\" only; \"mnist\""),
        ),
        (
            &[
                "export-data",
                "/tmp/x.safetensors",
                "--dataset",
                "mnist",
                "--data-dir",
                "/tmp",
                "--test-size",
                "10",
            ],
            "error: --test-size: test_size is read by dataset \"synthetic\" only; for \"mnist\" limit_train",
        ),
        (
            &["train", "--optimizer", "sgd", "--lars-eta", "0.1"],
            "error: --lars-eta: lars_eta is read by optimizer \"lars\" only; this run's is \"sgd\"",
        ),
        (
            &["train", "--tau-constant", "0.99", "--tau-base", "0.9"],
            "error: --tau-base: tau_base shapes the cosine τ schedule, which tau_constant = 0.99 replaces",
        ),
        (
            &["train", "--precision", "bf16"],
            "error: --precision bf16: tensor-core precision is a GPU's; the CPU computes in f32",
        ),
        (
            &["train", "--augmentations", "no-blur", "--blur-t", "1"],
            "error: --blur-t: blur_t is a blur probability that augmentation set \"no-blur\" does not use",
        ),
    ];
    for (args, expected) in cases {
        let out = host(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: should fail");
        assert!(err.starts_with(expected), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line only: {err}");
    }
}

/// The banner's recipe line shows what the run does: τ's schedule, or a constant τ as such, and
/// "–" for a setting the run does not read.
#[test]
fn the_banner_should_show_the_tau_the_run_uses_and_dash_what_it_does_not_read() {
    let run = dir("banner");
    let run_s = run.to_str().unwrap();
    let recipe_line = |extra: &[&str]| {
        let args = [&["--out", run_s, "--stop-after-epochs", "0"], extra].concat();
        let out = train(&args);
        assert_succeeded(&out);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        let line = err.lines().find(|l| l.starts_with("  recipe "));
        line.unwrap_or_else(|| panic!("no recipe line: {err}"))
            .to_string()
    };
    assert_eq!(
        recipe_line(&[]),
        "  recipe small: lars lr 1·batch/256, weight decay 1e-4, η 0.05 clipped, τ 0.9 → 1, target copy, blur 0/0, warm-up 1 epoch, projector/predictor hidden 64/64"
    );
    let ablated = ["--optimizer", "sgd", "--tau-constant", "0.5"];
    assert_eq!(
        recipe_line(&[&ablated[..], &["--augmentations", "no-blur"]].concat()),
        "  recipe small: sgd lr 1·batch/256, weight decay 1e-4, τ 0.5 (constant), target copy, blur –/–, warm-up 1 epoch, projector/predictor hidden 64/64"
    );
}

#[test]
fn a_new_run_into_a_finished_runs_folder_should_say_it_replaces_it() {
    let run = dir("again");
    let run_s = run.to_str().unwrap();
    let first = train(&["--out", run_s, "--stop-after-epochs", "0"]);
    assert_succeeded(&first);
    let notice = "holds an earlier run, which this one replaces";
    assert!(!String::from_utf8_lossy(&first.stderr).contains(notice));
    let again = train(&["--out", run_s, "--stop-after-epochs", "0"]);
    assert_succeeded(&again);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains(&format!("{run_s} {notice}")), "{err}");
    let resumed = host(&["train", "--resume", run_s]);
    assert_succeeded(&resumed);
    assert!(!String::from_utf8_lossy(&resumed.stderr).contains(notice));
}

#[test]
fn a_warm_up_as_long_as_the_run_should_be_pointed_out() {
    let run = dir("warm-up");
    let run_s = run.to_str().unwrap();
    let notice = "the learning rate rises through all of it and never decays";
    for (warmup, expected) in [("1", false), ("2", true), ("3", true)] {
        let out = train(&[
            "--out",
            run_s,
            "--stop-after-epochs",
            "0",
            "--warmup-epochs",
            warmup,
        ]);
        assert_succeeded(&out);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.contains(notice), expected, "warm-up {warmup}: {err}");
    }
}

#[test]
fn ablate_seed_and_threads_should_reach_every_run_of_the_study() {
    // The smallest study (three runs), one epoch on 64 images: about 15 s.
    let out = dir("ablate-seed");
    let done = host(&[
        "ablate",
        "closed-form-predictor",
        "--epochs",
        "1",
        "--train-size",
        "64",
        "--seed",
        "5",
        "--threads",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_succeeded(&done);
    let runs: Vec<PathBuf> = std::fs::read_dir(out.join("closed-form-predictor"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(runs.len(), 3, "{runs:?}");
    for run in runs {
        let config = std::fs::read_to_string(run.join("config.json")).unwrap();
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(config["seed"], 5, "{}", run.display());
        assert_eq!(config["run"]["threads"], 1, "{}", run.display());
    }
}

/// A study's finished runs are reused only by a rerun of the same configuration: another
/// `--epochs` into the same folder is refused, naming the field, instead of reusing results.
#[test]
fn a_study_rerun_should_reuse_only_runs_of_its_own_configuration() {
    let out = dir("ablate-rerun");
    let study = |epochs: &str| {
        host(&[
            "ablate",
            "closed-form-predictor",
            "--epochs",
            epochs,
            "--train-size",
            "64",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let first = study("1");
    assert_succeeded(&first);
    let again = study("1");
    assert_succeeded(&again);
    assert_eq!(
        first.stdout, again.stdout,
        "the same table, from the finished runs"
    );
    let other = study("2");
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success());
    assert!(
        err.contains("a finished run of another configuration (optim.epochs: 1 → 2)"),
        "{err}"
    );
}

/// `--stop-after-epochs 0` leaves the untrained checkpoint, and `eval knn --data-batchnorm` on
/// it reads what the run read at initialisation, both ways.
#[test]
fn eval_knn_should_read_the_untrained_checkpoint_as_the_run_did() {
    let run = dir("untrained");
    let run_s = run.to_str().unwrap();
    assert_succeeded(&train(&["--out", run_s, "--stop-after-epochs", "0"]));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    let pct = |k: &str| format!("{:.2}%", 100.0 * first[k].as_f64().unwrap());
    let e = host(&["eval", "knn", run_s, "--data-batchnorm"]);
    assert_succeeded(&e);
    let text = String::from_utf8_lossy(&e.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[2].starts_with("  recorded in "), "{text}");
    assert!(
        lines[0].contains(&pct("knn_top1")),
        "{text} against {first}"
    );
    assert!(
        lines[1].contains(&format!(
            "with the data's BatchNorm statistics: {}",
            pct("knn_top1_data_bn")
        )),
        "{text} against {first}"
    );
}

/// An evaluation's figure outlives the terminal: each `eval` appends one record, with what it
/// printed, the checkpoint's step and the device, to `evaluations.jsonl` beside the
/// checkpoint. A resumed run keeps the records (their steps are its own); a new run into the
/// folder removes them with the run it replaces. A folder the record cannot be written to gets
/// a warning, and the evaluation still succeeds.
#[test]
fn each_evaluation_should_be_recorded_beside_the_checkpoint() {
    let run = dir("recorded");
    let run_s = run.to_str().unwrap();
    assert_succeeded(&train(&["--out", run_s, "--stop-after-epochs", "1"]));
    let file = run.join("evaluations.jsonl");
    let records = || -> Vec<serde_json::Value> {
        let text = String::from_utf8(read(&file)).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let pct = |r: &serde_json::Value, k: &str| format!("{:.2}%", 100.0 * r[k].as_f64().unwrap());
    // After the first epoch (four steps), read on the run folder.
    let knn = host(&["eval", "knn", run_s, "--data-batchnorm"]);
    assert_succeeded(&knn);
    let r = records();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (&r[0]["kind"], &r[0]["step"], &r[0]["device"], &r[0]["k"]),
        (&"knn".into(), &4.into(), &"cpu".into(), &200.into()),
        "one epoch of four steps: {r:?}"
    );
    let knn_text = String::from_utf8_lossy(&knn.stdout);
    assert!(
        knn_text.contains(&format!(
            "kNN top-1 (k = 200, T = 0.1): {} on 32 held-out images",
            pct(&r[0], "knn_top1")
        )) && knn_text.contains(&format!(
            "BatchNorm statistics: {}",
            pct(&r[0], "knn_top1_data_bn")
        )) && knn_text.contains(&format!("recorded in {}", file.display())),
        "{knn_text} against {}",
        r[0]
    );
    // The run's own record of that epoch read the same kNN.
    let metrics = String::from_utf8(read(&run.join("metrics.jsonl"))).unwrap();
    let epoch_1 = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|m| m["kind"] == "epoch" && m["epoch"] == 1)
        .unwrap();
    assert_eq!(epoch_1["knn_top1"], r[0]["knn_top1"]);
    // Resumed to its end, then read on the checkpoint file: a second record, of step 8.
    assert_succeeded(&host(&["train", "--resume", run_s]));
    let checkpoint = run.join("checkpoint.safetensors");
    let linear = host(&[
        "eval",
        "linear",
        checkpoint.to_str().unwrap(),
        "--epochs",
        "1",
    ]);
    assert_succeeded(&linear);
    let r2 = records();
    assert_eq!((r2.len(), &r2[0]), (2, &r[0]), "{r2:?}");
    assert_eq!(
        (
            &r2[1]["kind"],
            &r2[1]["step"],
            &r2[1]["epochs"],
            &r2[1]["held_out"]
        ),
        (&"linear".into(), &8.into(), &1.into(), &32.into()),
        "{r2:?}"
    );
    let linear_text = String::from_utf8_lossy(&linear.stdout);
    assert!(
        linear_text.contains(&format!(
            "linear evaluation: {} top-1 on 32 held-out images (lr {} chosen",
            pct(&r2[1], "linear_top1"),
            r2[1]["lr"]
        )),
        "{linear_text} against {}",
        r2[1]
    );
    // A third evaluation, with the vote's own settings, appends and keeps the two before it.
    let k20 = host(&[
        "eval",
        "knn",
        run_s,
        "--knn-k",
        "20",
        "--knn-temperature",
        "0.07",
    ]);
    assert_succeeded(&k20);
    let r3 = records();
    assert_eq!((r3.len(), &r3[..2]), (3, &r2[..]));
    assert_eq!(
        (&r3[2]["step"], &r3[2]["k"], &r3[2]["temperature"]),
        (&8.into(), &20.into(), &0.07.into())
    );
    assert!(r3[2].get("knn_top1_data_bn").is_none(), "{}", r3[2]);
    assert!(String::from_utf8_lossy(&k20.stdout).contains(&format!(
        "kNN top-1 (k = 20, T = 0.07): {}",
        pct(&r3[2], "knn_top1")
    )));
    // A vote that cannot be taken is refused, naming its flag, and records nothing.
    for (flags, expected) in [
        (["--knn-k", "0"], "error: --knn-k: "),
        (["--knn-temperature", "-1"], "error: --knn-temperature: "),
    ] {
        let bad = host(&[&["eval", "knn", run_s][..], &flags].concat());
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(!bad.status.success() && err.starts_with(expected), "{err}");
    }
    assert_eq!(records().len(), 3);
    // A new run into the folder replaces the run, and its evaluations with it.
    let again = train(&["--out", run_s, "--stop-after-epochs", "0"]);
    assert_succeeded(&again);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("its config, metrics and evaluations now")
    );
    assert!(!file.exists(), "the replaced run's evaluations are left");
    // Where the record cannot be written (here a folder is in its way), a warning says so.
    std::fs::create_dir(&file).unwrap();
    let blocked = host(&["eval", "knn", run_s]);
    assert_succeeded(&blocked);
    let warning = String::from_utf8_lossy(&blocked.stderr);
    assert!(
        warning.starts_with("warning: the result was not recorded: ")
            && warning.contains("evaluations.jsonl"),
        "{warning}"
    );
    assert!(String::from_utf8_lossy(&blocked.stdout).contains("kNN top-1"));
}

/// `host` run from the working folder `cwd`.
fn host_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_host"))
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("the host binary runs")
}

/// Writes a small MNIST-format data set (uncompressed IDX files) of `train` and `test`
/// 28×28 images in 10 classes; each class has its own stripe.
fn write_idx_digits(dir: &Path, train: usize, test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let idx = |magic: u32, dims: &[u32], data: &[u8]| {
        let mut f = magic.to_be_bytes().to_vec();
        dims.iter().for_each(|d| f.extend(d.to_be_bytes()));
        f.extend(data);
        f
    };
    for (split, n) in [("train", train), ("t10k", test)] {
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let images: Vec<u8> = (0..n * 784)
            .map(|p| {
                let (i, y, x) = (p / 784, p / 28 % 28, p % 28);
                let on = (y + x + 3 * (i % 10)) % 10 < 3 || (x * y + i) % 7 == 0;
                if on {
                    200
                } else {
                    20
                }
            })
            .collect();
        let n = n as u32;
        let file = |kind: &str| dir.join(format!("{split}-{kind}"));
        std::fs::write(file("images-idx3-ubyte"), idx(0x803, &[n, 28, 28], &images)).unwrap();
        std::fs::write(file("labels-idx1-ubyte"), idx(0x801, &[n], &labels)).unwrap();
    }
}

/// A run records its data folder as given. Read from another working folder (or after the
/// data moved), each command that reads the data says so before any work, and takes
/// `--data-dir` to read it from where it is now, with the same results.
#[test]
fn a_run_whose_data_is_elsewhere_should_say_so_and_take_data_dir() {
    let home = dir("moved-home");
    write_idx_digits(&home.join("digits"), 64, 32);
    let elsewhere = dir("moved-elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let data = home.join("digits");
    let data_s = data.to_str().unwrap();
    let (full, part) = (home.join("full"), home.join("part"));
    let (full_s, part_s) = (full.to_str().unwrap(), part.to_str().unwrap());
    let on_digits = ["--dataset", "mnist", "--data-dir", "digits"];
    let run = |extra: &[&str]| {
        // TINY less its sizes of the embedded set, which a file-backed set refuses.
        let args: Vec<&str> = ["train"]
            .iter()
            .chain(&TINY[4..])
            .chain(&on_digits)
            .chain(extra)
            .copied()
            .collect();
        host_in(&home, &args)
    };
    assert_succeeded(&run(&["--out", full_s]));
    assert_succeeded(&run(&["--out", part_s, "--stop-after-epochs", "1"]));

    for args in [
        &["eval", "knn", part_s][..],
        &["eval", "linear", part_s, "--epochs", "1"],
        &["train", "--resume", part_s],
        &["embed", part_s, "--out", "e.safetensors"],
    ] {
        let out = host_in(&elsewhere, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        let expected = format!(
            "error: data.data_dir (--data-dir): digits: no such folder (relative to {}); the run read its data set there: pass --data-dir with where it is now",
            elsewhere.canonicalize().unwrap().display()
        );
        assert_eq!(err.trim_end(), expected, "{args:?}");
    }

    let knn_home = host_in(&home, &["eval", "knn", part_s]);
    assert_succeeded(&knn_home);
    let knn_elsewhere = host_in(&elsewhere, &["eval", "knn", part_s, "--data-dir", data_s]);
    assert_succeeded(&knn_elsewhere);
    assert_eq!(knn_home.stdout, knn_elsewhere.stdout);
    let embed = [
        "embed",
        part_s,
        "--data-dir",
        data_s,
        "--out",
        "e.safetensors",
    ];
    assert_succeeded(&host_in(&elsewhere, &embed));

    // Resumed from elsewhere, the run finishes as the uninterrupted one did, bit for bit (the
    // checkpoints' tensors; their metadata records the data folders, which differ).
    let resumed = host_in(
        &elsewhere,
        &["train", "--resume", part_s, "--data-dir", data_s],
    );
    assert_succeeded(&resumed);
    let ckpt = "checkpoint.safetensors";
    let (a, b) = (read(&full.join(ckpt)), read(&part.join(ckpt)));
    let a = safetensors::SafeTensors::deserialize(&a).unwrap();
    let b = safetensors::SafeTensors::deserialize(&b).unwrap();
    let (mut names, mut b_names) = (a.names(), b.names());
    names.sort();
    b_names.sort();
    assert_eq!(names, b_names);
    assert!(names.len() > 10, "{names:?}");
    for name in names {
        let same = a.tensor(name).unwrap().data() == b.tensor(name).unwrap().data();
        assert!(same, "{name} differs");
    }
    assert_eq!(steps(&full), steps(&part));
    // It now records where the data set is, so later commands find it from anywhere.
    assert_succeeded(&host_in(&elsewhere, &["eval", "knn", part_s]));
}

/// `export-data --config RUN/config.json` writes the very images and labels the run trained
/// and evaluated on (here a stratified subset of each split), and a data flag still overrides
/// the file.
#[test]
fn export_data_should_write_the_images_a_run_trained_on() {
    let (run, out) = (dir("export-data-run"), dir("export-data-out"));
    let run_s = run.to_str().unwrap();
    let limits = ["--limit-train", "48", "--limit-test", "20"];
    let stop = ["--out", run_s, "--stop-after-epochs", "0"];
    assert_succeeded(&train(&[&limits[..], &stop[..]].concat()));
    let config = run.join("config.json");
    let cfg = host::config::read_config(&config).unwrap().train;
    let (train_set, test_set) = host::train::load_data(&cfg).unwrap();
    assert_eq!((train_set.len(), test_set.len()), (48, 20));

    std::fs::create_dir_all(&out).unwrap();
    let file = out.join("data.safetensors");
    let args = ["export-data", file.to_str().unwrap(), "--config"];
    assert_succeeded(&host(&[&args[..], &[config.to_str().unwrap()]].concat()));
    let bytes = read(&file);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let side = train_set.h;
    assert_eq!(
        st.tensor("train.images").unwrap().shape(),
        [48, side, side, 3]
    );
    assert!(st.tensor("train.images").unwrap().data() == &train_set.images[..]);
    assert!(st.tensor("test.images").unwrap().data() == &test_set.images[..]);
    assert_eq!(u16s(&st, "test.labels"), test_set.labels);

    let flag = [&args[..], &[config.to_str().unwrap(), "--limit-test", "10"]].concat();
    assert_succeeded(&host(&flag));
    let bytes = read(&file);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("test.labels").unwrap().shape(), [10]);
    assert_eq!(st.tensor("train.labels").unwrap().shape(), [48]);
}

#[test]
fn embed_should_write_what_the_knn_monitor_sees() {
    let (run, out) = (dir("embed-run"), dir("embed-out"));
    let run_s = run.to_str().unwrap();
    let done = train(&["--out", run_s, "--stop-after-epochs", "1"]);
    assert_succeeded(&done);
    let file = out.join("e.safetensors");
    let npy = out.join("npy");
    for target in [&file, &npy] {
        let args = [
            "embed",
            run_s,
            "--projections",
            "--out",
            target.to_str().unwrap(),
        ];
        let e = host(&args);
        assert_succeeded(&e);
    }

    // The monitor's view of the same checkpoint, through the library.
    let ckpt = host::config::checkpoint_path(&run);
    let cfg = host::config::saved_config(&ckpt).unwrap();
    let byol = host::byol::Byol::new(cfg.byol_config().unwrap()).unwrap();
    let (state, _) = host::checkpoint::load(&ckpt, &byol).unwrap();
    let (train_set, test_set) = host::train::load_data(&cfg).unwrap();
    let aug = host::train::augmenter(&train_set, &cfg).unwrap();
    let monitor = host::train::monitor(&byol, &state, &train_set, &test_set, &aug, &cfg).unwrap();

    let bytes = read(&file);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> Vec<f32> {
        let t = st.tensor(name).unwrap();
        t.data()
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let dim = byol.encoder.repr_dim();
    assert_eq!(
        st.tensor("train.representations").unwrap().shape(),
        [64, dim]
    );
    assert_eq!(st.tensor("test.projections").unwrap().shape(), [32, 32]);
    let (bank, queries) = (f32s("train.representations"), f32s("test.representations"));
    let (bank_labels, query_labels) = (u16s(&st, "train.labels"), u16s(&st, "test.labels"));
    assert_eq!(
        (bank_labels.as_slice(), query_labels.as_slice()),
        (&train_set.labels[..], &test_set.labels[..])
    );
    let knn = host::eval::knn_accuracy(
        &bank,
        &bank_labels,
        &queries,
        &query_labels,
        dim,
        train_set.classes,
        cfg.monitor.knn_k,
        cfg.monitor.knn_temperature as f32,
    );
    assert_eq!(
        knn, monitor.knn_top1,
        "the kNN of the written representations is the monitor's"
    );
    let all: Vec<usize> = (0..train_set.len()).collect();
    let direct = host::eval::embed(
        &byol.backend,
        &byol.encoder,
        &state.online,
        &state.online_running,
        &train_set,
        &all,
        &aug,
        256,
    )
    .unwrap();
    assert!(direct == bank, "bit for bit the monitor's representations");
    assert!(byol.projections(&state, &queries).unwrap() == f32s("test.projections"));

    // The .npy files hold the same bytes after their header.
    let npy_bytes = read(&npy.join("train_representations.npy"));
    let header = 10 + u16::from_le_bytes([npy_bytes[8], npy_bytes[9]]) as usize;
    assert!(npy_bytes[header..] == *st.tensor("train.representations").unwrap().data());
    for name in [
        "train_labels",
        "train_projections",
        "test_representations",
        "test_labels",
        "test_projections",
    ] {
        assert!(npy.join(format!("{name}.npy")).exists(), "{name}.npy");
    }
}

/// The repository's `configs/` folder.
fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

#[test]
fn recipe_files_should_be_exactly_the_recipes() {
    for name in host::recipe::RECIPES {
        let path = configs().join(format!("{name}.toml"));
        let file = host::config::read_config(&path).unwrap();
        let mut expected = host::config::TrainConfig::default();
        host::recipe::named(name).unwrap().apply(&mut expected);
        assert_eq!(file.train, expected, "{}", path.display());
    }
}

#[test]
fn every_config_file_should_be_valid() {
    let mut files = Vec::new();
    for dir in [configs(), configs().join("ablations")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 9, "{files:?}");
    for path in files {
        let file = host::config::read_config(&path).unwrap_or_else(|e| panic!("{e}"));
        file.train
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// `--device cuda` on a machine without a GPU (or a build without the feature) is one
/// sentence saying what is missing, before any work: in training, evaluation and studies.
#[test]
fn a_gpu_run_without_a_gpu_should_say_what_is_missing() {
    let dir = dir("gpu-missing");
    let out = dir.to_str().unwrap();
    let runs: [&[&str]; 3] = [
        &["train", "--device", "cuda", "--out", out],
        &["eval", "knn", out, "--device", "cuda"],
        &["ablate", "tau", "--out", out, "--device", "cuda:1"],
    ];
    for args in runs {
        let o = host(args);
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.starts_with("error: GPU unavailable: "),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("without the `cuda` feature") || err.contains("libcuda.so"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}

/// Without the `mpi` feature, `--distributed` says how to get it.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_distributed_run_without_mpi_should_say_how_to_build_it() {
    let o = train(&["--distributed"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--distributed needs MPI: build with"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

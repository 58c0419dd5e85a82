//! `mpirun -np N host train --distributed` as a user runs it (built with `--features mpi`,
//! Open MPI's `mpirun` on the PATH): 2 and 3 ranks against one process on the same global
//! batch, a checkpoint of 2 ranks resumed on 3, a rank killed mid-run, and input the ranks
//! cannot split. The in-process versions of the numerical checks are `tests/distributed.rs`.
#![cfg(feature = "mpi")]

#[path = "../../tests/common/scratch.rs"]
mod scratch;

use scratch::Scratch;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const HOST: &str = env!("CARGO_BIN_EXE_host");

fn dir(name: &str) -> Scratch {
    Scratch::new("mpi", name)
}

/// Two steps per epoch of a global batch of 24 (12 per rank on 2, 8 on 3), one thread per
/// rank; the epochs come separately.
const TINY: [&str; 16] = [
    "--train-size",
    "48",
    "--test-size",
    "24",
    "--width",
    "4",
    "--batch-size",
    "24",
    "--projector-hidden",
    "64",
    "--projection-dim",
    "16",
    "--predictor-hidden",
    "64",
    "--threads",
    "1",
];

fn mpirun(np: usize) -> Command {
    let mut c = Command::new("mpirun");
    // Root in CI containers, more ranks than the 2 cores of CI machines.
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        &np.to_string(),
        HOST,
    ]);
    c
}

fn output(mut c: Command) -> Output {
    c.output()
        .expect("mpirun runs (install Open MPI: openmpi-bin)")
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "step")
        .map(|r| r["loss"].as_f64().unwrap())
        .collect()
}

/// The record of the reading at initialisation.
fn first_reading(run: &Path) -> serde_json::Value {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["kind"] == "epoch" && r["epoch"] == 0)
        .expect("a fresh run records its reading at initialisation")
}

fn online(run: &Path) -> (Vec<f32>, Vec<f32>) {
    let ckpt = host::config::checkpoint_path(run);
    let cfg = host::config::saved_config(&ckpt).unwrap();
    let byol = host::byol::Byol::new(cfg.byol_config().unwrap()).unwrap();
    let (state, _) = host::checkpoint::load(&ckpt, &byol).unwrap();
    (state.online, state.online_running)
}

fn relative(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

/// The first epoch (two steps) on 2 and 3 ranks equals one process: per-step losses,
/// parameters and running statistics within the rounding `tests/distributed.rs` measures
/// and justifies (BatchNorm statistics in f64 over the ranks against f32 in one process;
/// measured here: 1e-7 in the losses, 1e-7 in the parameters and statistics). Two steps,
/// because a width-4 network under the `small` recipe is so badly conditioned from the third
/// step on that any rounding grows to 1e-3 (see there).
#[test]
fn two_and_three_ranks_should_train_as_one_process_on_the_same_global_batch() {
    let single = dir("single");
    let mut one = Command::new(HOST);
    one.args([
        "train",
        "--epochs",
        "2",
        "--stop-after-epochs",
        "1",
        "--out",
    ])
    .arg(&single)
    .args(TINY);
    let o = output(one);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (want_loss, (want_online, want_running)) = (losses(&single), online(&single));
    assert_eq!(want_loss.len(), 2);
    let want_data_bn = first_reading(&single)["knn_top1_data_bn"].as_f64().unwrap();
    for np in [2, 3] {
        let run = dir(&format!("ranks-{np}"));
        let mut c = mpirun(np);
        c.args([
            "train",
            "--distributed",
            "--epochs",
            "2",
            "--stop-after-epochs",
            "1",
            "--out",
        ])
        .arg(&run)
        .args(TINY);
        let o = output(c);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{np} ranks: {err}");
        assert!(err.contains(&format!("data-parallel: {np} ranks")), "{err}");
        let got = losses(&run);
        assert_eq!(
            got.len(),
            2,
            "{np} ranks: one record per step, from rank 0 only"
        );
        for (s, (g, w)) in got.iter().zip(&want_loss).enumerate() {
            assert!(
                (g - w).abs() < 1e-5 * w.abs(),
                "{np} ranks, step {s}: loss {g} vs {w}"
            );
        }
        // The random encoder with the data's BatchNorm statistics: every rank takes its part
        // of the same global batches, so cross-replica BatchNorm sees one process's batches
        // (within the rounding above: one of the 24 held-out images at most).
        let data_bn = first_reading(&run)["knn_top1_data_bn"].as_f64().unwrap();
        assert!(
            (data_bn - want_data_bn).abs() <= 1.0 / 24.0 + 1e-9,
            "{np} ranks: kNN with the data's BatchNorm statistics {data_bn} vs {want_data_bn}"
        );
        let (params, running) = online(&run);
        let (dp, dr) = (
            relative(&params, &want_online),
            relative(&running, &want_running),
        );
        eprintln!("{np} ranks: parameters {dp:.1e}, running statistics {dr:.1e} from one process");
        assert!(
            dp < 1e-5 && dr < 1e-5,
            "{np} ranks: parameters {dp:.1e}, statistics {dr:.1e}"
        );
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["run"]["ranks"], np);
    }
}

/// A checkpoint written by 2 ranks continues on 3 (the same global batch), and the finished
/// run's checkpoint loads.
#[test]
fn a_two_rank_checkpoint_should_resume_on_three_ranks() {
    let run = dir("resume");
    let mut c = mpirun(2);
    c.args([
        "train",
        "--distributed",
        "--epochs",
        "2",
        "--stop-after-epochs",
        "1",
        "--out",
    ])
    .arg(&run)
    .args(TINY);
    let o = output(c);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut c = mpirun(3);
    c.args(["train", "--distributed", "--threads", "1", "--resume"])
        .arg(&run);
    let o = output(c);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(losses(&run).len(), 4, "each of the two epochs' steps once");
    let o = Command::new(HOST)
        .args(["eval", "knn"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// One rank killed in the middle of a run ends the others with an error, in bounded time;
/// the last checkpoint is whole and loads.
#[test]
fn a_killed_rank_should_end_the_run_with_an_error_and_leave_the_checkpoint_whole() {
    let run = dir("killed");
    let mut c = mpirun(2);
    c.args(["train", "--distributed", "--out"])
        .arg(&run)
        .args(TINY)
        .args(["--epochs", "500"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("mpirun runs");
    let ckpt = run.join("checkpoint.safetensors");
    let start = Instant::now();
    while !ckpt.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint after 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The ranks are mpirun's children: kill the last one.
    let ranks = Command::new("pgrep")
        .args(["-P", &child.id().to_string()])
        .output()
        .expect("pgrep runs");
    let pids: Vec<String> = String::from_utf8_lossy(&ranks.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(!pids.is_empty(), "no rank processes under mpirun");
    let killed = Command::new("kill")
        .args(["-9", pids.last().unwrap()])
        .status()
        .unwrap();
    assert!(killed.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the other rank still runs after 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "a run with a killed rank must fail");
    let o = Command::new(HOST)
        .args(["eval", "knn"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A global batch the ranks cannot split equally is one clear sentence, and every rank ends.
#[test]
fn a_batch_that_does_not_split_should_be_a_clear_error() {
    let run = dir("split");
    let mut c = mpirun(5);
    c.args(["train", "--distributed", "--out"])
        .arg(&run)
        .args(TINY);
    let o = output(c);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("optim.batch_size 24 must split into 5 equal parts"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// Ranks started with different configurations stop at once with one sentence, before any
/// training.
#[test]
fn ranks_with_different_configurations_should_refuse_to_start() {
    let run = dir("mismatch");
    let out = run.to_str().unwrap();
    let rank = |lr: &'static str| {
        let mut args = vec![
            "-np",
            "1",
            HOST,
            "train",
            "--distributed",
            "--out",
            out,
            "--base-lr",
            lr,
        ];
        args.extend(TINY);
        args
    };
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe"])
        .args(rank("0.5"))
        .arg(":")
        .args(rank("0.7"));
    let o = output(c);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("disagree on the configuration"), "{err}");
    assert!(!run.join("checkpoint.safetensors").exists());
}

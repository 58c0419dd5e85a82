//! What the benches share: arguments, the thread pool, timing, peak memory, and running the
//! PyTorch baseline of the same configuration in the same run.
#![allow(dead_code)]

use std::time::Instant;

/// The value after `name` on the command line, or `default`.
pub fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.into())
}

/// Whether `flag` is on the command line.
pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// Sets up the global thread pool from `BYOL_BENCH_THREADS` (default 2, the CI machine's
/// cores) and returns its size.
pub fn threads() -> usize {
    let threads = std::env::var("BYOL_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("one global pool");
    threads
}

/// Median seconds of `iters` timed runs after `warmup` untimed ones.
pub fn median_secs(warmup: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[iters / 2]
}

/// This process's peak resident memory (VmHWM), MiB.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok());
    kib.map_or(f64::NAN, |k| k / 1024.0)
}

/// Runs `scripts/torch/<script>` with `args` (when `python3` has torch), prints its line and
/// the ratio of our `images_per_s` and `peak_rss_mib` to its.
pub fn torch_baseline(script: &str, args: &[String], images_per_s: f64, rss_mib: f64) {
    // `BYOL_TORCH_SCRIPTS` when the bench binary runs away from its source tree (the GPU bundle).
    let dir = std::env::var("BYOL_TORCH_SCRIPTS")
        .unwrap_or_else(|_| format!("{}/scripts/torch", env!("CARGO_MANIFEST_DIR")));
    let path = format!("{dir}/{script}");
    match std::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
    {
        Ok(o) if o.status.success() => {
            let line = String::from_utf8_lossy(&o.stdout).trim().to_string();
            println!("{line}");
            let field = |k: &str| -> Option<f64> {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix(k)?.parse().ok())
            };
            match (field("images_per_s="), field("peak_rss_mib=")) {
                (Some(ips), Some(rss)) if rss_mib.is_finite() => println!(
                    "ratio rust/torch: throughput {:.2}x, peak memory {:.2}x",
                    images_per_s / ips,
                    rss_mib / rss
                ),
                (Some(ips), _) => {
                    println!("ratio rust/torch: throughput {:.2}x", images_per_s / ips)
                }
                _ => {}
            }
        }
        _ => println!("torch baseline skipped: python3 with torch and torchvision not found"),
    }
}

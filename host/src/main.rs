//! `host`: the BYOL command line. Only what works is offered; later milestones add the rest.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "host",
    version,
    about = "BYOL (Bootstrap Your Own Latent) self-supervised training in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// [planned, not yet implemented] Train a ResNet encoder with BYOL.
    Train,
    /// [planned, not yet implemented] Evaluate a checkpoint (kNN monitor or linear evaluation).
    Eval,
    /// [planned, not yet implemented] Write the online encoder of a checkpoint for PyTorch.
    Export,
    /// [planned, not yet implemented] Run one of the paper's ablation studies.
    Ablate,
    /// Check the GPU path: open GPU 0, load the kernels, report the device (needs `--features cuda`).
    GpuInfo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let planned = |what: &str| {
        eprintln!("`{what}` is planned but not implemented yet: this build has the kernels and their backends only.");
        ExitCode::from(2)
    };
    match cli.command {
        Command::Train => planned("train"),
        Command::Eval => planned("eval"),
        Command::Export => planned("export"),
        Command::Ablate => planned("ablate"),
        Command::GpuInfo => gpu_info(),
    }
}

#[cfg(feature = "cuda")]
fn gpu_info() -> ExitCode {
    match host::Cuda::new(0).and_then(|g| g.device_name()) {
        Ok(name) => {
            println!(
                "GPU 0: {name}; {} kernels loaded from the embedded PTX",
                host::ptx::KERNEL_NAMES.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn gpu_info() -> ExitCode {
    eprintln!(
        "error: this binary was built without the `cuda` feature; rebuild with `--features cuda`"
    );
    ExitCode::FAILURE
}

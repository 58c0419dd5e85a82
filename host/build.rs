//! Makes the PTX available to the host: it records a stamp of the kernel sources the PTX must
//! have been built from (`KERNEL_SOURCE_STAMP`), so the host can tell whether the committed
//! `kernels/ptx/byol_kernels.ptx` is current without needing nightly Rust to rebuild it.

use std::path::Path;

/// Inputs of the PTX build: a change to any of them needs `scripts/build-ptx.sh`.
const PTX_INPUTS: &[&str] = &["kernels/Cargo.toml", "kernels/src", "scripts/build-ptx.sh"];

/// 64-bit FNV-1a: a fingerprint to notice edits, not a defence against tampering.
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn collect(root: &Path, rel: &str, files: &mut Vec<String>) {
    let path = root.join(rel);
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", path.display()))
            .map(|e| {
                e.expect("directory entry")
                    .file_name()
                    .into_string()
                    .expect("UTF-8 file name")
            })
            .collect();
        entries.sort();
        for name in entries {
            collect(root, &format!("{rel}/{name}"), files);
        }
    } else {
        files.push(rel.to_string());
    }
}

fn main() {
    // Read at run time, not with `env!`: cargo reuses a compiled build script for a checkout at
    // another path that shares the target folder (a `git worktree` with the same
    // CARGO_TARGET_DIR), and a path compiled in would point at the other checkout, or at nothing
    // once it is removed.
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest_dir).parent().expect("workspace root");
    let mut files = Vec::new();
    for input in PTX_INPUTS {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
        collect(root, input, &mut files);
    }
    let mut hash = 0xcbf2_9ce4_8422_2325;
    for rel in &files {
        let path = root.join(rel);
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        hash = fnv1a(fnv1a(hash, rel.as_bytes()), &bytes);
    }
    let stamp = format!("{hash:016x}");
    println!("cargo:rustc-env=KERNEL_SOURCE_STAMP={stamp}");
    println!(
        "cargo:rerun-if-changed={}",
        root.join("kernels/ptx").display()
    );
    let committed =
        std::fs::read_to_string(root.join("kernels/ptx/SOURCE_STAMP")).unwrap_or_default();
    if committed.trim() != stamp {
        println!("cargo:warning=kernels/ptx/byol_kernels.ptx was built from other kernel sources: run scripts/build-ptx.sh");
    }
}

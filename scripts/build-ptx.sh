#!/usr/bin/env bash
# Rebuilds the PTX of the kernels crate with rustc's NVPTX backend (docs/DESIGN.md §3) and writes
# it to kernels/ptx/byol_kernels.ptx plus the source stamp the host checks.
# Needs: the nightly toolchain with rust-src. Usage: scripts/build-ptx.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-kernels/ptx}
# A target dir of its own: the nvptx build must not invalidate the host's build cache.
target=target/ptx-build
cargo +nightly rustc -p kernels --profile ptx -Zbuild-std=core \
  --target nvptx64-nvidia-cuda --target-dir "$target" --crate-type cdylib -q \
  -- --emit=asm -C linker=true -C target-cpu=sm_80
mkdir -p "$out"
cp "$target/nvptx64-nvidia-cuda/ptx/deps/kernels.s" "$out/byol_kernels.ptx"
cargo run -q -p host --bin source-stamp > "$out/SOURCE_STAMP"
echo "wrote $out/byol_kernels.ptx ($(wc -l < "$out/byol_kernels.ptx") lines), stamp $(cat "$out/SOURCE_STAMP")"

#!/usr/bin/env bash
# Checks the committed PTX (kernels/ptx/byol_kernels.ptx):
#  1. freshness: rebuilds it from the current kernel sources with nightly Rust and fails on any
#     difference (skipped, with the reason printed, where nightly or rust-src is missing; the
#     stable test `embedded_ptx_is_built_from_the_current_kernel_sources` still compares stamps);
#  2. it assembles with ptxas for sm_80 and sm_90 (ptxas from PyPI's nvidia-cuda-nvcc).
# Usage: scripts/check-ptx.sh
set -euo pipefail
cd "$(dirname "$0")/.."
committed=kernels/ptx/byol_kernels.ptx

if rustc +nightly --version >/dev/null 2>&1 \
  && [ -d "$(rustc +nightly --print sysroot)/lib/rustlib/src/rust/library/core" ]; then
  fresh=$(mktemp -d)
  scripts/build-ptx.sh "$fresh" >/dev/null
  if ! cmp -s "$fresh/byol_kernels.ptx" "$committed" || ! cmp -s "$fresh/SOURCE_STAMP" kernels/ptx/SOURCE_STAMP; then
    diff -u "$committed" "$fresh/byol_kernels.ptx" | head -40 || true
    echo "FAIL: $committed differs from a rebuild of the current kernel sources: run scripts/build-ptx.sh and commit" >&2
    exit 1
  fi
  echo "ok: $committed is identical to a fresh nightly build of the kernel sources"
else
  echo "SKIPPED freshness rebuild: nightly Rust with rust-src is not installed (rustup toolchain install nightly --component rust-src)"
fi

ptxas=${PTXAS:-$(command -v ptxas || python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "bin", "ptxas"))' 2>/dev/null || true)}
if [ -z "$ptxas" ] || [ ! -x "$ptxas" ]; then
  echo "FAIL: ptxas not found: pip install nvidia-cuda-nvcc (or set PTXAS)" >&2
  exit 1
fi
for arch in sm_80 sm_90; do
  "$ptxas" -arch=$arch "$committed" -o /dev/null
  echo "ok: ptxas -arch=$arch assembles $committed"
done

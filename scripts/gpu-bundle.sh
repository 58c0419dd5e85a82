#!/usr/bin/env bash
# Builds, here, everything a GPU machine needs to check the CUDA path (docs/DESIGN.md §3: it has the
# NVIDIA driver and CUDA 13 but no Rust and no network): release test and bench binaries with
# the `cuda` feature (the PTX is embedded in them) and a run.sh that runs them all as one
# command and prints a short report. Output: gpu-bundle/ (about 20 MB).
# Usage: scripts/gpu-bundle.sh, then on the GPU machine: bash gpu-bundle/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=gpu-bundle
rm -rf "$out" && mkdir -p "$out"
executables() { # cargo's JSON messages → "name path" of test executables ($1 = bench: bench targets only)
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    want_bench = sys.argv[1:] == ["bench"]
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"] \
            and want_bench == ("bench" in m["target"]["kind"]):
        kind = "-".join(m["target"]["kind"])
        print(m["target"]["name"] + ("" if kind in ("test", "bench") else "-" + kind), m["executable"])' "$@"

}
cargo test --release --features cuda --no-run --message-format=json -q 2>/dev/null | executables |
  while read -r name exe; do strip -o "$out/test-$name" "$exe"; done
cargo bench --features cuda --no-run --message-format=json -q 2>/dev/null | executables bench |
  while read -r name exe; do strip -o "$out/bench-$name" "$exe"; done
cp kernels/ptx/byol_kernels.ptx "$out/"
cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs every test (GPU ones included) and the benches; prints a short report.
cd "$(dirname "$0")"
# cuBLAS of CUDA 13 may live in a Python wheel (nvidia-cublas) rather than on the loader's path.
for d in $(python3 -c 'import nvidia, os; r = nvidia.__path__[0]; print(" ".join(os.path.join(r, s, "lib") for s in ("cu13", "cublas")))' 2>/dev/null) /usr/local/cuda/lib64; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
# The PyTorch fixtures of tests/resnet.rs, when the bundle sits in a copy of the repository.
[ -d ../tests/fixtures ] && export BYOL_FIXTURES="$(cd ../tests/fixtures && pwd)"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi not found"
status=0
for t in ./test-*; do
  echo "== $t"
  if ! "$t" --include-ignored --test-threads=1 2>&1 | tail -n 25; then status=1; fi
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
done
for b in ./bench-*; do
  echo "== $b"
  "$b" --bench || status=1
done
echo "== overall: $([ $status = 0 ] && echo PASS || echo FAIL)"
exit $status
RUN
chmod +x "$out/run.sh"
du -sh "$out"; ls "$out"

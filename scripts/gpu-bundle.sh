#!/usr/bin/env bash
# Builds, here, everything a GPU machine needs to check the CUDA path (it has the NVIDIA driver,
# Python with torch and the nvidia-* wheels, but no Rust and no network): release test and
# bench binaries and the host binary with the `cuda` feature (the PTX is embedded in them), the
# PyTorch baselines, and a run.sh that runs, as one command: `host gpu-info`, the GPU tests, a
# short `host train --device cuda` on the embedded set, and the benches beside PyTorch on the
# same GPU; and parallel.sh, which runs many `host train` runs at once on the GPU (a study's
# seeds). Output: gpu-bundle/ (about 55 MB). On an H200 run.sh takes about 2.5 minutes.
# Usage: scripts/gpu-bundle.sh, then on the GPU machine: bash gpu-bundle/run.sh
# (to keep its report: bash gpu-bundle/run.sh 2>&1 | tee report.log; `run.sh --no-bench` skips
# the benches, about a minute, when a lease is wanted for something else)
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
cargo build --release -q -p host --features cuda
strip -o "$out/host" target/release/host
cp kernels/ptx/byol_kernels.ptx "$out/"
cp -r scripts/torch "$out/torch"
cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the GPU tests, a short training run and the benches (not with --no-bench); prints a short report.
cd "$(dirname "$0")"
benches=(./bench-kernels ./bench-gpu)
[ "${1:-}" = --no-bench ] && benches=()
# cuBLAS of CUDA 13 may live in a Python wheel (nvidia-cublas) rather than on the loader's path.
for d in $(python3 -c 'import nvidia, os; r = nvidia.__path__[0]; print(" ".join(os.path.join(r, s, "lib") for s in ("cu13", "cublas")))' 2>/dev/null) /usr/local/cuda/lib64; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
# cuDNN 9 (nvidia-cudnn-cu13 or -cu12) and NVRTC, likewise; `host gpu-info` shows what was found.
for d in $(python3 -c 'import nvidia, os; r = nvidia.__path__[0]; print(" ".join(os.path.join(r, s, "lib") for s in os.listdir(r)))' 2>/dev/null); do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
# The PyTorch fixtures of tests/resnet.rs and tests/kernels.rs, when the bundle sits in a copy of the repository.
[ -d ../tests/fixtures ] && export BYOL_FIXTURES="$(cd ../tests/fixtures && pwd)"
export BYOL_TORCH_SCRIPTS="$PWD/torch"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi not found"
echo "== host gpu-info"
./host gpu-info || { echo "== overall: FAIL (no usable GPU)"; exit 1; }
status=0
# The GPU tests only (`--ignored`: they are the ones marked "needs an NVIDIA GPU"); the CPU tests
# are CI's, and `--include-ignored` runs both. Each binary gets two minutes, so one hang cannot
# take the machine's whole lease.
for t in ./test-*; do
  echo "== $t"
  timeout 120 "$t" --ignored --test-threads=1 > test.log 2>&1
  rc=$?
  if [ $rc = 0 ]; then grep -E '^test result' test.log; else status=1; echo "(exit $rc)"; tail -n 80 test.log; fi
done
echo "== host train --device cuda (embedded set, the default recipe, at most 2.5 minutes)"
rm -rf run-gpu
start=$SECONDS
timeout 150 ./host train --device cuda --out run-gpu 2>&1 | grep -v '^epoch [0-9]*/[0-9]* \[' | tail -n 18
echo "(train: $((SECONDS - start)) s, exit ${PIPESTATUS[0]})"
python3 - <<'PY' || status=1
import json
rows = [json.loads(l) for l in open("run-gpu/metrics.jsonl")]
knn = [100 * r["knn_top1"] for r in rows if r.get("kind") in ("init", "epoch") and "knn_top1" in r]
print("kNN top-1 by epoch (%):", ", ".join(f"{k:.1f}" for k in knn))
assert len(knn) >= 3 and knn[-1] > knn[0] + 5, "the GPU run's kNN did not rise by 5 points"
PY
for b in "${benches[@]}"; do
  echo "== $b"
  timeout 240 "$b" --bench || { rc=$?; status=1; echo "(exit $rc)"; }
done
echo "== overall: $([ $status = 0 ] && echo PASS || echo FAIL)"
exit $status
RUN
cat > "$out/parallel.sh" <<'PAR'
#!/usr/bin/env bash
# Many `host train` runs at once on one GPU (seeds of a study): each line of standard input is
# a run's name and then its flags, and the run writes RUNS/NAME. Under MPS, started here where
# nvidia-cuda-mps-control exists, the runs' kernels share the GPU: on an H200, twelve runs of
# 40 epochs (Fashion-MNIST, batch 128) took 177 s together and twelve of 60 epochs 282 s, while
# without MPS sixteen runs (those twelve of 40 and four of 60 epochs) took turns on the GPU and
# reached epoch 21 in 433 s. Runs still going after SECONDS are stopped; their metrics so far
# are kept. RUNS.tgz then holds every run's metrics and log.
# usage: bash parallel.sh RUNS PARALLEL SECONDS < jobs   (paths relative to where it is called)
# (a job: `seed0 --device cuda --augment-on gpu --dataset mnist --data-dir DIR --seed 0`)
host=$(cd "$(dirname "$0")" && pwd)/host
runs=$(mkdir -p "$1" && cd "$1" && pwd)
end=$(( $(date +%s) + $3 ))
export host runs end
if command -v nvidia-cuda-mps-control > /dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/byol-mps CUDA_MPS_LOG_DIRECTORY=/tmp/byol-mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY" && nvidia-cuda-mps-control -d && mps=1
fi
xargs -P "$2" -L 1 bash -c 'left=$(( end - $(date +%s) ))
  [ $left -lt 10 ] && { echo "$0: not started"; exit 0; }
  mkdir -p "$runs/$0"
  timeout $left "$host" train --out "$runs/$0" "$@" > "$runs/$0/log" 2>&1
  echo "$0: exit $?"'
[ -n "${mps:-}" ] && echo quit | nvidia-cuda-mps-control
tar czf "$runs.tgz" -C "$runs" --exclude='*.safetensors' --exclude='*.png' .
PAR
chmod +x "$out/run.sh" "$out/parallel.sh"
du -sh "$out"; ls "$out"

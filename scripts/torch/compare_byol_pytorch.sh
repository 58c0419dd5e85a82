#!/usr/bin/env bash
# Ours beside byol-pytorch on one data set: same images, encoder, batch, epochs, seed, threads
# and kNN protocol.
#
#   scripts/torch/compare_byol_pytorch.sh OUT [host train flags: --dataset mnist --data-dir DIR …]
#
# 1. `host train` (release build, the given flags) writes OUT/ours/;
# 2. `host export-data --config OUT/ours/config.json` writes the very pixels and splits that
#    run trained and was scored on (however its data was given: flags, --config, --limit-*);
# 3. `host export` writes our trained online encoder under torchvision's names;
# 4. byol_pytorch_reference.py trains byol-pytorch with its defaults for the run's epochs,
#    batch, width, seed and threads, scores both encoders with the same kNN, and writes
#    OUT/reference.json;
# 5. the last lines compare the two: kNN at initialisation (BatchNorm's placeholder statistics
#    and the data's), trained, the gains over each, ours against byol-pytorch at equal epochs
#    and at equal training time, and the pixels' own kNN for scale. OUT/comparison.txt keeps them.
#    The figures are read by summarise_comparisons.py's `read_comparison`, which also reads
#    them for compare_seeds.sh's table over seeds.
# With SHARED_INIT=1, byol-pytorch's encoder starts from our run's untrained encoder (`host train
# --stop-after-epochs 0` with the same flags, exported to OUT/ours-init-encoder.safetensors)
# instead of torch's draw, so that the two differ in the recipe and not in the luck of the
# initial weights; its projector, predictor and augmentations are drawn as without it.
# REFERENCE_ARGS adds flags to byol_pytorch_reference.py (e.g. "--simplicial-embeddings off
# --augment per-image"); they are recorded in reference.json.
# Needs torch, torchvision, safetensors and byol-pytorch in python3 (see that script).
set -euo pipefail
case ${1:-} in
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0;;
  ''|-*) echo "usage: $0 OUT [host train flags] (--help says more)" >&2; exit 2;;
esac
out=$1; shift
root="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
# Before ten minutes of training, not after: the reference's Python modules are all there.
python3 - <<'EOF' || exit 1
import importlib, sys
missing = []
for module in ("torch", "torchvision", "safetensors.torch", "byol_pytorch"):
    try:  # imported, not just found: byol_pytorch is found without its own einops
        importlib.import_module(module)
    except ImportError as e:
        missing.append(f"{module} ({e})")
if missing:
    sys.exit(f"error: python3 cannot import {'; '.join(missing)}; the reference needs torch, "
             "torchvision, safetensors and byol-pytorch (e.g. pip install safetensors "
             "byol-pytorch==0.9.1)")
EOF
cargo build --release -q -p host --manifest-path "$root/Cargo.toml"
host="$root/target/release/host"
# The untrained run (seconds) before the trained one (minutes), so that flags it refuses fail
# first.
init=()
if [ "${SHARED_INIT:-0}" = 1 ]; then
  "$host" train --out "$out/ours-init" --stop-after-epochs 0 "$@" > "$out/ours-init.log" 2>&1 ||
    { echo "error: the untrained run failed; see $out/ours-init.log" >&2; exit 1; }
  "$host" export "$out/ours-init/checkpoint.safetensors" "$out/ours-init-encoder.safetensors"
  init=(--init-encoder "$out/ours-init-encoder.safetensors")
fi
"$host" train --out "$out/ours" "$@" 2>&1 | grep --line-buffered -v '^epoch [0-9]*/[0-9]* \[' | tee "$out/ours.log"
"$host" export-data "$out/data.safetensors" --config "$out/ours/config.json"
"$host" export "$out/ours/checkpoint.safetensors" "$out/ours-encoder.safetensors"
field() { python3 -c "import json; c = json.load(open('$out/ours/config.json')); print($1)"; }
cd "$root/scripts/torch"
python3 byol_pytorch_reference.py --data "$out/data.safetensors" \
  --epochs "$(field "c['optim']['epochs']")" --batch "$(field "c['optim']['batch_size']")" \
  --width "$(field "c['model']['width']")" --seed "$(field "c['seed']")" \
  --threads "$(field "c['run']['threads']")" \
  --ours "$out/ours-encoder.safetensors" ${init[@]+"${init[@]}"} ${REFERENCE_ARGS:-} \
  > "$out/reference.json"
python3 - "$out" <<'EOF' | tee "$out/comparison.txt"
import sys
from summarise_comparisons import BadComparison, read_comparison
try:
    run = read_comparison(sys.argv[1])
except BadComparison as e:
    sys.exit(f"error: {e}")
epochs, ref = run["ours_epochs"], run["reference"]
theirs = ref["byol_pytorch"]
pct = lambda v: f"{100 * v:5.1f}"
gain = lambda a, b: f"{100 * (a - b):+5.1f}"
rows = [("ours", *run["ours"]), ("byol-pytorch", *run["theirs"])]
print(f"kNN top-1 (%) after {len(theirs)} epochs; initialisation read with BatchNorm's "
      "placeholder statistics / the data's")
if run["theirs_start"] == "ours":
    print("byol-pytorch started from our untrained encoder (SHARED_INIT=1)")
print(f"{'':14} {'init':>13}  {'trained':>7}  {'gain over each':>14}")
for name, init, init_bn, trained in rows:
    print(f"{name:14} {pct(init)} / {pct(init_bn)}  {pct(trained):>7}  "
          f"{gain(trained, init)} / {gain(trained, init_bn)}")
print(f"ours − byol-pytorch at equal epochs: {gain(rows[0][3], rows[1][3]).strip()}")
# Equal training time: our last epoch finished within byol-pytorch's whole training time.
budget, elapsed, reached = theirs[-1]["train_seconds"], 0.0, None
for e in epochs[1:]:
    elapsed += e["seconds"]
    if elapsed <= budget:
        reached = e
if reached:
    print(f"ours at byol-pytorch's {budget:.0f} s of training: epoch {reached['epoch']}, "
          f"{pct(reached['knn_top1']).strip()}")
else:
    print(f"ours finished no epoch within byol-pytorch's {budget:.0f} s of training")
print(f"for scale, kNN on the pixels: {pct(ref['pixels_knn_top1']).strip()}")
EOF

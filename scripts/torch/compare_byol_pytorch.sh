#!/usr/bin/env bash
# Ours beside byol-pytorch on one data set, same encoder, batch, epochs and kNN protocol.
#
#   scripts/torch/compare_byol_pytorch.sh OUT [host train flags: --dataset mnist --data-dir DIR …]
#
# 1. `host export-data` writes the data set's exact pixels and splits to OUT/data.safetensors;
# 2. `host train` (release build, the given flags, 10 epochs unless told) writes OUT/ours/;
# 3. `host export` writes our trained online encoder under torchvision's names;
# 4. byol_pytorch_reference.py trains byol-pytorch with its defaults for the same epochs and
#    batch, scores both encoders with the same kNN, and writes OUT/reference.json.
# Needs torch, torchvision, safetensors and byol-pytorch in python3 (see that script).
set -euo pipefail
out=$1; shift
root="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cargo build --release -q -p host --manifest-path "$root/Cargo.toml"
host="$root/target/release/host"
# The data flags go to export-data too; other flags only to train.
data=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --dataset|--data-dir|--image-size|--train-size|--test-size|--seed)
      data+=("${args[$i]}" "${args[$((i + 1))]}"); i=$((i + 1));;
  esac
done
"$host" export-data "$out/data.safetensors" "${data[@]}"
start=$(date +%s)
"$host" train --out "$out/ours" "$@" 2>&1 | grep --line-buffered -v '^epoch [0-9]*/[0-9]* \[' | tee "$out/ours.log"
echo "ours: $(( $(date +%s) - start )) s wall" | tee -a "$out/ours.log"
"$host" export "$out/ours/checkpoint.safetensors" "$out/ours-encoder.safetensors"
epochs=$(python3 -c "import json; print(json.load(open('$out/ours/config.json'))['optim']['epochs'])")
batch=$(python3 -c "import json; print(json.load(open('$out/ours/config.json'))['optim']['batch_size'])")
width=$(python3 -c "import json; print(json.load(open('$out/ours/config.json'))['model']['width'])")
cd "$root/scripts/torch"
python3 byol_pytorch_reference.py --data "$out/data.safetensors" --epochs "$epochs" --batch "$batch" \
  --width "$width" --ours "$out/ours-encoder.safetensors" > "$out/reference.json"
cat "$out/reference.json"

#!/usr/bin/env bash
# Data-parallel throughput on this machine: the default run's first epoch as 1 rank × 2
# threads and as 2 ranks × 1 thread (mpirun), the same global batch; prints the step
# throughput of each (median over the epoch's steps, the first three left out), the ratio,
# and the bytes each rank adds into the others' per step.
# Needs Open MPI (apt install libopenmpi-dev openmpi-bin libclang-dev).
# Usage: scripts/bench-distributed.sh [extra `host train` flags]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p host --features mpi
host=target/release/host
out=$(mktemp -d)
median() { python3 -c 'import json, sys, statistics
ips = [json.loads(l)["images_per_s"] for l in open(sys.argv[1]) if "\"step\"" in l][3:]
print(f"{statistics.median(ips):.1f}")' "$1"; }
$host train --stop-after-epochs 1 --threads 2 --out "$out/one" "$@" 2>"$out/one.log" >/dev/null
mpirun --allow-run-as-root --oversubscribe -np 2 $host train --distributed --threads 1 \
  --stop-after-epochs 1 --out "$out/two" "$@" 2>"$out/two.log" >/dev/null
one=$(median "$out/one/metrics.jsonl"); two=$(median "$out/two/metrics.jsonl")
echo "1 rank  x 2 threads: $one images/s"
echo "2 ranks x 1 thread : $two images/s"
python3 -c "print(f'ratio 2 ranks / 1 rank: {$two / $one:.2f}x')"
grep "per step into" "$out/two.log" | sed 's/^ *//'
rm -rf "$out"

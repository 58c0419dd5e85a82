#!/usr/bin/env bash
# compare_byol_pytorch.sh over several seeds, then one table with means and standard errors.
#
#   scripts/torch/compare_seeds.sh OUT SEEDS [host train flags, without --seed and --out]
#   e.g. scripts/torch/compare_seeds.sh runs/fashion 0-6 --dataset mnist --data-dir DIR --epochs 10
#
# SEEDS is a range (0-6) or a comma list (0,2,5). Seed S's comparison goes to OUT/seed-S; a
# seed whose OUT/seed-S/comparison.txt already exists is not run again, so an interrupted sweep
# resumes and a sweep can be extended. JOBS seeds run at a time (default 1; give each its
# share of the cores with --threads). Then summarise_comparisons.py prints the table over every
# seed of SEEDS and keeps it in OUT/summary.txt.
set -euo pipefail
case ${1:-} in
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0;;
esac
if [ $# -lt 2 ] || [[ $1 == -* ]]; then
  echo "usage: $0 OUT SEEDS [host train flags] (--help says more)" >&2
  exit 2
fi
out=$1 seeds=$2; shift 2
for flag in "$@"; do
  case $flag in
    --seed|--seed=*|--out|--out=*)
      echo "error: $flag: compare_seeds.sh gives each run its own --seed and --out" >&2
      exit 2;;
  esac
done
if [[ $seeds =~ ^([0-9]+)-([0-9]+)$ ]]; then
  list=$(seq "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}")
elif [[ $seeds =~ ^[0-9]+(,[0-9]+)*$ ]]; then
  list=${seeds//,/ }
else
  echo "error: SEEDS '$seeds': expected a range like 0-6 or a list like 0,2,5" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$out"
jobs=${JOBS:-1} running=0 folders=()
declare -A seed_of
# Waits for one seed's comparison; a failed one stops the sweep and names its log.
reap() {
  local pid
  if ! wait -n -p pid; then
    echo "error: seed ${seed_of[$pid]}'s comparison failed; see $out/seed-${seed_of[$pid]}.log" >&2
    wait || true
    exit 1
  fi
  running=$((running - 1))
}
for seed in $list; do
  folders+=("$out/seed-$seed")
  [ -f "$out/seed-$seed/comparison.txt" ] && continue
  echo "seed $seed → $out/seed-$seed (log: $out/seed-$seed.log)"
  "$here/compare_byol_pytorch.sh" "$out/seed-$seed" "$@" --seed "$seed" > "$out/seed-$seed.log" 2>&1 &
  seed_of[$!]=$seed
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then reap; fi
done
while [ "$running" -gt 0 ]; do reap; done
python3 "$here/summarise_comparisons.py" "${folders[@]}" | tee "$out/summary.txt"

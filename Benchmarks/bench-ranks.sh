#!/usr/bin/env bash
# Data-parallel training on one machine: 1 process × 2 threads against 2 MPI ranks × 1 thread (ZeRO 0
# and 1) on the same global batch, rounds alternated; then a larger --config under --budget on 2 ranks
# per ZeRO stage. Per run: step seconds (median of the steps after the first), each rank's peak memory,
# bytes a rank sent per step, and `plan --ranks`'s prediction from a profile with measured collectives.
#   Benchmarks/bench-ranks.sh [--repeat 2] [--steps 4] [--large smollm2-360m] [--large-budget 8GB] [--no-large]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
REPEAT=2; STEPS=4; LARGE=smollm2-360m; LARGE_BUDGET=8GB; DO_LARGE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) REPEAT=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --large) LARGE=$2; shift 2 ;;
    --large-budget) LARGE_BUDGET=$2; shift 2 ;;
    --no-large) DO_LARGE=0; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$OFFLOAD" ] || (cd "$REPO" && swift build -c release --product offload >&2)
[ -f "$MODEL" ] || "$REPO/scripts/fetch-assets.sh" >&2
command -v mpirun >/dev/null || { echo "mpirun not found: install openmpi-bin" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
MPI=(mpirun --oversubscribe -np 2)

echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
"$OFFLOAD" profile --quick --out "$WORK/hw.json" > /dev/null 2>&1
"${MPI[@]}" "$OFFLOAD" profile --collectives --out "$WORK/hw.json" | head -1

# Median step seconds after the first, max rank peak (GiB), bytes sent per step (MiB), last loss.
summary() {
  python3 - "$1" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])]
secs = statistics.median(r["seconds"] for r in rows[1:]) if len(rows) > 1 else rows[0]["seconds"]
peak = max(rows[-1].get("rank_peak_bytes", [0])) / 2**30
sent = rows[-1].get("communicated_bytes", 0) / 2**20
print(f"{secs:.3f} {peak:.2f} {sent:.1f} {rows[-1]['loss']:.6f}")
PY
}
predict() {  # plan's step and per-rank peak for: batch ranks zero [model args...] (ranks 1: one process)
  local b=$1 r=$2 z=$3; shift 3
  local ranks=(); [ "$r" -gt 1 ] && ranks=(--ranks "$r" --zero "$z" --ranks-per-machine "$r")
  "$OFFLOAD" plan "$@" --mode train --batch "$b" --seq-len 256 "${ranks[@]}" --hardware "$WORK/hw.json" --json | python3 -c '
import json, sys
j = json.load(sys.stdin); r = j.get("ranks")
if r:
    print("%.3f %.2f" % (r.get("stepSeconds", 0), r.get("peakPerRank", 0) / 2**30))
else:
    c = [s for s in j["strategies"] if s["name"] == j["chosen"]][0]
    print("%.3f %.2f" % (c["stepSeconds"], c.get("budgetedPeakBytes", 0) / 2**30))' 2>/dev/null || echo "- -"
}

echo "run | step s (median) | plan s | peak/rank GiB | plan peak | sent/step MiB | last loss"
COMMON=(train --model "$MODEL" --data "$DATA" --seq-len 256 --steps "$STEPS" --lr 1e-4)
for round in $(seq 1 "$REPEAT"); do
  # Peak resident of the one process: the children's maxrss as the kernel counts it.
  pk=$(python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
print("%.2f" % (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20))' \
    "$OFFLOAD" "${COMMON[@]}" --batch 4 --threads 2 --log "$WORK/one.jsonl")
  read -r s _ sent loss < <(summary "$WORK/one.jsonl")
  read -r ps pp < <(predict 4 1 0 --model "$MODEL")
  echo "1 process × 2 threads, batch 4 | $s | $ps | $pk | $pp | 0 | $loss"
  for z in 0 1; do
    "${MPI[@]}" "$OFFLOAD" "${COMMON[@]}" --batch 2 --threads 1 --zero $z --log "$WORK/two$z.jsonl" > /dev/null 2>&1
    read -r s pk sent loss < <(summary "$WORK/two$z.jsonl")
    read -r ps pp < <(predict 2 2 $z --model "$MODEL")
    echo "2 ranks × 1 thread, batch 2 each, ZeRO $z | $s | $ps | $pk | $pp | $sent | $loss"
  done
done

if [ "$DO_LARGE" = 1 ]; then
  echo "--config $LARGE, batch 1 × 256 per rank, --budget $LARGE_BUDGET, 2 ranks × 1 thread"
  for z in 0 1; do
    "${MPI[@]}" "$OFFLOAD" train --config "$LARGE" --data "$DATA" --seq-len 256 --steps 3 --batch 1 --threads 1 \
      --budget "$LARGE_BUDGET" --zero $z --log "$WORK/large$z.jsonl" > "$WORK/large$z.out" 2>&1 || { tail -5 "$WORK/large$z.out"; continue; }
    read -r s pk sent loss < <(summary "$WORK/large$z.jsonl")
    read -r ps pp < <(predict 1 2 $z --config "$LARGE" --budget "$LARGE_BUDGET")
    echo "$LARGE ZeRO $z | $s | $ps | $pk | $pp | $sent | $loss"
  done
fi

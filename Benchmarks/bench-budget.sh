#!/usr/bin/env bash
# Training under a RAM budget, side by side in one run: `offload train` on SmolLM2-135M
# (AdamW, fp32) unconstrained and with each --budget given, same data, batch, seq-len and
# threads. Prints per run: the plan chosen, median step time over steps after the first,
# measured vs predicted step time, measured peak compute bytes, peak resident memory (VmHWM)
# and bytes read/written per step. A budget the executor cannot run prints its error.
#
# usage: Benchmarks/bench-budget.sh [--steps N] [--batch B] [--seq-len T] [--threads K] [--disk DIR] BUDGET...
#   e.g. Benchmarks/bench-budget.sh --batch 4 --seq-len 256 2.6GiB 2.4GiB 256MB 128MB
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
STEPS=4 BATCH=4 SEQ=256 THREADS=2 DISK=/tmp BUDGETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) STEPS=$2; shift 2 ;; --batch) BATCH=$2; shift 2 ;; --seq-len) SEQ=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;; --disk) DISK=$2; shift 2 ;;
    -*) echo "[bench-budget] unknown argument '$1'" >&2; exit 1 ;;
    *) BUDGETS+=("$1"); shift ;;
  esac
done
[ -x "$OFFLOAD" ] || { echo "[bench-budget] no $OFFLOAD: swift build -c release --product offload" >&2; exit 1; }
[ -f "$MODEL" ] || { echo "[bench-budget] no $MODEL: scripts/fetch-assets.sh" >&2; exit 1; }
OUT="$REPO/Benchmarks/.work/budget-$(date +%Y%m%d-%H%M%S)"; mkdir -p "$OUT"
echo "[bench-budget] SmolLM2-135M B=$BATCH T=$SEQ steps=$STEPS threads=$THREADS disk=$DISK, load $(cut -d' ' -f1-3 /proc/loadavg); output in $OUT" >&2
printf "%-12s %-10s %10s %10s %8s %12s %12s %12s %12s\n" budget plan "step (s)" "pred (s)" "meas/pred" "peak" "VmHWM" "read/step" "written/step"
for b in none "${BUDGETS[@]}"; do
  args=(train --model "$MODEL" --data "$DATA" --batch "$BATCH" --seq-len "$SEQ" --steps "$STEPS" --threads "$THREADS" --log "$OUT/$b.jsonl")
  [ "$b" = none ] || args+=(--budget "$b" --disk "$DISK")
  if ! /usr/bin/time -f "VmHWM_KB %M" "$OFFLOAD" "${args[@]}" > "$OUT/$b.out" 2> "$OUT/$b.err"; then
    printf "%-12s %s\n" "$b" "$(grep -m1 'error' "$OUT/$b.err" | cut -c1-200)"; continue
  fi
  python3 - "$b" "$OUT/$b.jsonl" "$OUT/$b.out" "$OUT/$b.err" <<'PY'
import json, re, statistics, sys
b, log, out, err = sys.argv[1:]
steps = [json.loads(l) for l in open(log)]
med = statistics.median(s["seconds"] for s in steps[1:]) if len(steps) > 1 else steps[0]["seconds"]
e = open(err).read()
hwm = int(re.search(r"VmHWM_KB (\d+)", e).group(1)) * 1024
m = re.search(r"plan: ([^\s,]+)", e); plan = m.group(1) if m else "in-memory"
m = re.search(r"predicted step ([\d.]+) s", e); pred = float(m.group(1)) if m else float("nan")
last = [l for l in open(out) if l.startswith("step ")][-1]
peak = re.search(r"peak ([\d.]+ \S+)", last); rw = re.search(r"disk r/w (\S+ \S+)/(\S+ \S+)", last)
def gib(x): return f"{x / 2**30:.2f} GiB"
print(f"{b:<12} {plan:<10} {med:>10.2f} {pred:>10.2f} {med / pred if pred == pred else float('nan'):>9.2f} "
      f"{peak.group(1) if peak else '-':>12} {gib(hwm):>12} {rw.group(1) if rw else '-':>12} {rw.group(2) if rw else '-':>12}")
PY
done

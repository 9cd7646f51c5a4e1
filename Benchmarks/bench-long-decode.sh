#!/usr/bin/env bash
# Decode at a long context under a budget: tokens/s of `offload generate` after a ~6,000-token
# document, against the limit of reading its streamed weights and its KV heads on disk (the
# run's own `limit_decode_tokens_per_second`: bytes per token ÷ the direct-read rate measured at
# start), with the plan's predicted time per token beside it, and the same decode without a budget.
# The document's prefill is loaded from a prompt cache made once, so each run is mostly decode.
# --hardware FILE (from `offload profile`) predicts with this machine's measured rates.
#   usage: Benchmarks/bench-long-decode.sh [--model GGUF] [--chars N] [--budget 32MB] [--tokens N] [--runs N]
#          [--hardware FILE]
set -euo pipefail
source "$(dirname "$0")/common.sh"
long_document_setup "$@"
TOKENS=32; RUNS=3; HW=()
set -- "${REST[@]+"${REST[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --tokens) TOKENS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --hardware) HW=(--hardware "$2"); shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
run() {  # $1: output, rest: extra flags
  local out=$1; shift
  "$OFFLOAD" generate --model "$MODEL" --prompt "$(cat "$WORK/doc.txt")" --max-tokens "$TOKENS" --temperature 0 \
    --ignore-eos --threads "$THREADS" --json --prompt-cache "$WORK/pc" "$@" 2>/dev/null > "$out"
}
run "$WORK/fill.json"   # the document's blocks into the prompt cache
for i in $(seq "$RUNS"); do
  run "$WORK/plain-$i.json"
  run "$WORK/budget-$i.json" --budget "$BUDGET" --disk "$WORK" "${HW[@]+"${HW[@]}"}"
done
python3 - "$WORK" "$RUNS" "$BUDGET" <<'PY'
import json, statistics, sys
work, runs, budget = sys.argv[1], int(sys.argv[2]), sys.argv[3]
plain = [json.load(open(f"{work}/plain-{i}.json")) for i in range(1, runs + 1)]
budg = [json.load(open(f"{work}/budget-{i}.json")) for i in range(1, runs + 1)]
assert all(b["tokens"] == plain[0]["tokens"] for b in plain + budg), "tokens differ between runs"
s = budg[0]["streaming"]
print(f"context {plain[0]['prompt_tokens']} tokens ({plain[0]['cached_prompt_tokens']} loaded), {len(plain[0]['tokens'])} decoded; "
      f"--budget {budget}: {s['kv_disk_heads']} KV heads on disk, {s['resident_stages']} stages resident, "
      f"{s['bytes_read_per_token'] / 2**20:.1f} MiB moved per token ({s['kv_bytes_read_per_token'] / 2**20:.1f} MiB of KV)")
def stats(xs): return f"min {min(xs):.3f} median {statistics.median(xs):.3f}"
print("no budget decode tok/s:       ", stats([p["decode_tokens_per_second"] for p in plain]))
print("budget decode tok/s:          ", stats([b["decode_tokens_per_second"] for b in budg]))
print("budget limit tok/s (run's):   ", stats([b["streaming"]["limit_decode_tokens_per_second"] for b in budg]))
print("ratio to the limit:           ", stats([b["streaming"]["ratio_to_limit"] for b in budg]))
print("predicted / measured s/token: ", stats([b["streaming"]["predicted_seconds_per_token"] * b["decode_tokens_per_second"] for b in budg]))
print("same tokens with and without the budget")
PY

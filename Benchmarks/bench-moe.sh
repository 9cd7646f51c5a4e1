#!/usr/bin/env bash
# Expert offloading: `offload generate --budget` on a Mixtral-shaped mixture of experts with random
# weights (Benchmarks/make-moe-model.py; numpy and gguf from PyPI in a venv of the cache), all
# experts resident vs pools of decreasing size, LRU vs LFU, read-ahead on and off. Each budgeted run
# is alternated with a direct-I/O dd of the same file (4 MiB requests, queue depth 1: how an expert's
# matrices are read) and prints its tokens/s, hit rate, expert bytes read per token, and the ratio of
# the rate it read experts at (bytes over prefill + decode seconds) to dd's: 1.0 is the disk limit
# for its miss rate. Random weights route like random inputs, so hit rates are those of uniform
# routing: this measures the mechanism, not a policy's gain on real routing.
#   usage: Benchmarks/bench-moe.sh [--budgets "1GB 500MB 200MB"] [--tokens 24] [--threads 2] [--repeat 2]
#          env: MOE_SHAPE (make-moe-model.py flags; default its 1.5 GB Q8_0 shape)
set -euo pipefail
source "$(dirname "$0")/common.sh"   # REPO, CACHE, OFFLOAD
cd "$REPO"
BUDGETS="1GB 500MB 200MB"; TOKENS=24; THREADS=2; REPEAT=2
while [ $# -gt 0 ]; do
  case "$1" in
    --budgets) BUDGETS=$2; shift 2 ;;
    --tokens) TOKENS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$OFFLOAD" ] || swift build -c release --product offload >&2
VENV="$CACHE/bench-moe-venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "numpy==2.4.6" "gguf==0.19.0" >&2
fi
MODEL="$CACHE/models/moe-bench.gguf"
if [ ! -f "$MODEL" ]; then
  echo "[bench-moe] writing $MODEL" >&2
  "$VENV/bin/python" Benchmarks/make-moe-model.py "$MODEL.tmp" ${MOE_SHAPE:-}
  mv "$MODEL.tmp" "$MODEL"
fi
"$OFFLOAD" inspect "$MODEL" --seq-len 64 | sed -n '1,8p'

dd_rate() {   # bytes/s of direct 4 MiB reads from the middle of the model file
  dd if="$MODEL" of=/dev/null bs=4M iflag=direct count=100 skip=64 2>&1 | tail -1 |
    awk '{ for (i = 1; i <= NF; i++) if ($i == "s,") print $1 / $(i-1) }'
}
run() {   # extra flags -> one JSON line
  "$OFFLOAD" generate --model "$MODEL" --prompt-tokens 16 --seed 1 --max-tokens "$TOKENS" --temperature 0 \
    --ignore-eos --json --threads "$THREADS" "$@" 2>/dev/null
}
echo "date $(date -u +%F) host $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
want=$(run | python3 -c 'import json,sys; o=json.load(sys.stdin); print(o["tokens"]); print("resident: %.2f tok/s decode" % o["decode_tokens_per_second"], file=sys.stderr)')
printf "%-8s %-6s %-9s %6s %7s %8s %9s %10s %7s\n" budget policy read-ahead tok/s hit% prec% MB/token ddMB/s ratio
for rep in $(seq "$REPEAT"); do
  for b in $BUDGETS; do
    for flags in "lru" "lru 0" "lfu"; do
      set -- $flags
      extra=(--budget "$b" --expert-policy "$1"); [ $# -gt 1 ] && extra+=(--expert-prefetch "$2")
      dd=$(dd_rate)
      run "${extra[@]}" | WANT="$want" DD="$dd" B="$b" P="$1" A="${2:-k}" python3 -c '
import json, os, sys
o = json.load(sys.stdin); e = o["experts"]
assert str(o["tokens"]) == os.environ["WANT"], "tokens differ from the resident run"
secs = o["prefill_seconds"] + o["decode_seconds"]; dd = float(os.environ["DD"])
per_token = e["bytes_read"] / (len(o["tokens"]) + 1)
print("%-8s %-6s %-9s %6.2f %6.1f%% %7.1f%% %9.1f %10.0f %7.2f" % (os.environ["B"], os.environ["P"], os.environ["A"],
      o["decode_tokens_per_second"], 100 * e["hit_rate"], 100 * e["prefetch_precision"], per_token / 1e6, dd / 1e6,
      e["bytes_read"] / secs / dd))'
    done
  done
done

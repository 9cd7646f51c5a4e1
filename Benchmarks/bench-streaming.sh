#!/usr/bin/env bash
# Inference beyond memory (issue 6), side by side in one run, alternated per round:
#   single prompt  offload without a budget (resident), offload --budget SMALL (two stream
#                  buffers, nearly every stage streamed with O_DIRECT), llama.cpp's mmap path
#                  with the model's pages evicted from the page cache before each run
#                  (llama-bench --no-warmup);
#   many prompts   offload --prompts under one budget: the cost model's block size vs
#                  --block-size 1 (one sequence at a time), same budget.
# Prints decode tok/s, the physical limit max(compute, bytes / measured direct-read bandwidth)
# and the ratio to it, min / median / max over rounds. Not a correctness test.
#
# usage: Benchmarks/bench-streaming.sh [--repeat R] [--threads N] [--gen-tokens G]
#            [--budget BYTES] [--prompts N] [--batch-budget BYTES] [--batch-gen G] [--model PATH]
# env: OFFLOAD_CACHE (default ~/.cache/offload), OFFLOAD_BIN (default .build/release/offload)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${OFFLOAD_CACHE:-$HOME/.cache/offload}"
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_BENCH="$CACHE/llama.cpp-build/bin/llama-bench"
OFFLOAD="${OFFLOAD_BIN:-$REPO/.build/release/offload}"
REPEAT=3 THREADS=2 GEN=64 BUDGET=10MB PROMPTS=64 BATCH_BUDGET=28MB BATCH_GEN=16

say() { echo "[bench-streaming] $*" >&2; }
die() { say "$*"; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) REPEAT="${2:?}"; shift 2 ;;
    --threads) THREADS="${2:?}"; shift 2 ;;
    --gen-tokens) GEN="${2:?}"; shift 2 ;;
    --budget) BUDGET="${2:?}"; shift 2 ;;
    --prompts) PROMPTS="${2:?}"; shift 2 ;;
    --batch-budget) BATCH_BUDGET="${2:?}"; shift 2 ;;
    --batch-gen) BATCH_GEN="${2:?}"; shift 2 ;;
    --model) MODEL="${2:?}"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ -f "$MODEL" ] || die "model $MODEL not found: run scripts/fetch-assets.sh"
[ -x "$OFFLOAD" ] || die "offload not found at $OFFLOAD: run 'swift build -c release --product offload'"
command -v python3 >/dev/null || die "python3 is needed"

OUT="$REPO/Benchmarks/.work/streaming-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
# Evict only the model file's pages (POSIX_FADV_DONTNEED): the other users of this machine keep theirs.
evict() { python3 -c "import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)" "$MODEL"; }
# 64 short prompts, as JSON lines.
python3 - "$PROMPTS" >"$OUT/prompts.jsonl" <<'EOF'
import json, sys
subjects = ["The tide", "A small robot", "The old library", "My grandmother", "The river", "A quiet town",
            "The first snow", "An engineer", "The market", "A lighthouse keeper", "The violin", "A map"]
for i in range(int(sys.argv[1])):
    print(json.dumps({"prompt": f"{subjects[i % len(subjects)]} number {i} was"}))
EOF
say "model $(basename "$MODEL"), $THREADS threads, $GEN decode tokens, budget $BUDGET; $PROMPTS prompts x $BATCH_GEN tokens under $BATCH_BUDGET"
say "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores; raw output in $OUT"
for r in $(seq 1 "$REPEAT"); do
  say "round $r/$REPEAT"
  "$OFFLOAD" generate --model "$MODEL" --prompt-tokens 1 --max-tokens "$((GEN + 1))" --temperature 0 --ignore-eos \
      --threads "$THREADS" --json >"$OUT/resident-$r.json" 2>"$OUT/resident-$r.err" || die "see $OUT/resident-$r.err"
  evict
  "$OFFLOAD" generate --model "$MODEL" --prompt-tokens 1 --max-tokens "$((GEN + 1))" --temperature 0 --ignore-eos \
      --threads "$THREADS" --budget "$BUDGET" --json >"$OUT/streamed-$r.json" 2>"$OUT/streamed-$r.err" \
    || die "see $OUT/streamed-$r.err"
  if [ -x "$LLAMA_BENCH" ]; then
    evict
    "$LLAMA_BENCH" -m "$MODEL" -t "$THREADS" -p 0 -n "$GEN" -r 1 --no-warmup -lm mmap -o json \
        >"$OUT/llama-$r.json" 2>"$OUT/llama-$r.err" || die "see $OUT/llama-$r.err"
  fi
  evict
  "$OFFLOAD" generate --model "$MODEL" --prompts "$OUT/prompts.jsonl" --max-tokens "$BATCH_GEN" --temperature 0 \
      --ignore-eos --threads "$THREADS" --budget "$BATCH_BUDGET" --json >"$OUT/block-$r.jsonl" 2>"$OUT/block-$r.json" \
    || die "see $OUT/block-$r.json"
  evict
  "$OFFLOAD" generate --model "$MODEL" --prompts "$OUT/prompts.jsonl" --max-tokens "$BATCH_GEN" --temperature 0 \
      --ignore-eos --threads "$THREADS" --budget "$BATCH_BUDGET" --block-size 1 --json \
      >"$OUT/one-$r.jsonl" 2>"$OUT/one-$r.json" || die "see $OUT/one-$r.json"
  cmp -s "$OUT/block-$r.jsonl" "$OUT/one-$r.jsonl" || die "round $r: block and one-at-a-time outputs differ"
done
say "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$OUT" "$REPEAT" <<'EOF' | tee "$OUT/summary.txt"
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(name):
    rows = []
    for r in range(1, rounds + 1):
        p = os.path.join(out, name.format(r))
        if os.path.exists(p):
            rows.append(json.load(open(p)))
    return rows
def mmm(xs):
    xs = [x for x in xs if x is not None]
    if not xs: return "-"
    return f"{min(xs):.1f} / {statistics.median(xs):.1f} / {max(xs):.1f}"
def mmm2(xs):
    xs = [x for x in xs if x is not None]
    if not xs: return "-"
    return f"{min(xs):.2f} / {statistics.median(xs):.2f} / {max(xs):.2f}"
res, st, bl, one = load("resident-{}.json"), load("streamed-{}.json"), load("block-{}.json"), load("one-{}.json")
ll = [d for d in load("llama-{}.json")]
ll_tg = [next((x["avg_ts"] for x in d if x.get("n_gen", 0) > 0), None) for d in ll]
print("| run | decode tok/s min / median / max | limit tok/s (median) | ratio to limit min / median / max | MiB read per token |")
print("|---|---|---|---|---|")
print(f"| offload, no budget (resident) | {mmm([d['decode_tokens_per_second'] for d in res])} | - | - | 0 |")
print(f"| offload --budget, weights streamed | {mmm([d['decode_tokens_per_second'] for d in st])} | "
      f"{statistics.median([d['streaming']['limit_decode_tokens_per_second'] for d in st]):.1f} | "
      f"{mmm2([d['streaming']['ratio_to_limit'] for d in st])} | "
      f"{statistics.median([d['streaming']['bytes_read_per_token'] for d in st]) / 2**20:.1f} |")
if ll_tg:
    print(f"| llama.cpp, mmap, page cache evicted | {mmm(ll_tg)} | - | - | - |")
for name, rows in (("block schedule (cost model's B)", bl), ("one sequence at a time (B = 1)", one)):
    print(f"| {len(rows) and rows[0]['prompts']} prompts, {name}, B = {rows[0]['block_size'] if rows else '-'} | "
          f"{mmm([d['decode_tokens_per_second'] for d in rows])} | "
          f"{statistics.median([d['streaming']['limit_decode_tokens_per_second'] for d in rows]):.1f} | "
          f"{mmm2([d['streaming']['ratio_to_limit'] for d in rows])} | "
          f"{statistics.median([d['streaming']['bytes_read_per_token'] for d in rows]) / 2**20:.2f} |")
if bl and one:
    sp = [b["decode_tokens_per_second"] / o["decode_tokens_per_second"] for b, o in zip(bl, one)]
    print(f"\nblock schedule / one at a time, decode: {mmm2(sp)} (min / median / max over rounds)")
    bw = [d['streaming']['disk_read_bytes_per_second'] / 1e9 for d in st + bl + one]
    print(f"direct-read bandwidth measured at start of each run: {mmm2(bw)} GB/s")
EOF

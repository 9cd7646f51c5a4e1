#!/usr/bin/env bash
# Time to first token of `offload generate` on a long document, cold (prefilled) and warm (its blocks
# loaded from --prompt-cache), in one run, with and without a budget; prints the ratio and checks
# that the tokens are the same.
#   usage: Benchmarks/bench-prompt-cache.sh [--model GGUF] [--chars N] [--budget 32MB] [--threads N]
set -euo pipefail
source "$(dirname "$0")/common.sh"
long_document_setup "$@"
[ ${#REST[@]} -eq 0 ] || { echo "unknown option ${REST[0]}" >&2; exit 2; }
run() {  # $1: label, rest: extra flags
  local label=$1; shift
  "$OFFLOAD" generate --model "$MODEL" --prompt "$(cat "$WORK/doc.txt")" --max-tokens 4 --temperature 0 \
    --ignore-eos --threads "$THREADS" --json "$@" 2>/dev/null > "$WORK/$label.json"
}
for mode in plain budget; do
  extra=(); [ $mode = budget ] && extra=(--budget "$BUDGET" --disk "$WORK")
  rm -rf "$WORK/pc"
  run "$mode-cold" --prompt-cache "$WORK/pc" "${extra[@]}"
  run "$mode-warm" --prompt-cache "$WORK/pc" "${extra[@]}"
  python3 - "$WORK/$mode-cold.json" "$WORK/$mode-warm.json" "$mode" "$BUDGET" <<'PY'
import json, sys
cold, warm = (json.load(open(p)) for p in sys.argv[1:3])
assert cold["tokens"] == warm["tokens"], "warm tokens differ from cold"
label = "no budget" if sys.argv[3] == "plain" else "--budget " + sys.argv[4]
c, w = cold["time_to_first_token_seconds"], warm["time_to_first_token_seconds"]
print(f"{label}: prompt {cold['prompt_tokens']} tokens, {warm['cached_prompt_tokens']} loaded warm; "
      f"time to first token cold {c:.2f} s, warm {w:.2f} s: {c / w:.1f}x; same tokens")
PY
done

#!/usr/bin/env bash
# The main job: set up, fetch the model, build, and generate from SmolLM2-135M.
# Extra arguments go to `offload generate` (e.g. --prompt "..." --max-tokens 100).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch-assets.sh
swift build -c release --product offload >&2
CACHE="${OFFLOAD_CACHE:-$HOME/.cache/offload}"
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--prompt "The most important lesson of the sea is" --max-tokens 64 --temperature 0)
exec .build/release/offload generate --model "$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf" "${args[@]}"

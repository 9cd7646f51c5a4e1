#!/usr/bin/env bash
# The strategy tables of docs/PLANNING.md: `offload plan` for SmolLM2-135M and
# Llama-3-8B at several compute budgets (default CPU profile, offload to disk).
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product offload >/dev/null
BIN=.build/release/offload
run() { echo "### $*"; echo '```'; $BIN plan "$@" 2>&1 || true; echo '```'; echo; }
for b in 4GiB 1GiB 512MiB; do run --config smollm2-135m --batch 4 --seq-len 256 --budget $b --disk /tmp; done
for b in 128GiB 48GiB 16GiB; do run --config llama-3-8b --batch 1 --seq-len 2048 --budget $b --disk /tmp; done

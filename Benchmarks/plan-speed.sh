#!/usr/bin/env bash
# Planner speed: rotor (80 stages, 100-500 slots), pofo (80 stages, 10-50 slots)
# and `auto` for Llama-3-70B training. Prints the tables docs/PLANNING.md quotes.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product offload >/dev/null
BIN=.build/release/offload
$BIN plan --benchmark-solvers
echo
for args in "--budget 64GiB --host-budget 256GiB --disk /tmp" "--budget 24GiB --disk /tmp"; do
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  $BIN plan --config llama-3-70b --mode train --batch 1 --seq-len 4096 $args --json >/dev/null
  end=$(date +%s.%N)
  printf 'auto llama-3-70b train %s: %.2f s\n' "$args" "$(echo "$end - $start" | bc)"
done

#!/usr/bin/env bash
# Planner speed: rotor (80 stages, 100-500 slots), pofo (80 stages, 10-50 slots)
# and `auto` for Llama-3-70B training. Prints the tables docs/PLANNING.md quotes.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product offload >/dev/null
BIN=.build/release/offload
$BIN plan --benchmark-solvers
echo
# --host-budget only applies with an accelerator: a profile that says so (default CPU speeds).
ACC=$(mktemp --suffix=.json)
trap 'rm -f "$ACC"' EXIT
echo '{"name": "accelerator", "gemmFlops": 180e9, "memoryBandwidth": 10e9, "diskReadBandwidth": 0.84e9, "diskWriteBandwidth": 0.77e9, "hostLinkBandwidth": 10e9, "accelerator": true}' >"$ACC"
for args in "--budget 64GiB --disk /tmp" "--budget 32GiB --disk /tmp" "--budget 24GiB --disk /tmp" "--hardware $ACC --budget 64GiB --host-budget 256GiB --disk /tmp"; do
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  $BIN plan --config llama-3-70b --mode train --batch 1 --seq-len 4096 $args --json >/dev/null 2>&1 || true  # 24GiB does not fit: times the search for the smallest budget
  end=$(date +%s.%N)
  printf 'auto llama-3-70b train %s: %.2f s\n' "${args/$ACC/accelerator.json}" "$(echo "$end - $start" | bc)"
done

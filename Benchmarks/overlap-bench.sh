#!/usr/bin/env bash
# Overlap of compute and disk I/O: a layer loop of OpenBLAS GEMMs that streams
# weights in and activations out through the disk store, timed compute alone,
# I/O alone and overlapped (bytes per layer balanced so both sides take about
# as long). Prints every run and min/median of overlapped / max(alone).
#   usage: Benchmarks/overlap-bench.sh [DIR=/tmp] [REPEATS=5] [BLAS_THREADS=all]
# Target: ratio <= 1.10. Also writes the last overlapped run's trace to
# Benchmarks/.work/overlap-trace.json (open it in https://ui.perfetto.dev).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/tmp}
REPEATS=${2:-5}
THREADS=${3:-}
BIN=.build/release/offload
[ -x "$BIN" ] || swift build -c release --product offload >&2
mkdir -p Benchmarks/.work
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  machine: $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
"$BIN" profile --overlap-test --disk "$DIR" --repeats "$REPEATS" ${THREADS:+--blas-threads "$THREADS"} \
  --trace Benchmarks/.work/overlap-trace.json
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

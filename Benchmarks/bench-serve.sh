#!/usr/bin/env bash
# `offload serve` against llama.cpp's llama-server (built from the same pinned llama-cpp-python
# sdist: scripts/build-llama-cpp.sh llama-server), same model, same threads, loopback only:
# 1, 4, 16 and 64 concurrent streaming clients (Benchmarks/load_clients.py, bounded in requests
# and time), total generated tokens/s and p50/p99 time to first token, and the ratio.
# Then, under --budget, the batched server against one sequence at a time.
#   usage: Benchmarks/bench-serve.sh [--model GGUF] [--clients "1 4 16 64"] [--requests N]
#                                    [--max-tokens N] [--budget 32MB] [--threads N]
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${OFFLOAD_CACHE:-$HOME/.cache/offload}"
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
CLIENTS="1 4 16 64"; REQUESTS=2; MAXTOK=32; BUDGET=32MB; THREADS=2; CTX=256
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --requests) REQUESTS=$2; shift 2 ;;
    --max-tokens) MAXTOK=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
OFFLOAD=.build/release/offload
LLAMA="$CACHE/llama.cpp-build/bin/llama-server"
[ -x "$OFFLOAD" ] || swift build -c release --product offload >&2
[ -x "$LLAMA" ] || scripts/build-llama-cpp.sh llama-server
ID=$(basename "$MODEL" .gguf)
MAXC=$(for c in $CLIENTS; do echo "$c"; done | sort -n | tail -1)
LOG=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$LOG"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { # port
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$1/health" >/dev/null 2>&1 && return 0; sleep 0.2
  done
  echo "server on port $1 did not come up" >&2; return 1
}
load() { # port clients
  python3 Benchmarks/load_clients.py --url "http://127.0.0.1:$1" --model "$ID" --clients "$2" \
    --requests "$REQUESTS" --max-tokens "$MAXTOK" --time-limit 300
}
field() { python3 -c "import json,sys; v=json.loads(sys.argv[1])[sys.argv[2]]; print('-' if v is None else '%.3f' % v)" "$1" "$2"; }

echo "# $(date -u +%F) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $ID;" \
     "$THREADS threads, $REQUESTS requests per client, $MAXTOK tokens each"
printf "%-8s | %-28s | %-28s | %s\n" clients "offload tok/s (ttft p50/p99)" "llama-server tok/s (p50/p99)" "ratio"
for c in $CLIENTS; do
  P1=$(free_port)
  $OFFLOAD serve --model "$MODEL" --port "$P1" --threads "$THREADS" --max-concurrent "$MAXC" --context $CTX \
    2>"$LOG/offload.err" & O=$!
  wait_up "$P1"; A=$(load "$P1" "$c"); kill -INT $O; wait $O 2>/dev/null || true
  P2=$(free_port)
  "$LLAMA" -m "$MODEL" --host 127.0.0.1 --port "$P2" -t "$THREADS" -tb "$THREADS" -np "$MAXC" \
    -c $((MAXC * CTX)) -cb --log-disable >"$LOG/llama.out" 2>&1 & L=$!
  wait_up "$P2"; B=$(load "$P2" "$c"); kill $L; wait $L 2>/dev/null || true
  ta=$(field "$A" tokens_per_s); tb=$(field "$B" tokens_per_s)
  printf "%-8s | %8s (%s/%s) | %8s (%s/%s) | %.2f\n" "$c" "$ta" "$(field "$A" ttft_p50_s)" "$(field "$A" ttft_p99_s)" \
    "$tb" "$(field "$B" ttft_p50_s)" "$(field "$B" ttft_p99_s)" "$(python3 -c "print($ta/$tb)")"
done

echo "# under --budget $BUDGET: batched (as many sequences as fit) vs one sequence at a time, $MAXC clients"
printf "%-22s | %s\n" server "tok/s (ttft p50/p99)"
for mode in batched one; do
  P=$(free_port)
  extra=(); [ $mode = one ] && extra=(--max-concurrent 1)
  $OFFLOAD serve --model "$MODEL" --port "$P" --threads "$THREADS" --budget "$BUDGET" --context 64 \
    --max-queue 256 "${extra[@]}" 2>"$LOG/budget.err" & O=$!
  wait_up "$P"; R=$(load "$P" "$MAXC"); kill -INT $O; wait $O 2>/dev/null || true
  grep -o "budget.*" "$LOG/budget.err" | head -1 >&2
  printf "%-22s | %8s (%s/%s)\n" "$mode" "$(field "$R" tokens_per_s)" "$(field "$R" ttft_p50_s)" "$(field "$R" ttft_p99_s)"
  eval "R_$mode=\$(field \"\$R\" tokens_per_s)"
done
echo "batched / one at a time: $(python3 -c "print('%.2f' % ($R_batched/$R_one))")"

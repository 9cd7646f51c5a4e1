#!/usr/bin/env bash
# Training throughput side by side: PyTorch (transformers LlamaForCausalLM, fp32, AdamW, or with
# --method adamw8bit torchao's AdamW8bit, --method zo-sgd MeZO's zero-order loop, or --method lora peft's LoRA, rank 8 alpha 16 on every projection) and `offload train` (the same method), same GGUF (SmolLM2-135M, dequantized to fp32), same batch × seq-len, same
# thread count, alternated R times. Prints step time and tokens/s (median over steps after the
# first, which warms up), peak resident memory, and the offload/PyTorch ratios.
# Needs torch + transformers + gguf (+ peft for lora, torchao for adamw8bit) (pip; several GB, not part of the test set-up).
#
# usage: Benchmarks/bench-training.sh [--repeat R] [--steps N] [--batch B] [--seq-len T] [--threads K]
#                                     [--method adamw|adamw8bit|zo-sgd|lora]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
REPEAT=2 STEPS=4 BATCH=4 SEQ=256 THREADS=2 METHOD=adamw
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) REPEAT=$2; shift 2 ;; --steps) STEPS=$2; shift 2 ;; --batch) BATCH=$2; shift 2 ;;
    --seq-len) SEQ=$2; shift 2 ;; --threads) THREADS=$2; shift 2 ;; --method) METHOD=$2; shift 2 ;;
    *) echo "[bench-training] unknown argument '$1'" >&2; exit 1 ;;
  esac
done
[ -x "$OFFLOAD" ] || { echo "[bench-training] no $OFFLOAD: swift build -c release --product offload" >&2; exit 1; }
python3 -c "import torch, transformers, gguf" 2>/dev/null || {
  echo "[bench-training] needs torch, transformers and gguf: pip install torch transformers gguf" >&2; exit 1; }
case "$METHOD" in
  lora) METHOD_ARGS=(--lora-rank 8 --lora-alpha 16 --lora-targets q,k,v,o,gate,up,down) ;;
  adamw|adamw8bit|zo-sgd) METHOD_ARGS=(--optimizer "$METHOD") ;;
  *) echo "[bench-training] --method must be adamw, adamw8bit, zo-sgd or lora" >&2; exit 1 ;;
esac
OUT="$REPO/Benchmarks/.work/training-$(date +%Y%m%d-%H%M%S)"; mkdir -p "$OUT"
echo "[bench-training] $METHOD B=$BATCH T=$SEQ steps=$STEPS threads=$THREADS, load $(cut -d' ' -f1-3 /proc/loadavg); output in $OUT" >&2
for r in $(seq 1 "$REPEAT"); do
  echo "[bench-training] round $r: pytorch" >&2
  python3 "$REPO/Benchmarks/training-torch.py" --model "$MODEL" --data "$DATA" --batch "$BATCH" \
    --seq-len "$SEQ" --steps "$STEPS" --threads "$THREADS" --method "$METHOD" > "$OUT/torch-$r.json" 2> "$OUT/torch-$r.err"
  echo "[bench-training] round $r: offload" >&2
  /usr/bin/time -f '%M' -o "$OUT/offload-$r.rss" "$OFFLOAD" train --model "$MODEL" --data "$DATA" \
    --batch "$BATCH" --seq-len "$SEQ" --steps "$STEPS" --threads "$THREADS" "${METHOD_ARGS[@]}" --log "$OUT/offload-$r.jsonl" \
    > "$OUT/offload-$r.out" 2> "$OUT/offload-$r.err"
done
echo "[bench-training] load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$OUT" "$REPEAT" <<'PY'
import json, statistics, sys
out, R = sys.argv[1], int(sys.argv[2])
t_tps, o_tps, t_rss, o_rss = [], [], [], []
for r in range(1, R + 1):
    t = json.load(open(f"{out}/torch-{r}.json"))
    t_tps += [t["tokens_per_step"] / s["seconds"] for s in t["steps"][1:]]
    t_rss.append(t["peak_rss_bytes"])
    steps = [json.loads(l) for l in open(f"{out}/offload-{r}.jsonl")]
    o_tps += [s["tokens_per_second"] for s in steps[1:]]
    o_rss.append(int(open(f"{out}/offload-{r}.rss").read().split()[-1]) * 1024)
def mm(xs): return f"{min(xs):8.1f} {statistics.median(xs):8.1f} {max(xs):8.1f}"
print("tokens/second (steps after the first)      min   median      max    peak RSS (max)")
print(f"pytorch                               {mm(t_tps)}    {max(t_rss)/2**30:.2f} GiB")
print(f"offload                               {mm(o_tps)}    {max(o_rss)/2**30:.2f} GiB")
print(f"offload/pytorch tokens/s: median {statistics.median(o_tps)/statistics.median(t_tps):.2f}x "
      f"(min {min(o_tps)/min(t_tps):.2f}x); peak RSS {max(o_rss)/max(t_rss):.2f}x")
PY

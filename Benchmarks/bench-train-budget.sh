#!/usr/bin/env bash
# Training beyond memory, side by side in one run: SmolLM2-135M (the GGUF, trained in fp32),
# AdamW, unconstrained versus each --budget (parameters, gradients and AdamW state streamed
# from --disk), alternated R times. Per configuration: step time (min/median over steps after
# the first), peak resident memory (VmHWM), bytes read and written per step, the simulator's
# prediction, and the physical limit max(unconstrained step, bytes moved / disk bandwidth),
# with the disk bandwidth measured by dd (direct I/O, 1 GiB) in the same folder in the same run.
# The predictions use this machine's profile (`offload profile --disk DIR`), measured at the start.
#
# usage: Benchmarks/bench-train-budget.sh [--repeat R] [--steps N] [--batch B] [--seq-len T]
#                                         [--budgets "256MB 128MB"] [--disk DIR]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
REPEAT=2 STEPS=4 BATCH=4 SEQ=256 BUDGETS="256MB 128MB" DISK="$REPO/Benchmarks/.work/spill"
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) REPEAT=$2; shift 2 ;; --steps) STEPS=$2; shift 2 ;; --batch) BATCH=$2; shift 2 ;;
    --seq-len) SEQ=$2; shift 2 ;; --budgets) BUDGETS=$2; shift 2 ;; --disk) DISK=$2; shift 2 ;;
    *) echo "[bench-train-budget] unknown argument '$1'" >&2; exit 1 ;;
  esac
done
[ -x /usr/bin/time ] || { echo "[bench-train-budget] needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
[ -x "$OFFLOAD" ] || { echo "[bench-train-budget] no $OFFLOAD: swift build -c release --product offload" >&2; exit 1; }
OUT="$REPO/Benchmarks/.work/train-budget-$(date +%Y%m%d-%H%M%S)"; mkdir -p "$OUT" "$DISK"
echo "[bench-train-budget] B=$BATCH T=$SEQ steps=$STEPS budgets: $BUDGETS; load $(cut -d' ' -f1-3 /proc/loadavg); output in $OUT" >&2
echo "[bench-train-budget] offload profile" >&2
"$OFFLOAD" profile --disk "$DISK" --out "$OUT/hardware.json" > "$OUT/profile.txt" 2>&1
# The unconstrained run's prediction: the planner's keep-all plan on the same profile.
"$OFFLOAD" plan --model "$MODEL" --batch "$BATCH" --seq-len "$SEQ" --strategy keep --hardware "$OUT/hardware.json" --json \
  | python3 -c "import json, sys; print(next(s['stepSeconds'] for s in json.load(sys.stdin)['strategies'] if s['name'] == 'keep'))" \
  > "$OUT/keep-pred.txt"
common=(train --model "$MODEL" --data "$DATA" --batch "$BATCH" --seq-len "$SEQ" --steps "$STEPS" --lr 1e-4 --threads 2)
disk_bw() {  # write then read 1 GiB with direct I/O; prints "write_bytes_per_s read_bytes_per_s"
  local f="$DISK/dd-probe"
  local w r
  w=$(dd if=/dev/zero of="$f" bs=4M count=256 oflag=direct conv=fsync 2>&1 | awk '/copied/ {print $(NF-3)}' | head -1)
  r=$(dd if="$f" of=/dev/null bs=4M iflag=direct 2>&1 | awk '/copied/ {print $(NF-3)}' | head -1)
  rm -f "$f"
  python3 -c "import sys; print(1073741824/float('$w'), 1073741824/float('$r'))"
}
for r in $(seq 1 "$REPEAT"); do
  echo "[bench-train-budget] round $r: dd" >&2
  disk_bw >> "$OUT/dd.txt"
  for b in none $BUDGETS; do
    echo "[bench-train-budget] round $r: budget $b" >&2
    extra=(); [ "$b" = none ] || extra=(--budget "$b" --disk "$DISK" --hardware "$OUT/hardware.json")
    /usr/bin/time -f "maxrss %M KiB" "$OFFLOAD" "${common[@]}" "${extra[@]}" --log "$OUT/$b-$r.jsonl" > "$OUT/$b-$r.out" 2> "$OUT/$b-$r.err" \
      || { echo "[bench-train-budget] budget $b failed:" >&2; tail -3 "$OUT/$b-$r.err" >&2; exit 1; }
  done
done
echo "[bench-train-budget] load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$OUT" "$REPEAT" "none $BUDGETS" <<'PY'
import json, re, statistics, sys
out, R, configs = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
dd = [tuple(map(float, l.split())) for l in open(f"{out}/dd.txt") if l.strip()]
wbw, rbw = statistics.median(d[0] for d in dd), statistics.median(d[1] for d in dd)
def size(s):
    v, u = s.split()
    return float(v) * {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[u]
rows = {}
for c in configs:
    secs, hwm, rd, wr, pred = [], [], [], [], []
    for r in range(1, R + 1):
        steps = [json.loads(l) for l in open(f"{out}/{c}-{r}.jsonl")]
        secs += [s["seconds"] for s in steps[1:]]
        err = open(f"{out}/{c}-{r}.err").read()
        m = re.search(r"maxrss (\d+) KiB", err)  # the process's VmHWM, from /usr/bin/time
        if m: hwm.append(int(m.group(1)) * 1024)
        for line in open(f"{out}/{c}-{r}.out"):
            m = re.search(r"pred ([\d.]+) s,.*disk r/w ([\d.]+ \w+)/([\d.]+ \w+)", line)
            if m: pred.append(float(m.group(1))); rd.append(size(m.group(2))); wr.append(size(m.group(3)))
    rows[c] = dict(min=min(secs), med=statistics.median(secs), hwm=max(hwm) if hwm else float("nan"),
                   rd=statistics.median(rd) if rd else 0, wr=statistics.median(wr) if wr else 0,
                   pred=statistics.median(pred) if pred else float("nan"))
rows["none"]["pred"] = float(open(f"{out}/keep-pred.txt").read())
base = rows["none"]["med"]
print(f"disk (dd, direct, 1 GiB, median of {len(dd)}): write {wbw/1e9:.2f} GB/s, read {rbw/1e9:.2f} GB/s")
print(f"{'budget':>8} {'step min':>9} {'median':>8} {'VmHWM':>10} {'read/step':>10} {'write/step':>10} "
      f"{'limit':>7} {'x limit':>8} {'pred':>6} {'meas/pred':>9}")
for c, v in rows.items():
    limit = max(base, v["rd"] / rbw + v["wr"] / wbw)
    print(f"{c:>8} {v['min']:9.2f} {v['med']:8.2f} {v['hwm']/2**20:7.0f} MiB {v['rd']/1e9:8.2f} GB "
          f"{v['wr']/1e9:8.2f} GB {limit:7.2f} {v['med']/limit:8.2f} {v['pred']:6.2f} {v['med']/v['pred']:9.2f}")
PY

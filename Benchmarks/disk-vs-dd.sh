#!/usr/bin/env bash
# The disk store against dd with O_DIRECT on the same folder: sequential write
# and read throughput with large blocks, in interleaved rounds so both see the
# same background load. Prints each round and the ratio of medians.
#   usage: Benchmarks/disk-vs-dd.sh [DIR=/tmp] [MiB=1024] [ROUNDS=5]
# Target: the store at >= 0.95x dd for both directions.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/tmp}
MIB=${2:-1024}
ROUNDS=${3:-5}
BIN=.build/release/offload
[ -x "$BIN" ] || swift build -c release --product offload >&2
FILE="$DIR/offload-dd-bench.$$"
trap 'rm -f "$FILE"' EXIT

# dd BLOCK_MiB write|read -> bytes per second
dd_rate() {
  local bs=$1 dir=$2 out
  if [ "$dir" = write ]; then
    rm -f "$FILE"
    out=$(LC_ALL=C dd if=/dev/zero of="$FILE" bs=${bs}M count=$((MIB / bs)) oflag=direct 2>&1 | tail -1)
  else
    out=$(LC_ALL=C dd if="$FILE" of=/dev/null bs=${bs}M iflag=direct 2>&1 | tail -1)
  fi
  awk '{ printf "%.0f\n", $1 / $(NF-3) }' <<<"$out"
}

# the store: REQUEST_MiB DEPTH -> "write_rate read_rate"
store_rate() {
  "$BIN" profile --disk-only --disk "$DIR" --disk-bytes "${MIB}MiB" --disk-passes 1 \
    --request-sizes "$1MiB" --queue-depths "$2" --json |
    python3 -c 'import json,sys; d=json.load(sys.stdin)["disk"][0]; print("%.0f %.0f" % (d["write_bytes_per_second"], d["read_bytes_per_second"]))'
}

echo "disk store vs dd, $MIB MiB sequential, O_DIRECT, folder $DIR, $ROUNDS rounds"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  machine: $(uname -m), $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
RESULTS=$(mktemp)
for r in $(seq 1 "$ROUNDS"); do
  w4=$(dd_rate 4 write); r4=$(dd_rate 4 read)
  w64=$(dd_rate 64 write); r64=$(dd_rate 64 read)
  rm -f "$FILE"
  read -r sw sr < <(store_rate 4 4)
  read -r qw qr < <(store_rate 4 1)
  echo "$w4 $r4 $w64 $r64 $sw $sr $qw $qr" >>"$RESULTS"
  awk -v r="$r" '{ printf "round %d  dd bs=4M w %.2f r %.2f | dd bs=64M w %.2f r %.2f | store 4MiB x4 w %.2f r %.2f | store 4MiB x1 w %.2f r %.2f  (GB/s)\n", r, $1/1e9, $2/1e9, $3/1e9, $4/1e9, $5/1e9, $6/1e9, $7/1e9, $8/1e9 }' <<<"$w4 $r4 $w64 $r64 $sw $sr $qw $qr"
done
python3 - "$RESULTS" <<'PY'
import sys, statistics as st
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
col = lambda i: [r[i] for r in rows]
med = lambda i: st.median(col(i))
ddw, ddr = max(med(0), med(2)), max(med(1), med(3))
print("medians (GB/s): dd write %.2f read %.2f (best block size) | store x4 write %.2f read %.2f | store x1 write %.2f read %.2f"
      % (ddw/1e9, ddr/1e9, med(4)/1e9, med(5)/1e9, med(6)/1e9, med(7)/1e9))
print("ratio store(4 MiB, depth 4)/dd: write %.2fx  read %.2fx   (target >= 0.95x)" % (med(4)/ddw, med(5)/ddr))
print("ratio store(4 MiB, depth 1)/dd: write %.2fx  read %.2fx" % (med(6)/ddw, med(7)/ddr))
print("per-round ratio x4 write min %.2f median %.2f, read min %.2f median %.2f" % (
    min(r[4]/max(r[0], r[2]) for r in rows), st.median(r[4]/max(r[0], r[2]) for r in rows),
    min(r[5]/max(r[1], r[3]) for r in rows), st.median(r[5]/max(r[1], r[3]) for r in rows)))
PY
rm -f "$RESULTS"

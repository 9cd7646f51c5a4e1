#!/usr/bin/env bash
# The disk store against dd with O_DIRECT on the same folder: sequential write
# and read throughput with large blocks, in interleaved rounds so both see the
# same background load. dd's figure per round is the better of bs=4M and
# bs=64M. The headline is the median over rounds of store/dd (a paired
# comparison: this virtual disk's speed drifts by 2x from minute to minute).
#   usage: Benchmarks/disk-vs-dd.sh [DIR=/tmp] [MiB=1024] [ROUNDS=15]
# Target: the store at >= 0.95x dd for both directions.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/tmp}
MIB=${2:-1024}
ROUNDS=${3:-15}
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
dw = [max(r[0], r[2]) for r in rows]; dr = [max(r[1], r[3]) for r in rows]
def line(label, wi, ri):
    w = [r[wi] / d for r, d in zip(rows, dw)]; rd = [r[ri] / d for r, d in zip(rows, dr)]
    print("%-28s write median %.2fx (min %.2f, max %.2f)   read median %.2fx (min %.2f, max %.2f)"
          % (label, st.median(w), min(w), max(w), st.median(rd), min(rd), max(rd)))
print("medians (GB/s): dd write %.2f read %.2f | store 4MiB x4 write %.2f read %.2f | store 4MiB x1 write %.2f read %.2f"
      % (st.median(dw)/1e9, st.median(dr)/1e9, st.median(r[4] for r in rows)/1e9, st.median(r[5] for r in rows)/1e9,
         st.median(r[6] for r in rows)/1e9, st.median(r[7] for r in rows)/1e9))
print("store / dd per round (target >= 0.95x):")
line("  store 4 MiB x depth 4:", 4, 5)
line("  store 4 MiB x depth 1:", 6, 7)
PY
rm -f "$RESULTS"

#!/usr/bin/env bash
# Requantizes the cached SmolLM2 Q4_1 GGUF into the K-, legacy 5-bit and IQ4 types with
# llama.cpp's llama-quantize, as test models for those formats (see Fixtures/quants/).
# Requantizing from Q4_1 loses quality, but these are format tests, not usable models.
# Idempotent: a type whose output exists is skipped; outputs are written to .tmp, then moved.
#   usage: scripts/make-quant-models.sh [TYPE...]   (default: every type in TYPES)
#   input: $CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-assets.sh)
#   tool:  $LLAMA_BUILD/bin/llama-quantize (scripts/build-llama-cpp.sh llama-quantize)
#   output: $QUANT_DIR/SmolLM2-135M-Instruct.<TYPE>.gguf; and $CACHE/models/tiny/kquant.<TYPE>.gguf
#           from scripts/make-tiny-models.py's kquant.f16.gguf (run by this script)
#   env: OFFLOAD_CACHE (default ~/.cache/offload), LLAMA_BUILD (default $CACHE/llama.cpp-build),
#        QUANT_DIR (default $CACHE/models/quant), JOBS (threads, default 2; the machine is shared)
set -euo pipefail
CACHE="${OFFLOAD_CACHE:-$HOME/.cache/offload}"
BUILD="${LLAMA_BUILD:-$CACHE/llama.cpp-build}"
OUT_DIR="${QUANT_DIR:-$CACHE/models/quant}"
JOBS="${JOBS:-2}"
QUANTIZE="$BUILD/bin/llama-quantize"
SRC="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
SRC_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
# None of these needs an importance matrix (only IQ1/IQ2/IQ3_XXS and Q2_K_S do). SmolLM2's
# hidden size, 576, is not a multiple of 256, so every tensor but ffn_down falls back to a
# 32-block type (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0, IQ4_XS -> IQ4_NL).
# The Q2_K mix then holds no Q2_K tensor at all (its ffn_down is Q3_K), hence Q2_K_pure:
# --pure quantizes every tensor to Q2_K, so ffn_down is Q2_K and the rest falls back to Q4_0.
TYPES=(Q4_K_M Q4_K_S Q5_K_M Q6_K Q3_K_M Q2_K Q2_K_pure Q5_0 Q5_1 IQ4_NL IQ4_XS)
[ $# -gt 0 ] && TYPES=("$@")

say() { echo "[quant] $*" >&2; }

[ -x "$QUANTIZE" ] || { say "no $QUANTIZE: run scripts/build-llama-cpp.sh llama-quantize first"; exit 1; }
[ -f "$SRC" ] || { say "no $SRC: run scripts/fetch-assets.sh first"; exit 1; }
got=$(sha256sum "$SRC" | cut -d' ' -f1)
[ "$got" = "$SRC_SHA" ] || { say "sha256 mismatch for $SRC: expected $SRC_SHA, found $got"; exit 1; }
mkdir -p "$OUT_DIR"

for t in "${TYPES[@]}"; do
  out="$OUT_DIR/SmolLM2-135M-Instruct.$t.gguf"
  if [ -f "$out" ]; then say "have $t"; continue; fi
  say "quantizing $t"
  rm -f "$out.tmp"
  flags=(--allow-requantize); qtype=$t
  case "$t" in *_pure) flags+=(--pure); qtype=${t%_pure} ;; esac
  # The log goes to a file: it is long (a line per tensor) and only wanted on failure.
  if ! "$QUANTIZE" "${flags[@]}" "$SRC" "$out.tmp" "$qtype" "$JOBS" >"$out.log" 2>&1; then
    rm -f "$out.tmp"; tail -n 20 "$out.log" >&2; say "llama-quantize failed for $t (log: $out.log)"; exit 1
  fi
  mv "$out.tmp" "$out"; rm -f "$out.log"
done

# The files Fixtures/quants/ was computed from. llama-quantize's quantizers are plain C in
# ggml-base (no ISA flags): native (AVX-512) and GGML_NATIVE=OFF builds, and any thread count,
# gave these same bytes on x86-64. Another compiler or CPU may round differently; a mismatch
# is reported, not fatal, and means the fixtures no longer describe the file.
declare -A PINNED=(
  [Q4_K_M]=dc0f3a02e821146247a0af6895adf9872124f368682cb110cb9ed09ff2a9f9f1
  [Q4_K_S]=7d9eb1146bf78d98207372d1db5f4aad16ec094f11f8edd661627eda54f7cf53
  [Q5_K_M]=8170c7ef444692b3b2fe63459c326def0358807ef9be6e3cb020efb86a71015e
  [Q6_K]=a969ae2086dd4945a7c61594bf72b2bcc3b7df8571c92aed8f213918673a7f80
  [Q3_K_M]=01045a8fee6c962e4f7b0f80dccf937503738f61f987c305378fd3f527eac9d4
  [Q2_K]=1733ab14bc423774519aa464e0d74e190617e877c9d0aa07a698b500d1788895
  [Q2_K_pure]=dc183fb648339d62e10b7f7a2cbafa8a502ff5e6c8c284b821c1d890426777a2
  [Q5_0]=2f90a7511cf340144dda963a9fd73f708601517f0f8038d31c9069654526be44
  [Q5_1]=d0fe3cbb20771ac9dab0f4dd5aaa259785158177f6503d4dca32f4495dcffaea
  [IQ4_NL]=b4d1842a26d8952bd7b609eb2062f7352aeb609c1ac5017542be18f83bc1776e
  [IQ4_XS]=5a4caecc8f966f75ff79b8f1522f76aedd2381d0722df17254e212f01526c7ba
)

# Each file against its pinned sha256, and — where the gguf package is installed (fixture
# makers have it; CI need not) — the ggml type of every tensor, with counts: K-quant files are
# mixes, and this is what Offload must be able to read from each.
report() { # name path pinned
  local sha; sha=$(sha256sum "$2" | cut -d' ' -f1)
  if [ -n "$3" ] && [ "$sha" != "$3" ]; then
    say "WARNING: $1 sha256 $sha differs from the pinned $3: the fixtures were made from the pinned file"
  fi
  if python3 -c "import gguf" 2>/dev/null; then
    python3 - "$1" "$2" "$sha" <<'PY'
import collections, os, sys
from gguf import GGUFReader
name, path, sha = sys.argv[1:]
mix = collections.Counter(t.tensor_type.name for t in GGUFReader(path).tensors)
print(f"[quant] {name:9} {os.path.getsize(path):9d} {sha}  "
      + ", ".join(f"{k} x{v}" for k, v in sorted(mix.items())), file=sys.stderr)
PY
  else
    say "$1 $(stat -c %s "$2") $sha"
  fi
}
for t in "${TYPES[@]}"; do report "$t" "$OUT_DIR/SmolLM2-135M-Instruct.$t.gguf" "${PINNED[$t]:-}"; done

# K-quants on every matrix: a tiny random model whose rows are all multiples of 256, made with
# the standard library by scripts/make-tiny-models.py (idempotent: it checks its pinned sha256s),
# quantized into $CACHE/models/tiny/kquant.<TYPE>.gguf (Fixtures/tiny/kquant_refs.json,
# scripts/fixtures/make_kquant_tiny_fixtures.py). A few milliseconds each, so a file that is
# not the pinned one (e.g. from an older source) is simply made again.
TINY_DIR="$CACHE/models/tiny"
TINY_SRC="$TINY_DIR/kquant.f16.gguf"
python3 "$(cd "$(dirname "$0")" && pwd)/make-tiny-models.py"
declare -A TINY_PINNED=(
  [Q4_K_M]=f973f4e3da51a33fc64169d25519e8695c43c153ae25ef68131d41b210151313
  [Q4_K_S]=35d2b2ecb9194765b6126dbc99d12706657b6ccf3ebfa205375b7dbcf0884c13
  [Q5_K_M]=80ed9941d6c678b544b6812b3f034beabbd62c061344920f786cf38acd6ef91a
  [Q6_K]=d0e039f9b99fc7b5819caf809ef454eef1e8a5446b18a6862e803567db1ba17e
  [Q3_K_M]=cfe569d14c787ed91ab14fddbea37b0a011d67e13e979a579dc8e95bc126e12b
  [Q2_K]=033cc2849fab15355d31511b4d77ed57508a0fc74c86814f9a4199894878e9e9
  [IQ4_XS]=9153bc2da3c08829e903d547025ea1537db1a61abc7bbb2724f148da79f5d73d
)
for t in Q4_K_M Q4_K_S Q5_K_M Q6_K Q3_K_M Q2_K IQ4_XS; do
  out="$TINY_DIR/kquant.$t.gguf"
  if ! { [ -f "$out" ] && [ "$(sha256sum "$out" | cut -d' ' -f1)" = "${TINY_PINNED[$t]}" ]; }; then
    rm -f "$out.tmp"
    if ! "$QUANTIZE" "$TINY_SRC" "$out.tmp" "$t" "$JOBS" >"$out.log" 2>&1; then
      rm -f "$out.tmp"; tail -n 20 "$out.log" >&2; say "llama-quantize failed for tiny $t (log: $out.log)"; exit 1
    fi
    mv "$out.tmp" "$out"; rm -f "$out.log"
  fi
  report "tiny $t" "$out" "${TINY_PINNED[$t]:-}"
done
say "ready in $OUT_DIR and $TINY_DIR"

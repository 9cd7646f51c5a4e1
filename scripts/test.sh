#!/usr/bin/env bash
# The whole test suite: installs what is missing, fetches the assets, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch-assets.sh
# The tiny random models of the parity tests (RoPE scaling, Qwen2, K-quants on every matrix):
# made with python3's standard library, pinned by sha256 (seconds; idempotent).
python3 scripts/make-tiny-models.py
# The K-quant tests read files made by llama.cpp's own quantizer (an implementation independent
# of Offload's): build it from the fetched source, requantize SmolLM2 and quantize the tiny
# K-quant model (all idempotent).
scripts/build-llama-cpp.sh llama-quantize
scripts/make-quant-models.sh
swift build -c release --product offload
swift test -c release "$@"

#!/usr/bin/env bash
# The whole test suite: installs what is missing, fetches the assets, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch-assets.sh
# The K-quant tests read files made by llama.cpp's own quantizer (an implementation independent
# of Offload's): build it from the fetched source and requantize SmolLM2 (both idempotent).
scripts/build-llama-cpp.sh llama-quantize
scripts/make-quant-models.sh
swift build -c release --product offload
swift test -c release "$@"

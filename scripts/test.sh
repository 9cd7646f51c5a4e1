#!/usr/bin/env bash
# The whole test suite: installs what is missing, fetches the assets, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch-assets.sh
swift build -c release --product offload
swift test -c release "$@"

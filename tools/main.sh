#!/usr/bin/env bash
# The README's main command: fills .venv if needed, then runs the tiny PRCO job on CPU.
# Extra arguments go to `prco-mega train` (e.g. `--resume`, `algo.name=grpo`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tools/bootstrap.sh
# vLLM logs every detokenizer reset of the tiny byte-level tokenizer as a warning: keep errors.
export VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-ERROR}"
exec .venv/bin/prco-mega train configs/tiny_cpu.yaml "$@"

#!/usr/bin/env bash
# The README's test command: fills .venv if needed, then runs the whole test suite on CPU.
# Extra arguments go to pytest (e.g. `tools/test.sh tests/test_prompts.py -x`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tools/bootstrap.sh
# Triton kernels run through the interpreter on CPU; it must be chosen before triton is imported
# anywhere in the process. The sm_90 compile check runs in its own process without it.
export TRITON_INTERPRET="${TRITON_INTERPRET:-1}"
export TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"

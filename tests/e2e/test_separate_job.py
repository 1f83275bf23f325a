"""The main job under separate placement (`cluster.rollout_placement: separate`, issue 18): rank 0
is the learner's world, rank 1 the engine's (`link.split_world`), with one-step off-policy
sampling. It trains, evaluates before and after, writes metrics, checkpoints, the report, the
held-out evaluations and saved rollouts, and a resumed run continues where the checkpoint left
off, each step logged once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["run.eval_tasks=2", "data.prompts_per_step=2", "observer.n=2", "solver.n=2",
        "observer.max_new_tokens=24", "solver.max_new_tokens=16", "algo.warmup_steps=2",
        "warm_start.steps=0", "learner.checkpoint.interval=2",
        "saved_rollouts.every=2", "saved_rollouts.tasks=2", "cluster.rollout_placement=separate",
        "cluster.rollout_nodes=1", "cluster.nodes=1", "cluster.gpus_per_node=1",
        "rollout.off_policy_steps=1"]
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _train(out: Path, steps: int, *extra: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "prco_mega.cli", "train", str(ROOT / "configs/tiny_cpu.yaml"), *TINY,
           f"run.steps={steps}", f"run.output_dir={out}", f"model.cache_dir={out / 'cache'}",
           "run.name=sep", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_LOGGING_LEVEL": "ERROR",
           "PRCO_LEARNER_WORLD_SIZE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def test_separate_placement_main_job_trains_off_policy_and_resumes(tmp_path):
    _train(tmp_path, 3)
    run = tmp_path / "sep"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    # step 0 is drawn by the starting weights; later steps by the update before the last
    assert [r["train/policy_lag"] for r in rows] == [0.0, 1.0, 1.0]
    assert all(r["sync/bytes"] > 0 and r["loss_tokens"] > 0 for r in rows)
    for name in ("eval_start.json", "eval_end.json", "report.md", "curves.png", "config.json"):
        assert (run / name).exists(), name
    assert sorted(p.name for p in (run / "rollouts").glob("step_*")) == ["step_00000000",
                                                                         "step_00000002"]
    assert (run / "checkpoints" / "step_00000003").exists()

    _train(tmp_path, 4, "--resume")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    # the resumed engine starts from the checkpoint's weights: its first step has no lag
    assert rows[3]["train/policy_lag"] == 0.0
    assert json.loads((run / "eval_end.json").read_text())["tasks"] == 2

"""The main job under separate placement (`cluster.rollout_placement: separate`): rank 0 is the
learner's world, rank 1 the engine's (`dist.link.split_world`), with bounded staleness 2 (the
engine samples up to two steps ahead while the learner trains). It trains, evaluates before and
after, writes metrics, checkpoints, the report, the held-out evaluations and saved rollouts; a run
killed after a checkpoint and resumed trains on the same samples and logs the same metrics as the
uninterrupted one (the engine's queue of samples drawn ahead is saved with the checkpoint)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["run.eval_tasks=2", "data.prompts_per_step=2", "observer.n=2", "solver.n=2",
        "observer.max_new_tokens=24", "solver.max_new_tokens=16", "algo.warmup_steps=2",
        "warm_start.steps=0", "learner.checkpoint.interval=2", "run.steps=4",
        "saved_rollouts.every=2", "saved_rollouts.tasks=2", "cluster.rollout_placement=separate",
        "cluster.rollout_nodes=1", "cluster.nodes=1", "cluster.gpus_per_node=1",
        "rollout.max_staleness=2"]
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _cmd(out: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "prco_mega.cli", "train", str(ROOT / "configs/tiny_cpu.yaml"), *TINY,
            f"run.output_dir={out}", f"model.cache_dir={out / 'cache'}", f"run.name={name}",
            *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_LOGGING_LEVEL": "ERROR",
       "PRCO_LEARNER_WORLD_SIZE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _train(out: Path, name: str, *extra: str) -> None:
    proc = subprocess.run(_cmd(out, name, *extra), env=ENV, capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "sync/seconds"}
            for r in rows]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sep")
    _train(out, "full")
    return out


def test_separate_placement_main_job_trains_two_steps_ahead(runs):
    run = runs / "full"
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    # steps 0-2 are drawn by the starting weights (1 and 2 ahead, during update 0), step 3 by
    # update 0's (during update 1): never more than 2 updates behind the update that trains them
    assert [r["train/policy_lag"] for r in rows] == [0.0, 1.0, 2.0, 2.0]
    assert all(r["sync/bytes"] > 0 and r["loss_tokens"] > 0 for r in rows)
    # the same step metrics as colocated placement: what crossed the network per rank
    assert all(r["sync/received_bytes_max"] > 0 for r in rows)
    for name in ("eval_start.json", "eval_end.json", "report.md", "curves.png", "config.json"):
        assert (run / name).exists(), name
    assert sorted(p.name for p in (run / "rollouts").glob("step_*")) == ["step_00000000",
                                                                         "step_00000002"]
    assert (run / "checkpoints" / "step_00000004").exists()


def test_killed_and_resumed_separate_run_trains_on_the_same_samples(runs):
    proc = subprocess.Popen(_cmd(runs, "killed"), env=ENV, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = runs / "killed" / "checkpoints" / "step_00000002" / "COMPLETE"
    deadline = time.time() + 900
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "the run never reached its first checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
    proc.wait()
    _train(runs, "killed", "--resume")
    assert _metrics(runs / "killed") == _metrics(runs / "full")
    assert json.loads((runs / "killed" / "eval_end.json").read_text())["tasks"] == 2


def test_partial_rollouts_take_new_weights_mid_sequence_within_the_bound(runs):
    _train(runs, "partial", "rollout.partial_rollouts=true", "rollout.chunk_tokens=4",
           "solver.max_new_tokens=48")
    rows = _metrics(runs / "partial")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert all(0 <= r["train/policy_lag"] <= 2 and r["loss_tokens"] > 0 for r in rows)
    # a learner update of the tiny model takes about a second, an engine step of 48-token
    # answers in 4-token chunks several: some sequences in flight take the new weights mid-way
    assert sum(r["rollout/mixed_versions"] for r in rows) > 0


def test_sigterm_stops_both_worlds_after_a_step_and_resume_auto_continues(runs):
    """Preemption under separate placement: the engine rank holds the signal and follows the
    learner's decision, saving its queue of samples drawn ahead with the learner's checkpoint."""
    proc = subprocess.Popen(_cmd(runs, "term"), env=ENV, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = runs / "term" / "metrics.jsonl"
    deadline = time.time() + 900
    while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline:
        assert proc.poll() is None, "the run ended before its first step"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)  # as Slurm signals every process of the job
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0 and "stopped on SIGTERM after step" in text
    newest = sorted(p.name for p in (runs / "term" / "checkpoints").iterdir())[-1]
    assert newest != "step_00000004"  # it stopped early
    assert (runs / "term" / "engine_state" / f"{newest}.rank0.pkl").exists()
    _train(runs, "term", "--resume", "auto")
    assert _metrics(runs / "term") == _metrics(runs / "full")

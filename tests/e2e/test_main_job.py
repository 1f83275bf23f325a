"""The main job end to end on the real path (Megatron learner, vLLM engine, bridge), kept short:
it writes metrics, curves, a report and checkpoints, TensorBoard event files, an offline W&B run
and saved rollouts, and a run killed with SIGKILL and resumed produces the same metrics, event
files, W&B history and saved rollouts as an uninterrupted one, each step once; a run sent SIGTERM
(preemption) saves the step it is in and exits, and its relaunch ends where the uninterrupted
run does."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # tests/: the shared readers of the loggers' files
from tracking_files import (tensorboard_event_steps, tensorboard_scalars,  # noqa: E402
                            wandb_history, wandb_offline_runs)

TINY = ["run.steps=4", "run.eval_tasks=4", "data.prompts_per_step=2", "observer.n=2",
        "solver.n=2", "observer.max_new_tokens=24", "solver.max_new_tokens=16",
        "algo.warmup_steps=2", "warm_start.steps=4", "warm_start.tasks_per_step=4",
        "learner.checkpoint.interval=2", "learner.batching.mini_batches=2",
        "run.loggers=[console,jsonl,tensorboard,wandb]", "saved_rollouts.every=2",
        "saved_rollouts.tasks=2"]
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _cmd(out: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "prco_mega.cli", "train", str(ROOT / "configs/tiny_cpu.yaml"),
            *TINY, f"run.output_dir={out}", f"model.cache_dir={out / 'cache'}", f"run.name={name}",
            *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "2", "VLLM_LOGGING_LEVEL": "ERROR"}


def _metrics(run_dir: Path) -> list[dict]:
    """Metrics without wall-clock fields (those differ between any two runs)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "sync/seconds"}
            for r in rows]


def _plain(value):
    """Tensors and arrays as nested lists, so two states compare with ==."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _checkpoint(path: Path) -> dict:
    """What a checkpoint holds, as plain values: the model's and the optimizer's tensors (read
    with torch.distributed.checkpoint's own reader), the optimizer's steps (common.pt),
    meta.json (scheduler, task stream) and every rank's RNG states."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(path, Path(tmp) / "flat.pt")
        state = torch.load(Path(tmp) / "flat.pt", weights_only=False)
    state["common.pt"] = torch.load(path / "common.pt", weights_only=False)
    state["meta.json"] = json.loads((path / "meta.json").read_text())
    for rng in sorted((path / "rng").glob("*.pt")):
        state[f"rng/{rng.name}"] = torch.load(rng, weights_only=False)
    return {key: _plain(value) for key, value in state.items()}


def _tracked(run_dir: Path) -> dict:
    """What the other loggers and the rollout saver hold, without wall-clock fields: TensorBoard
    scalars per tag, the W&B history, the event steps on disk, the saved rollouts."""
    tb = {tag: points for tag, points in tensorboard_scalars(run_dir / "tensorboard").items()
          if not tag.startswith("time/") and tag != "sync/seconds"}
    (wandb_run,) = wandb_offline_runs(run_dir)  # resumed or not: one run folder
    history = [{k: v for k, v in row.items() if k in ("_step", "solver/accuracy",
                                                      "observer/perception_acc")}
               for row in wandb_history(wandb_run)]
    saved = {p.name: json.loads((p / "records.json").read_text())
             for p in sorted((run_dir / "rollouts").glob("step_*"))}
    return {"tensorboard": tb, "event_steps": tensorboard_event_steps(run_dir / "tensorboard"),
            "wandb": history, "rollouts": saved}


def _check_tracked(run_dir: Path, rows: list[dict]) -> dict:
    """The step metrics of metrics.jsonl are in TensorBoard and W&B, each step once; steps 0
    and 2 are saved, each with the two sampled tasks (one per engine in a 2-engine run)."""
    got = _tracked(run_dir)
    steps = [r["step"] for r in rows]
    assert got["event_steps"] == steps
    for key in ("solver/accuracy", "observer/perception_acc", "mismatch/max_abs"):
        assert got["tensorboard"][key] == [(r["step"], pytest.approx(r[key])) for r in rows]
    assert [h["_step"] for h in got["wandb"]] == steps
    assert [h["solver/accuracy"] for h in got["wandb"]] == [r["solver/accuracy"] for r in rows]
    assert list(got["rollouts"]) == ["step_00000000", "step_00000002"]
    for saved in got["rollouts"].values():
        assert [t["index"] for t in saved["tasks"]] == [0, 1]
        for task in saved["tasks"]:
            assert len(task["captions"]) == 2 and all(len(c["answers"]) == 2
                                                      for c in task["captions"])
            assert (run_dir / "rollouts" / f"step_{saved['step']:08d}" / task["images"][0]).exists()
    return got


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    subprocess.run(_cmd(out, "full"), check=True, env=_env(), cwd=ROOT, timeout=600)
    return out


def test_run_writes_metrics_curves_report_and_checkpoints(uninterrupted):
    run = uninterrupted / "full"
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for r in rows:
        assert 0.0 <= r["solver/accuracy"] <= 1.0 and 0.0 <= r["observer/perception_acc"] <= 1.0
        assert r["mismatch/max_abs"] < 1e-3  # fp32 learner and engine, same weights
        assert r["unassigned_tokens"] == 0
        assert r["mini_batches"] == 2  # two optimizer updates per RL step
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002",
                                                                       "step_00000004"]
    assert (run / "curves.png").stat().st_size > 10_000
    assert "Caption perception accuracy" in (run / "report.md").read_text()
    _check_tracked(run, rows)


def test_inspect_writes_the_saved_step_and_the_comparison_pages(uninterrupted):
    run = uninterrupted / "full"
    for extra, page in (([], "step_00000002.html"), (["--compare"], "compare.html")):
        subprocess.run([sys.executable, "-m", "prco_mega.cli", "inspect", str(run), *extra],
                       check=True, cwd=ROOT, timeout=300)
        text = (run / "inspect" / page).read_text()
        assert text.count("<section class='task'") == (4 if extra else 2)
        assert "data:image/png;base64," in text


def test_killed_and_resumed_run_equals_the_uninterrupted_one(uninterrupted):
    out = uninterrupted  # shares the cached tiny model and warm start
    proc = subprocess.Popen(_cmd(out, "killed"), env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "killed" / "checkpoints" / "step_00000002" / "COMPLETE"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "the run never reached its first checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(_cmd(out, "killed", "--resume"), check=True, env=_env(), cwd=ROOT, timeout=600)
    assert _metrics(out / "killed") == _metrics(out / "full")
    assert _check_tracked(out / "killed", _metrics(out / "killed")) == _tracked(out / "full")


def test_invalid_config_is_refused_before_anything_starts(tmp_path):
    res = subprocess.run(_cmd(tmp_path, "bad", "algo.clip_hgh=0.3"), env=_env(), cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "unknown config key(s) ['clip_hgh'] in algo" in res.stderr
    assert not (tmp_path / "bad").exists()


def test_tensor_parallel_run_under_torchrun(tmp_path):
    """The cluster path on CPU: 2 ranks at learner TP=2, one vLLM engine in each rank, weights
    synced from both shards into both engines (the mismatch shows each engine holds exactly the
    learner's weights). TIS is on with 2 mini-batches, so the pre-update log-prob pass of
    `MegatronPolicy.step` runs on both ranks; this checks that it runs and syncs, not the values
    it computes."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                "2"]
    cmd = _cmd(tmp_path, "tp2", "learner.parallel.tensor_parallel=2", "run.steps=2",
               "learner.checkpoint.interval=0", "algo.tis_cap=2.0")
    subprocess.run(torchrun + cmd[1:], check=True, env={**_env(), "OMP_NUM_THREADS": "1"},
                   cwd=ROOT, timeout=600)
    rows = _metrics(tmp_path / "tp2")
    assert [r["step"] for r in rows] == [0, 1]
    assert all(r["mismatch/max_abs"] < 1e-4 for r in rows)
    assert (tmp_path / "tp2" / "checkpoints" / "step_00000002" / "COMPLETE").exists()


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _two_rank_env() -> dict[str, str]:
    return {**_env(), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def two_rank_uninterrupted(tmp_path_factory) -> Path:
    """Colocated on 2 ranks: learner DP=2 and two vLLM engines, each sampling its half of every
    step; run once, uninterrupted, for the tests that stop and continue the same job."""
    out = tmp_path_factory.mktemp("two_rank")
    subprocess.run(TORCHRUN + _cmd(out, "full")[1:], check=True, env=_two_rank_env(), cwd=ROOT,
                   timeout=900)
    return out


def test_two_engine_run_killed_and_resumed_equals_the_uninterrupted_one(two_rank_uninterrupted):
    """The whole 2-rank torchrun job SIGKILLed after its first checkpoint and resumed gives the
    metrics of the uninterrupted 2-rank run."""
    out, env = two_rank_uninterrupted, _two_rank_env()
    proc = subprocess.Popen(TORCHRUN + _cmd(out, "killed")[1:], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    marker = out / "killed" / "checkpoints" / "step_00000002" / "COMPLETE"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "the run never reached its first checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks at once
    proc.wait()
    subprocess.run(TORCHRUN + _cmd(out, "killed", "--resume")[1:], check=True, env=env,
                   cwd=ROOT, timeout=900)
    rows = _metrics(out / "full")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert all(r["mismatch/max_abs"] < 1e-3 for r in rows)
    assert _metrics(out / "killed") == rows
    assert _check_tracked(out / "killed", rows) == _check_tracked(out / "full", rows)


def test_two_rank_run_sent_sigterm_saves_its_step_and_its_relaunch_ends_as_uninterrupted(
        two_rank_uninterrupted):
    """Preemption as a Slurm job meets it: SIGTERM to torchrun mid-run (after step 0 is logged),
    which hands it to both ranks at different moments and waits for them as the Slurm script's
    TORCH_ELASTIC_SHUTDOWN_TIMEOUT says. Both ranks stop after the same step, save it (periodic
    checkpoints are off: this save is the stop's) and exit; the same command (`--resume auto`,
    the Slurm script's) run again finishes the run with the uninterrupted run's metrics,
    TensorBoard, W&B and saved rollouts, and its final checkpoint: weights, optimizer, RNG."""
    out = two_rank_uninterrupted
    cmd = TORCHRUN + _cmd(out, "preempted", "learner.checkpoint.interval=0", "--resume",
                          "auto")[1:]
    env = {**_two_rank_env(), "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "600"}
    log = out / "preempted.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        metrics = out / "preempted" / "metrics.jsonl"
        deadline = time.time() + 600
        while not (metrics.exists() and metrics.read_text()) and proc.poll() is None \
                and time.time() < deadline:
            time.sleep(0.2)
        assert metrics.exists() and metrics.read_text(), "the run never logged a step"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=600) != 0
    rows = _metrics(out / "full")
    stopped = _metrics(out / "preempted")
    n = len(stopped)
    assert 1 <= n < 4 and stopped == rows[:n]
    assert [p.name for p in (out / "preempted" / "checkpoints").iterdir()] == [f"step_{n:08d}"]
    assert f"stopped on SIGTERM after step {n - 1}" in log.read_text()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, timeout=900)
    assert _metrics(out / "preempted") == rows
    assert _tracked(out / "preempted") == _tracked(out / "full")
    final = "checkpoints/step_00000004"
    got, want = _checkpoint(out / "preempted" / final), _checkpoint(out / "full" / final)
    assert sorted(got) == sorted(want)
    assert [key for key in want if got[key] != want[key]] == []


def test_main_job_on_the_tiny_qwen3vl(tmp_path):
    """`model.family=qwen3_vl`: the tiny Qwen3-VL (deepstack, interleaved MRoPE, QK-norm) is built,
    warm-started, sampled by vLLM, trained by the Megatron learner and synced back for 2 steps;
    the engine's log-probs equal the learner's (so the sync moved every weight) (~45 s)."""
    cmd = _cmd(tmp_path, "qwen3vl", "model.family=qwen3_vl", "run.steps=2", "warm_start.steps=2",
               "run.eval_tasks=2", "learner.batching.mini_batches=1")
    subprocess.run(cmd, check=True, env=_env(), cwd=ROOT, timeout=600)
    rows = _metrics(tmp_path / "qwen3vl")
    assert [r["step"] for r in rows] == [0, 1]
    assert all(r["mismatch/max_abs"] < 1e-4 for r in rows)
    assert (tmp_path / "qwen3vl" / "checkpoints" / "step_00000002" / "COMPLETE").exists()
    (tiny,) = [d for d in (tmp_path / "cache").glob("tiny-*") if (d / "COMPLETE").exists()]
    assert json.loads((tiny / "config.json").read_text())["model_type"] == "qwen3_vl"

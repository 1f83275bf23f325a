"""The config's loggers: each step's metrics reach metrics.jsonl, TensorBoard and an offline W&B
run, read back with their own readers; a run SIGKILLed after its checkpoint and resumed logs every
step exactly once in each; a logger whose package is missing is refused when the config loads."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tracking_files import (tensorboard_event_steps, tensorboard_scalars, wandb_history,
                            wandb_offline_runs)

from prco_mega.config import load_config

ROOT = Path(__file__).resolve().parents[1]

ATTEMPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from prco_mega.tracking.loggers import make_loggers
    root, (start, stop, kill), salt = Path(sys.argv[1]), map(int, sys.argv[2:5]), float(sys.argv[5])
    loggers = make_loggers(["console", "jsonl", "tensorboard", "wandb"], root, total_steps=4,
                           run_name="t", wandb_project="p", wandb_mode="offline")
    loggers.start(start)
    for step in range(start, stop):
        loggers.log({"step": step, "solver/accuracy": step / 10 + salt, "time/rollout": 1.5})
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush: as a killed run
    loggers.close()
""")


def attempt(root: Path, start: int, stop: int, kill: bool = False, salt: float = 0) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", ATTEMPT, str(root), str(start), str(stop),
                           str(int(kill)), str(salt)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == (-9 if kill else 0), proc.stderr[-3000:]
    return proc.returncode


def test_every_logger_holds_the_step_metrics(tmp_path):
    attempt(tmp_path, 0, 4)
    jsonl = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in jsonl] == [0, 1, 2, 3]
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars["solver/accuracy"] == [(s, pytest.approx(s / 10)) for s in range(4)]
    assert scalars["time/rollout"] == [(s, 1.5) for s in range(4)]
    (run,) = wandb_offline_runs(tmp_path)
    rows = wandb_history(run)
    assert [r["_step"] for r in rows] == [0, 1, 2, 3]
    assert [r["solver/accuracy"] for r in rows] == pytest.approx([s / 10 for s in range(4)])


def test_a_killed_and_resumed_run_logs_every_step_once(tmp_path):
    """Attempt 1 logs steps 0-2 and is killed (its checkpoint covers steps 0-1); attempt 2
    resumes at step 2 with other values (salt), which must replace the killed attempt's."""
    attempt(tmp_path, 0, 3, kill=True)
    events = next((tmp_path / "tensorboard").glob("*tfevents*"))
    with open(events, "ab") as f:
        f.write(b"\x17\x00\x00")  # a record torn by the kill
    run_id = (tmp_path / "wandb" / "run_id").read_text().strip()
    attempt(tmp_path, 2, 4, salt=1.0)
    want = [0.0, 0.1, 1.2, 1.3]
    jsonl = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["solver/accuracy"] for r in jsonl] == pytest.approx(want)
    assert tensorboard_event_steps(tmp_path / "tensorboard") == [0, 1, 2, 3]
    assert [v for _, v in tensorboard_scalars(tmp_path / "tensorboard")["solver/accuracy"]] == \
        pytest.approx(want)
    (run,) = wandb_offline_runs(tmp_path)  # one offline run: the same id, the steps once each
    assert run.name.endswith(run_id)
    rows = wandb_history(run)
    assert [r["_step"] for r in rows] == [0, 1, 2, 3]
    assert [r["solver/accuracy"] for r in rows] == pytest.approx(want)


def test_a_fresh_run_starts_a_new_wandb_run_and_empty_logs(tmp_path):
    attempt(tmp_path, 0, 2, kill=True)  # died before its first checkpoint
    old = (tmp_path / "wandb" / "run_id").read_text()
    attempt(tmp_path, 0, 1)
    assert (tmp_path / "wandb" / "run_id").read_text() != old
    assert tensorboard_event_steps(tmp_path / "tensorboard") == [0]
    assert [r["_step"] for r in wandb_history(wandb_offline_runs(tmp_path)[0])] == [0]


def test_a_logger_without_its_package_is_refused_at_config_load(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    config = str(ROOT / "configs/tiny_cpu.yaml")
    with pytest.raises(ValueError, match="'wandb' needs the Python package 'wandb', which is "
                                         "not installed"):
        load_config(config, ["run.loggers=[console,jsonl,wandb]"])
    load_config(config, ["run.loggers=[console,jsonl,tensorboard]"])
    with pytest.raises(ValueError, match="must include 'jsonl'"):
        load_config(config, ["run.loggers=[console]"])
    with pytest.raises(ValueError, match=r"run.loggers\[1\]: 'mlflow' is not one of"):
        load_config(config, ["run.loggers=[jsonl,mlflow]"])

"""`prco-mega eval` sharded over engines (issue 30): `torchrun --nproc_per_node 2 -m prco_mega.cli
eval` runs two engines (TP=1 each, as training places them), each answering its block of every
benchmark, and gives the very predictions files and `results.txt` of a one-engine run, item for
item (greedy). A two-engine run killed (SIGKILL of the whole launch) once some chunks are written
and then rerun redoes none of them. Three launches shared by the file's tests: one engine; two
engines killed; two engines resumed.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared fixture files
from bench_data import MIXED, NAMES, write_root

pytest.importorskip("vllm")
pytestmark = [pytest.mark.distributed, pytest.mark.vllm]

EVAL = ["--chunk-size", "2", "--observer-max-tokens", "6", "--solver-max-tokens", "6",
        "dtype=float32", "max_model_len=512", "seed=0"]
_DONE = re.compile(r"^(\S[^:]*): (\d+) items \((\d+) resumed, (\d+) answered", re.MULTILINE)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "VLLM_LOGGING_LEVEL": "ERROR",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _command(nproc: int, model: Path, root: Path, out: Path) -> list[str]:
    launcher = [sys.executable] if nproc == 1 else [
        # torchrun's standalone rendezvous picks its own port (none chosen here and released)
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
        str(nproc)]
    return [*launcher, "-m", "prco_mega.cli", "eval", "--model", str(model), "--data-root",
            str(root), "--out", str(out), *EVAL]


def _run(nproc: int, model: Path, root: Path, out: Path) -> str:
    proc = subprocess.run(_command(nproc, model, root, out), env=_env(), cwd=REPO, check=False,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    return proc.stdout


def _finished_lines(out: Path) -> int:
    """Complete prediction lines on disk (shard files and merged files)."""
    return sum(p.read_bytes().count(b"\n") for p in (out / "predictions").rglob("*.jsonl"))


def _kill_after_first_chunks(nproc: int, model: Path, root: Path, out: Path) -> int:
    """Start a run, SIGKILL the whole launch once 4 items are written; the items written."""
    proc = subprocess.Popen(_command(nproc, model, root, out), env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "predictions").is_dir() and _finished_lines(out) >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        _kill_launch(proc)
    return _finished_lines(out)


def _kill_launch(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every rank it started (torchrun starts its ranks in sessions
    of their own, out of the launcher's process group)."""
    try:
        ranks = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        ranks = []
    for p in [*ranks, psutil.Process(proc.pid)] if proc.poll() is None else ranks:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(ranks, timeout=30)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from prco_mega.tiny.checkpoint import make_tiny_checkpoint
    from prco_mega.tiny.tokenizer import demo_corpus

    base = tmp_path_factory.mktemp("eval_shards")
    model = make_tiny_checkpoint(base / "tiny", demo_corpus(3000, seed=0), seed=0, init_std=0.2)
    root = write_root(base / "data", MIXED)
    started = time.perf_counter()
    one = _run(1, model, root, base / "one")
    written = _kill_after_first_chunks(2, model, root, base / "two")
    resumed = _run(2, model, root, base / "two")
    return {"one": base / "one", "two": base / "two", "written": written, "resumed": resumed,
            "one_stdout": one, "seconds": time.perf_counter() - started}


def _predictions(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "predictions").glob("*.jsonl"))}


def test_two_engines_give_one_engines_predictions_and_results(runs):
    one, two = _predictions(runs["one"]), _predictions(runs["two"])
    assert sorted(one) == sorted(f"{n}.jsonl" for n in NAMES)
    assert one == two  # every record, in item order, byte for byte
    assert not list((runs["two"] / "predictions" / "shards").glob("*.jsonl"))
    assert (runs["one"] / "results.txt").read_text() == (runs["two"] / "results.txt").read_text()
    assert "answered 27 items" in runs["one_stdout"] and "on 1 engine(s)" in runs["one_stdout"]
    assert "on 2 engine(s)" in runs["resumed"]


def test_a_killed_two_engine_run_resumes_without_redoing_any_item(runs):
    done = {m[1]: (int(m[2]), int(m[3]), int(m[4])) for m in _DONE.finditer(runs["resumed"])}
    assert len(done) == len(NAMES)
    total = sum(items for items, _, _ in done.values())
    resumed = sum(r for _, r, _ in done.values())
    answered = sum(a for _, _, a in done.values())
    assert 4 <= runs["written"] < total  # killed mid-run
    assert (resumed, answered) == (runs["written"], total - runs["written"])

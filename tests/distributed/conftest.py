"""Runner for multi-rank tests: `torchrun` on a script under tests/distributed/scripts/.

A test calls the `torchrun` fixture, `result = torchrun("qwen_parity.py", nproc=2, args=[...])`,
or the module-scoped `torchrun_module` to share one launch among a file's tests. The script
gets `--out PATH` appended and must write its JSON result there from rank 0; the fixture
asserts every rank exited 0 (showing the ranks' output otherwise) and returns the parsed JSON.
Ranks run with one thread each (2 ranks on 2 cores thrash otherwise). torchrun's standalone
rendezvous binds a free port and keeps it, so launches running side by side never race for one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent / "scripts"
REPO = Path(__file__).resolve().parents[2]


def run_torchrun(script: str, out_dir: Path, nproc: int = 2, args: list[str] | None = None,
                 timeout: float = 600) -> dict:
    """Launch `torchrun --nproc_per_node nproc scripts/<script> args --out <json>`; return JSON."""
    out = Path(out_dir) / f"{Path(script).stem}-result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(nproc), str(SCRIPTS / script), *(args or []), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep
           + os.environ.get("PYTHONPATH", ""), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun {script} exited {proc.returncode}\n--- stdout ---\n"
                             f"{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-10000:]}")
    return json.loads(out.read_text())


@pytest.fixture
def torchrun(tmp_path):
    """`torchrun(script, nproc=2, args=None, timeout=600) -> dict` (see module doc)."""

    def run(script: str, nproc: int = 2, args: list[str] | None = None, timeout: float = 600):
        return run_torchrun(script, tmp_path, nproc=nproc, args=args, timeout=timeout)

    return run


@pytest.fixture(scope="module")
def torchrun_module(tmp_path_factory):
    """Like `torchrun`, for module-scoped fixtures (one launch shared by a file's tests)."""

    def run(script: str, nproc: int = 2, args: list[str] | None = None, timeout: float = 600):
        out_dir = tmp_path_factory.mktemp(Path(script).stem)
        return run_torchrun(script, out_dir, nproc=nproc, args=args, timeout=timeout)

    return run

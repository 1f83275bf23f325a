"""Port soak: back-to-back 2-rank checkpoint conversions beside a second loop of 2-rank torchrun
jobs, counting the launches that died with EADDRINUSE.

    .venv/bin/python tools/port_soak.py [--conversions 50] [--time-limit 3600]

Simplifications: one machine, loopback only. A conversion is `prco-mega convert` of the tiny
Qwen2.5-VL checkpoint (built once into a temporary folder) to Megatron at TP=2, without --verify.
The other loop's job is the smallest 2-rank world (gloo: start, one all-reduce, stop), launched
as every launch of the project is, with torchrun's standalone rendezvous. Both loops stop at their
count or at the time limit; the exit status is 1 when any launch saw EADDRINUSE.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from prco_mega.tiny.checkpoint import make_tiny_checkpoint
from prco_mega.tiny.tokenizer import demo_corpus

ROOT = Path(__file__).resolve().parents[1]
ADDR_IN_USE = ("EADDRINUSE", "Address already in use", "errno: 98")


@dataclass
class Tally:
    """Launches of one loop and how they ended."""

    name: str
    launches: int = 0
    failed: int = 0
    addr_in_use: int = 0
    seconds: float = 0.0
    last_failure: str = field(default="", repr=False)

    def record(self, proc: subprocess.CompletedProcess, seconds: float) -> None:
        self.launches += 1
        self.seconds += seconds
        text = proc.stdout + proc.stderr
        if proc.returncode != 0:
            self.failed += 1
            self.last_failure = text[-3000:]
        if any(marker in text for marker in ADDR_IN_USE):
            self.addr_in_use += 1

    def line(self) -> str:
        mean = self.seconds / max(1, self.launches)
        return (f"{self.name:<26} {self.launches:>8} {self.launches - self.failed:>4} "
                f"{self.failed:>6} {self.addr_in_use:>10} {mean:>9.1f}")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _run(cmd: list[str], tally: Tally, timeout: float) -> None:
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:  # counted as a failure, with what it printed
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        proc = subprocess.CompletedProcess(cmd, 124, out, err + "\n(timed out)")
    tally.record(proc, time.perf_counter() - start)


def conversions(tiny: Path, work: Path, count: int, deadline: float, tally: Tally) -> None:
    """`prco-mega convert` hf2mcore at TP=2, `count` times one after the other."""
    dst = work / "converted"
    for _ in range(count):
        if time.monotonic() > deadline:
            return
        cmd = [sys.executable, "-m", "prco_mega.cli", "convert", "--direction", "hf2mcore",
               "--src", str(tiny), "--dst", str(dst), "--tp", "2"]
        _run(cmd, tally, timeout=max(1.0, deadline - time.monotonic()))
        shutil.rmtree(dst, ignore_errors=True)
        shutil.rmtree(dst.with_name(dst.name + ".tmp"), ignore_errors=True)


def other_jobs(stop: threading.Event, count: int, deadline: float, tally: Tally) -> None:
    """2-rank torchrun jobs, one after the other, until `stop` (or `count`, or the deadline)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve()), "--worker"]
    while not stop.is_set() and tally.launches < count and time.monotonic() < deadline:
        _run(cmd, tally, timeout=max(1.0, deadline - time.monotonic()))


def worker() -> None:
    """One rank of the other loop's job: a gloo world of torchrun's size, one all-reduce."""
    dist.init_process_group("gloo")
    x = torch.ones(1)
    dist.all_reduce(x)
    assert int(x.item()) == dist.get_world_size()
    dist.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--conversions", type=int, default=50)
    p.add_argument("--max-other-jobs", type=int, default=1000, help="bound of the other loop")
    p.add_argument("--time-limit", type=float, default=3600, help="seconds, both loops")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker()
        return 0
    start = time.monotonic()
    deadline = start + args.time_limit
    with tempfile.TemporaryDirectory(prefix="port_soak_") as tmp:
        work = Path(tmp)
        tiny = make_tiny_checkpoint(work / "tiny", demo_corpus(3000, seed=0), seed=0)
        convert = Tally("conversions (TP=2)")
        other = Tally("other 2-rank torchrun jobs")
        stop = threading.Event()
        side = threading.Thread(target=other_jobs,
                                args=(stop, args.max_other_jobs, deadline, other))
        side.start()
        try:
            conversions(tiny, work, args.conversions, deadline, convert)
        finally:
            stop.set()
            side.join()
    print(f"{'loop':<26} {'launches':>8} {'ok':>4} {'failed':>6} {'EADDRINUSE':>10} "
          f"{'mean s':>9}")
    for tally in (convert, other):
        print(tally.line())
    print(f"wall {time.monotonic() - start:.0f} s")
    for tally in (convert, other):
        if tally.failed:
            print(f"\nlast failure of {tally.name}:\n{tally.last_failure}")
    return 1 if convert.addr_in_use or other.addr_in_use else 0


if __name__ == "__main__":
    sys.exit(main())

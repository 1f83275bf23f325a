"""Stopping a run at a step boundary when the cluster asks: Slurm preempting the job, or the
warning it sends ahead of the job's time limit (`cluster.launch.render_sbatch`).

A signal only raises a flag (`caught`). After each step the learner's ranks decide together
(`StopVote.decide`: one all-reduce of one integer over the learner's ranks), because the signal
reaches the ranks at different moments and the checkpoint is a collective save: every rank must
stop after the same step. On a stop the loop saves that step's checkpoint and exits with status
128 + the signal's number, as a process ended by the signal would; the relaunch
(`train ... --resume auto`, the Slurm script's command) continues from it.

In separate placement the engine ranks follow the learner's decision, never their own signal:
they hold their signals with `caught` too, and read the decision with `engines_stop` at the
point of their step where the learner broadcasts it (after the step's weights).

Signals: SIGTERM (Slurm's preemption and time limit, `scancel`, and torchrun's agent, which
passes its own SIGTERM on to its workers) and SIGUSR1 (what `srun --signal=USR1@T` sends ahead
of a time limit when the ranks are srun's own tasks).
"""
from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from prco_mega.dist.world import device, is_host

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Caught:
    """The first of the held signals that arrived (None: none yet)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def note(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum


@contextlib.contextmanager
def caught(signals: tuple[int, ...] = SIGNALS) -> Iterator[Caught]:
    """While inside, `signals` only record themselves; the previous handlers come back after
    (outside the steps there is nothing to save: a signal ends the process as usual)."""
    got = Caught()
    previous = {s: signal.signal(s, got.note) for s in signals}
    try:
        yield got
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class StopVote:
    """The learner's per-step decision whether the run stops early."""

    def __init__(self, group: Any = None, engines: Any = None):
        """`group`: the learner's ranks (None: the default group, which is the learner's world
        in either placement); `engines`: separate placement's link spanning the learner and
        engine ranks (`dist.link.SplitWorld.link`), whose engine ranks read the decision with
        `engines_stop`; None when colocated."""
        self.group, self.engines = group, engines
        self.got = Caught()
        self.signum = 0

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        """While inside (the steps), a signal asks the run to stop after the current step."""
        with caught() as got:
            self.got = got
            yield

    def decide(self) -> bool:
        """Whether the run stops after this step: whether any learner rank caught a signal
        (collective over the learner's ranks, and the engine ranks when split)."""
        flag = torch.tensor([self.got.signum or 0], dtype=torch.int32, device=device())
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        self.signum = int(flag.item())
        if self.engines is not None:
            self.engines.broadcast_object(self.signum, src=0)
        return self.signum != 0

    def exit(self, step: int, checkpoint: Any) -> None:
        """End the process after a stop at `step` (saved to `checkpoint`)."""
        name = signal.Signals(self.signum).name
        if is_host():
            print(f"prco-mega: stopped on {name} after step {step - 1}: checkpoint {checkpoint} "
                  "saved; `prco-mega train ... --resume auto` continues the run", flush=True)
        raise SystemExit(128 + self.signum)


def engines_stop(link: Any) -> int:
    """An engine rank's side of `StopVote.decide` in separate placement: the signal the learner
    stops on after the step just handed over (0: it goes on). Collective over `link`. The learner
    decides after every step s but the run's last, once it has sent the weights of update s: an
    engine rank reads it right after taking those weights (where it would take them when the
    learner had nothing to train)."""
    return int(link.broadcast_object(None, src=0))

"""Config of experiment tracking: which loggers a run writes to, and which rollouts it keeps.

Plain dataclasses, cheap to import (`config.py` assembles them). A chosen logger's package is
looked up here without importing it, so a missing one is refused when the config loads.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

LOGGER_PACKAGES: dict[str, str | None] = {"console": None, "jsonl": None,
                                          "tensorboard": "tensorboard", "wandb": "wandb"}
"""Logger name -> the Python package it needs (None: nothing beyond the project's own)."""


def check_loggers(loggers: list[str]) -> None:
    """ValueError for a logger list without `jsonl`, with a logger twice, or with a logger whose
    package is not installed (named, with the extra that installs it)."""
    if "jsonl" not in loggers:
        raise ValueError(f"run.loggers ({loggers}) must include 'jsonl': metrics.jsonl is the "
                         "run's record (curves.png, the resume protocol and W&B's offline "
                         "replay read it)")
    if len(set(loggers)) != len(loggers):
        raise ValueError(f"run.loggers ({loggers}) names a logger twice")
    for name in loggers:
        package = LOGGER_PACKAGES[name]
        if package and importlib.util.find_spec(package) is None:
            raise ValueError(f"run.loggers: {name!r} needs the Python package {package!r}, which "
                             f"is not installed (pip install {package}, or the project's "
                             "[tracking] extra)")


@dataclass
class SavedRolloutsSection:
    """A sample of a step's rollouts kept on disk for reading by eye (`prco-mega inspect`):
    each task's image, question and gold answer, every caption with its perception, leak flag,
    reward and advantage, every answer with its reward, and the Solver group that trained."""

    every: int = 10
    """Save steps 0, every, 2 x every, ...; 0 = save none."""
    tasks: int = 4
    """Tasks saved per step, spread evenly over the step's batch (all engines' blocks)."""
    keep: int = 5
    """Saved steps kept on disk; older ones are deleted, so storage stays near keep x tasks x
    (one PNG + the texts), which is printed at each save."""

    def validate(self) -> None:
        if self.every < 0 or self.tasks < 1 or self.keep < 1:
            raise ValueError(f"saved_rollouts: every ({self.every}) >= 0, tasks ({self.tasks}) "
                             f">= 1 and keep ({self.keep}) >= 1 required")

"""Loggers: where each RL step's metrics go, chosen in the config (`run.loggers`).

The loop calls `Loggers.log` once per step, on the logging rank only (`dist.world.is_host`), with
the step's metrics already combined over engines as Python floats: logging adds no collective and
no host sync. TensorBoard and W&B are imported inside their loggers, when a run starts them.

Resume protocol. `Loggers.start(step)` is called once, before the first step the run takes (0 for
a fresh run, the checkpoint's step when resuming). Whatever an earlier attempt logged at steps
>= `step` is forgotten, so a run killed after its checkpoint and resumed logs every step exactly
once, as an uninterrupted run does:
- metrics.jsonl is truncated to the steps before `step` (`MetricsLogger.truncate_after`);
- TensorBoard's event files are rewritten into one file holding each earlier step once, and the
  run appends to a new file (the run's event directory stays one run);
- W&B continues the same run id. Offline, the earlier attempts' run folders are replaced by one
  that replays the steps before `step` from metrics.jsonl; online, the server keeps the run's
  history (it refuses steps at or below its last one, so a step logged by a killed attempt after
  its last checkpoint keeps that attempt's values there).
"""
from __future__ import annotations

import math
import os
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from prco_mega.tracking.metrics import MetricsLogger, step_line


class Logger(Protocol):
    def start(self, step: int, history: list[dict[str, Any]]) -> None:
        """Open at `step`; `history` holds the metrics of the steps before it (resume)."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among `metrics`, without the step itself."""
    out = {}
    for key, value in metrics.items():
        if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


class Loggers:
    """The run's loggers: metrics.jsonl (the record the others are resumed from) and the chosen
    others, in config order."""

    def __init__(self, record: MetricsLogger, others: Sequence[Logger]):
        self.record = record
        self.others = list(others)

    @property
    def path(self) -> Path:
        return self.record.path

    def start(self, step: int) -> None:
        self.record.truncate_after(step - 1)
        history = self.record.records()
        for logger in self.others:
            logger.start(step, history)

    def log(self, metrics: Mapping[str, Any]) -> None:
        """One step's metrics (holding its `"step"`), to every logger."""
        self.record.log(metrics)
        for logger in self.others:
            logger.log(metrics, int(metrics["step"]))

    def close(self) -> None:
        for logger in self.others:
            logger.close()

    def records(self) -> list[dict[str, Any]]:
        return self.record.records()


class ConsoleLogger:
    """The progress bar and one line per step (`eval.report.step_line`)."""

    def __init__(self, total_steps: int):
        self.total = total_steps
        self.first = 0
        self.bar = None

    def start(self, step: int, history: list[dict[str, Any]]) -> None:
        self.first = step

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self.bar is None:  # made at the first step, so evaluation output comes before it
            self.bar = tqdm(total=self.total, initial=self.first, desc="PRCO steps",
                            dynamic_ncols=True)
        self.bar.write(step_line(step, metrics))
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


MERGED_EVENTS = "events.out.tfevents.0000000000.prco-resumed"
"""The event file a resumed run's earlier steps are rewritten into (sorts before any new file)."""


def rewrite_events_before(logdir: Path, step: int) -> int:
    """Rewrite the event files in `logdir` into one (`MERGED_EVENTS`) holding each step < `step`
    once (its first event; a torn last record of a killed writer is skipped); returns the steps
    kept. The new file replaces the merged one atomically and the other files are deleted after,
    so a kill in between leaves only duplicates that the next call removes."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    files = sorted(p for p in logdir.glob("*tfevents*") if p.is_file())
    if not files:
        return 0
    header, kept = None, {}
    for path in files:
        # raw records: the parsing loader would migrate scalars to tensors on the way
        for event in map(event_pb2.Event.FromString, RawEventFileLoader(str(path)).Load()):
            if event.HasField("file_version"):
                header = header or event
            elif event.step < step:
                kept.setdefault(event.step, event)
    tmp = logdir / ".merging"
    with open(tmp, "wb") as f:
        writer = RecordWriter(f)
        for event in ([header] if header else []) + [kept[s] for s in sorted(kept)]:
            writer.write(event.SerializeToString())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, logdir / MERGED_EVENTS)
    for path in files:
        if path.name != MERGED_EVENTS:
            path.unlink()
    return len(kept)


class TensorBoardLogger:
    """Scalars in TensorBoard event files under `logdir` (one tag per metric, the RL step as the
    step), flushed every step so a killed run keeps the steps it finished."""

    def __init__(self, logdir: Path):
        self.logdir = Path(logdir)
        self.writer = None

    def start(self, step: int, history: list[dict[str, Any]]) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.logdir.mkdir(parents=True, exist_ok=True)
        rewrite_events_before(self.logdir, step)
        self.writer = EventFileWriter(str(self.logdir))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        values = [summary_pb2.Summary.Value(tag=k, simple_value=v)
                  for k, v in _scalars(metrics).items()]
        self.writer.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                              summary=summary_pb2.Summary(value=values)))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbLogger:
    """A W&B run in `root/wandb/`, named after the run; its id is kept in `root/wandb/run_id` so
    a resumed run continues it (see the module doc). Console capture is off: the step line is
    the console logger's."""

    def __init__(self, root: Path, name: str, project: str, mode: str, config: dict | None):
        self.root, self.name, self.project, self.mode = Path(root), name, project, mode
        self.config = config
        self.run = None

    @property
    def id_file(self) -> Path:
        return self.root / "wandb" / "run_id"

    def _run_id(self, step: int) -> str:
        """The run's id: kept when resuming, new for a fresh run (whose earlier attempt, if
        any, died before its first checkpoint: its offline folders go as its metrics do)."""
        old = self.id_file.read_text().strip() if self.id_file.exists() else None
        if step > 0 and old:
            return old
        if old:
            self._drop_offline(old)
        self.id_file.parent.mkdir(parents=True, exist_ok=True)
        new = secrets.token_hex(6)
        self.id_file.write_text(new + "\n")
        return new

    def _drop_offline(self, run_id: str) -> None:
        for folder in (self.root / "wandb").glob(f"offline-run-*-{run_id}"):
            shutil.rmtree(folder)

    def start(self, step: int, history: list[dict[str, Any]]) -> None:
        # vLLM imports openai, which W&B answers with a three-line advert for its LLM tracer
        os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")
        import wandb

        run_id = self._run_id(step)
        replay = []
        if self.mode == "offline" and step > 0:
            self._drop_offline(run_id)
            replay = [r for r in history if r["step"] < step]
        self.run = wandb.init(project=self.project, name=self.name, id=run_id, dir=str(self.root),
                              mode=self.mode, resume="allow", config=self.config,
                              settings=wandb.Settings(console="off", silent=True))
        for record in replay:
            self.log(record, int(record["step"]))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(_scalars(metrics), step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()


def make_loggers(names: Sequence[str], root: Path, *, total_steps: int, run_name: str,
                 wandb_project: str, wandb_mode: str, config: dict | None = None) -> Loggers:
    """The loggers `names` (from `run.loggers`; `jsonl` is always the record) for the run folder
    `root`. Nothing is opened before `Loggers.start`."""
    made: dict[str, Any] = {
        "console": lambda: ConsoleLogger(total_steps),
        "tensorboard": lambda: TensorBoardLogger(root / "tensorboard"),
        "wandb": lambda: WandbLogger(root, run_name, wandb_project, wandb_mode, config),
    }
    others = [made[name]() for name in names if name != "jsonl"]
    return Loggers(MetricsLogger(root / "metrics.jsonl"), others)

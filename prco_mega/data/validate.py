"""The data check a run does before anything heavy starts (world, learner, engines).

A file source is read in full here: the path, every row's JSON and encoding, every image's size
and decoding. A bad path or a file with no usable row stops the run in seconds instead of after
the learner and the engines have started; in skip mode the counts of skipped rows are reported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prco_mega.data.reader import ReaderConfig, ReaderStats, read_tasks
from prco_mega.types import Task


@dataclass
class DataSummary:
    """What the check read: the usable tasks of a file source (none for synthetic data)."""

    source: str
    """`data.source`: synthetic, jsonl or parquet."""
    path: Path | None = None
    """The data file (file sources)."""
    tasks: list[Task] = field(default_factory=list)
    """Usable tasks, in file order."""
    stats: ReaderStats = field(default_factory=ReaderStats)
    """Rows read and skipped per reason."""

    def line(self) -> str:
        """One line for the run's log: counts, and each reason rows were skipped for."""
        if self.path is None:
            return f"data: {self.source} tasks, generated per step"
        return f"data: {self.stats.tasks} tasks from {self.path} ({_counts(self.stats)})"


def _counts(stats: ReaderStats) -> str:
    """'7 rows; skipped 1 bad_encoding, 1 image_too_large' (reasons sorted)."""
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(stats.skipped.items()))
    return f"{stats.rows} rows" + (f"; skipped {skipped}" if skipped else "")


def reader_config(data) -> ReaderConfig:
    """The reader settings of a `config.DataSection`."""
    return ReaderConfig(on_error=data.on_error, image_backend=data.image_backend,
                        max_image_pixels=data.max_image_pixels)


def check_data(data) -> DataSummary:
    """Read and validate the data a `config.DataSection` names; ValueError names the problem
    (the file, or the row and reason in raise mode), or says that no row was usable."""
    if data.source == "synthetic":
        return DataSummary(data.source)
    path = Path(data.path)
    tasks, stats = read_tasks(path, reader_config(data))
    if not tasks:
        raise ValueError(f"data file {path} has no usable row ({_counts(stats)})")
    return DataSummary(data.source, path, tasks, stats)

"""Run metrics: the metrics file, the per-step line and the curves PNG.

`metrics.jsonl` holds one JSON object per RL step (with its `"step"`), appended and fsynced as the
step ends, so a killed run keeps every step it finished. A resumed run first truncates the file to
the steps its checkpoint covers, which makes its file equal an uninterrupted run's.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------- metrics file


def _jsonable(value: Any) -> Any:
    """Plain Python value (0-d tensors and numpy scalars become floats/ints)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (int, float)) else value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics file, in order; a torn last line (killed mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


class MetricsLogger:
    """Appends one JSON line per step to `path`, durable once `log` returns.

    Resume protocol: `truncate_after(s)` keeps the records with step <= s (and drops a torn line),
    so a run resumed from a checkpoint taken after step s rewrites steps s+1.. exactly as an
    uninterrupted run wrote them. A fresh run calls `truncate_after(-1)` (or `reset()`) to drop
    the lines of an earlier attempt that died before its first checkpoint.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Append `metrics` (must hold `"step"` unless `step` is given) and fsync."""
        record = {k: _jsonable(v) for k, v in metrics.items()}
        if step is not None:
            record["step"] = step
        if "step" not in record:
            raise ValueError(f"metrics need a 'step' key (got keys {sorted(record)})")
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_after(self, step: int) -> int:
        """Keep only records with step <= `step`; returns how many were kept. Atomic: the file is
        rewritten beside itself and renamed, so a kill during the rewrite loses nothing."""
        kept = [r for r in read_metrics(self.path) if r["step"] <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return len(kept)

    def reset(self) -> None:
        """Start an empty file."""
        self.truncate_after(-1)

    def records(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)


# ---------------------------------------------------------------- per-step line


def _fmt(value: float) -> str:
    """Short number: 3 significant digits, scientific below 1e-3."""
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _pairs(metrics: Mapping[str, Any], keys: Sequence[tuple[str, str]]) -> str:
    return " ".join(f"{label} {_fmt(metrics[key])}" for label, key in keys if key in metrics)


STEP_FIELDS: list[tuple[str, list[tuple[str, str]]]] = [
    ("reward", [("O", "observer/reward"), ("S", "solver/reward")]),
    ("acc", [("S", "solver/accuracy")]),
    ("percep", [("O", "observer/perception_acc"), ("kept", "observer/misread_kept_answer_rate")]),
    ("leak", [("O", "observer/leak_rate")]),
    ("len", [("O", "observer/caption_len"), ("S", "solver/response_len")]),
    ("mismatch", [("|d|", "mismatch/mean_abs"), ("kl", "mismatch/kl_k3")]),
    ("kl-ref", [("O", "observer/kl"), ("S", "solver/kl")]),
    ("dyn-sampling", [("draws", "sampling/draws"), ("groups", "sampling/groups_trained")]),
]
"""What the per-step line shows, in order: (section, [(label, metric key)])."""


def step_line(step: int, metrics: Mapping[str, Any]) -> str:
    """`step 3 | reward O 0.42 S 0.61 | acc S 0.55 | percep O 0.7 | leak O 0 | len O 31 S 58 |
    mismatch |d| 2.1e-06 kl 1.0e-11 | sec rollout 4.1 score 0.02 learn 6.3 sync 0.2 (10.6)`;
    sections whose metrics are absent (e.g. Observer ones in a single-role baseline) are left
    out."""
    parts = [f"step {step}"]
    for section, keys in STEP_FIELDS:
        text = _pairs(metrics, keys)
        if text:
            parts.append(f"{section} {text}")
    times = {k.removeprefix("time/"): float(v) for k, v in metrics.items() if k.startswith("time/")}
    if times:
        spent = " ".join(f"{name} {_fmt(sec)}" for name, sec in times.items())
        parts.append(f"sec {spent} ({_fmt(sum(times.values()))})")
    return " | ".join(parts)


# ---------------------------------------------------------------- curves


UNIT = (-0.02, 1.02)
PANELS: list[tuple[str, list[tuple[str, str]], tuple[float | None, float | None]]] = [
    ("Rewards per role", [("observer/reward", "Observer"), ("solver/reward", "Solver")], UNIT),
    ("Solver accuracy", [("solver/accuracy", "train rollouts")], UNIT),
    ("Caption perception accuracy", [("observer/perception_acc", "scene facts stated"),
                                     ("observer/misread_kept_answer_rate",
                                      "misreads that keep the answer")], UNIT),
    ("Leakage rate", [("observer/leak_rate", "captions leaking the answer")], (0, None)),
    ("Response length (tokens)", [("observer/caption_len", "Observer"),
                                  ("solver/response_len", "Solver")], (0, None)),
    ("Train/rollout log-prob mismatch", [("mismatch/mean_abs", "mean |d logp|"),
                                         ("mismatch/kl_k3", "KL (k3)")], (None, None)),
]
"""The PNG's panels: (title, [(metric key, legend label)], y limits). Rates and rewards keep
their full [0, 1] axis, so the noise of a few-step run does not read as a trend."""


def running_mean(values: Sequence[float], window: int) -> list[float]:
    """m[i] = mean(values[max(0, i - window + 1) .. i]): a trailing mean, defined from the start."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], float(r[key])) for r in records
           if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key]))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _draw_panel(ax, records: list[dict[str, Any]], title: str, curves: list[tuple[str, str]],
                ylim: tuple[float | None, float | None]) -> None:
    drawn, positive = 0, True
    for i, (key, label) in enumerate(curves):
        steps, values = _series(records, key)
        if not steps:
            continue
        color = f"C{i}"
        window = max(1, len(values) // 10)
        if window > 1:  # noisy per-step values faint, their trailing mean solid
            ax.plot(steps, values, color=color, alpha=0.3, linewidth=1)
            label = f"{label} (mean of {window})"
        ax.plot(steps, running_mean(values, window), color=color, linewidth=1.8, label=label,
                marker="o" if len(values) <= 30 else None, markersize=3)
        drawn += 1
        positive &= min(values) > 0
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.set_xlabel("RL step", fontsize=8)
    ax.tick_params(labelsize=8)
    if not drawn:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes,
                color="gray")
        return
    if ylim == (None, None) and positive:
        ax.set_yscale("log")  # mismatch spans orders of magnitude; a linear axis shows a flat 0
    else:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=7, loc="best")


def plot_metrics(jsonl_path: str | Path, png_path: str | Path, title: str | None = None) -> Path:
    """Write a 2x3 grid of curves (see `PANELS`) from a metrics file to `png_path` (Agg backend,
    no display needed). Metrics a run does not log show as "not logged"."""
    # matplotlib is optional (only curves need it), and the backend is chosen before pyplot loads
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(jsonl_path)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
    for ax, (panel_title, curves, ylim) in zip(axes.flat, PANELS, strict=True):
        _draw_panel(ax, records, panel_title, curves, ylim)
    fig.suptitle(title or f"{Path(jsonl_path).parent.name}: {len(records)} steps", fontsize=12)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path

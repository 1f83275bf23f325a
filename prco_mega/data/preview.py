"""Write synthetic tasks to disk so a person can look at them (`prco-mega data preview`)."""
from __future__ import annotations

import json
from pathlib import Path

from prco_mega.data.synthetic import SyntheticConfig, SyntheticTaskSource


def write_preview(out_dir: str | Path, n: int, cfg: SyntheticConfig | None = None) -> list[Path]:
    """Render tasks 0..n-1 as `task_XXXX.png` plus one `tasks.jsonl` row per task.

    Each JSONL row has uid, family, question, answer, facts and the PNG's file name (relative to
    `out_dir`). Returns the written paths: the PNGs in task order, then `tasks.jsonl`.
    """
    if n < 0:
        raise ValueError(f"n ({n}) must be >= 0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = SyntheticTaskSource(cfg or SyntheticConfig())
    written, rows = [], []
    for index in range(n):
        task = source.task(index)
        png = out / f"task_{index:04d}.png"
        task.images[0].save(png, format="PNG")
        written.append(png)
        rows.append({"uid": task.uid, "family": task.family, "question": task.question,
                     "answer": task.answer, "facts": task.facts, "image": png.name})
    jsonl = out / "tasks.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return written + [jsonl]

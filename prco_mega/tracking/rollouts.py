"""Saved rollouts: every `saved_rollouts.every` steps, a sample of the step's tasks with
everything needed to judge them by eye (`prco-mega inspect` renders them).

Each saved task holds its image (a PNG, once per task), question and gold answer; every Observer
caption with its perception score (synthetic data), leak flag, utility reward and advantage; every
Solver answer with its correctness, reward and advantage; and which caption's Solver group was
trained. Baselines (GRPO, DAPO) save their look-and-answer responses the same way.

Where the records are made. The rollout is sharded over engines, so each engine's leader builds
the records of the sampled tasks in its own block (and encodes their PNGs); the records are
gathered to every rank once per saved step (a few kB per task: `saved_rollouts.tasks` bounds it)
and the logging rank writes them. The sample is chosen by task position in the step, so a run on
one engine and a run on two save the same tasks. A saved step is written beside its final name
and renamed into place, so a killed run leaves whole steps only; steps older than the last
`saved_rollouts.keep` are deleted, and the storage in use is printed at each save.

Layout: `rollouts/step_00000010/records.json` (`{"step": 10, "tasks": [...]}`) and one
`task_<draw>_<position>_<k>.png` per image.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from prco_mega.data.captions import perception_accuracy
from prco_mega.dist.world import is_host
from prco_mega.types import TaskRollout, Trajectory

if TYPE_CHECKING:
    from PIL.Image import Image

    from prco_mega.algo.credit import Scored
    from prco_mega.rollout.placement import Shard
    from prco_mega.tracking.config import SavedRolloutsSection

RECORDS = "records.json"


def sample_positions(batch: int, k: int) -> list[int]:
    """`k` task positions spread evenly over a step of `batch` tasks (all when k >= batch)."""
    k = min(k, batch)
    return sorted({i * batch // k for i in range(k)})


def png_bytes(image: Image) -> bytes:
    """The image as PNG bytes (lossless; flat synthetic images take a few kB)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _answer(y: Trajectory, trained: set[int]) -> dict[str, Any]:
    return {"text": y.text, "tokens": len(y.response_ids),
            "correct": float(y.meta.get("correct", 0.0)), "reward": y.reward,
            "advantage": y.advantage, "trained": id(y) in trained}


def _zero_variance(rewards: list[float]) -> bool:
    return max(rewards, default=0.0) - min(rewards, default=0.0) == 0.0


def _caption(c: Trajectory, answers: list[Trajectory], facts: dict | None,
             trained: set[int]) -> dict[str, Any]:
    return {"text": c.text, "tokens": len(c.response_ids),
            "perception": perception_accuracy(c.text, facts) if facts else None,
            "leak": int(c.meta.get("leak", 0)), "reward": c.reward, "advantage": c.advantage,
            "solver_group_trained": any(id(y) in trained for y in answers),
            "solver_zero_variance": _zero_variance([y.reward for y in answers]),
            "answers": [_answer(y, trained) for y in answers]}


def task_record(r: TaskRollout, trained: set[int], step: int) -> dict[str, Any]:
    """One scored task as a JSON-ready dict; `images` holds PNG bytes until `write_step` stores
    them. `trained` is the set of `id()`s of the step's trajectories that entered the loss."""
    task = r.task
    captions = [_caption(c, ys, task.facts, trained) for c, ys in zip(r.observer, r.solver)]
    singles = [_answer(y, trained) for y in r.single]
    group = [c["reward"] for c in captions] or [a["reward"] for a in singles]
    solver_images = [y.images for ys in r.solver for y in ys]
    return {"step": step, "draw": r.draw, "index": r.index, "uid": task.uid,
            "family": task.family, "question": task.question, "answer": task.answer,
            "choices": task.choices, "zero_variance": _zero_variance(group),
            "solver_saw_image": bool(solver_images and solver_images[0]),
            "captions": captions, "answers": singles,
            "images": [png_bytes(im) for im in task.images]}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def saved_steps(folder: Path) -> list[Path]:
    """The saved step folders, oldest first."""
    return sorted(p for p in Path(folder).glob("step_*") if p.is_dir())


def write_step(folder: Path, step: int, records: list[dict[str, Any]]) -> Path:
    """Store one step's records (their PNG bytes as files) as `folder/step_<step>`; the step is
    written beside its name and renamed into place, replacing an earlier attempt's."""
    final = folder / f"step_{step:08d}"
    tmp = folder / f".step_{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stored = []
    for rec in records:
        names = []
        for k, png in enumerate(rec["images"]):
            names.append(f"task_{rec['draw']}_{rec['index']:04d}_{k}.png")
            (tmp / names[-1]).write_bytes(png)
        stored.append({**rec, "images": names})
    (tmp / RECORDS).write_text(json.dumps({"step": step, "tasks": stored}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def read_step(step_dir: Path) -> dict[str, Any]:
    return json.loads((Path(step_dir) / RECORDS).read_text())


@dataclass
class RolloutSaver:
    """Saves a sample of every `section.every`-th step's scored rollouts under `folder`."""

    section: SavedRolloutsSection
    folder: Path
    shard: Shard
    batch: int
    """Tasks per step (`data.prompts_per_step`): the sample is spread over them."""

    def due(self, step: int) -> bool:
        return self.section.every > 0 and step % self.section.every == 0

    def start(self, step: int) -> None:
        """Logging rank, before the first step the run takes: an earlier attempt's saved steps
        at or after `step` go (this attempt saves them again)."""
        for path in saved_steps(self.folder):
            if int(path.name.removeprefix("step_")) >= step:
                shutil.rmtree(path)

    def save(self, step: int, scored: Scored) -> None:
        """Every rank, every step (collective on the steps that are saved, else nothing)."""
        if not self.due(step):
            return
        mine = []
        if self.shard.placement.is_engine_leader:  # a TP engine's other ranks drew the same
            chosen = set(sample_positions(self.batch, self.section.tasks))
            trained = {id(t) for t in scored.train}
            mine = [task_record(r, trained, step) for r in scored.rollouts
                    if r.draw == 0 and r.index in chosen]
        records = sorted((rec for part in self.shard.gather(mine) for rec in part),
                         key=lambda rec: rec["index"])
        if is_host():
            self._write(step, records)

    def _write(self, step: int, records: list[dict[str, Any]]) -> None:
        path = write_step(self.folder, step, records)
        kept = saved_steps(self.folder)
        for old in kept[: -self.section.keep]:
            shutil.rmtree(old)
        kept = kept[-self.section.keep:]
        tqdm.write(f"saved rollouts of step {step}: {len(records)} tasks, "
                   f"{folder_bytes(path) / 1e3:.1f} kB in {path}; {len(kept)} saved steps use "
                   f"{sum(map(folder_bytes, kept)) / 1e3:.1f} kB (keeping the last "
                   f"{self.section.keep})")


# ---------------------------------------------------------------- held-out evaluation records


def eval_records_path(summary: Path) -> Path:
    """Where the per-task records of an evaluation summary (`eval_start.json`) are kept."""
    return summary.with_name(summary.stem + "_records.jsonl")


def write_eval_records(summary: Path, records: Iterable[Any]) -> Path:
    """One JSON line per held-out task (`eval.synthetic.EvalRecord` without its prompt ids):
    what `prco-mega inspect --compare` shows beside the other evaluation's."""
    path = eval_records_path(summary)
    lines = [json.dumps({k: v for k, v in asdict(r).items() if k != "solver_prompt_ids"})
             for r in records]
    path.write_text("".join(line + "\n" for line in lines))
    return path

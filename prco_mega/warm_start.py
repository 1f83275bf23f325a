"""The tiny CPU model: a locally built Qwen2.5-VL-architecture checkpoint, and its supervised warm
start on synthetic demonstrations (PRCO starts from an instruct model; the tiny one has none).

Both results are cached under `model.cache_dir`, keyed by everything that determines them, and
written to `<dir>.tmp` first and renamed when complete, so an interrupted build is never reused.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prco_mega.types import Task, Trajectory

CACHE_VERSION = "5"  # bump when the recipe below changes


def cache_key(*parts: Any) -> str:
    blob = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_cached(out: Path, build: Callable[[Path], None], *, is_writer: bool = True) -> Path:
    """Run `build(tmp_dir)` unless `out` is complete; publish by rename (rank 0 only writes)."""
    if (out / "COMPLETE").exists():
        return out
    if is_writer:
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        (tmp / "COMPLETE").write_text("ok\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def training_corpus(tasks: list[Task], prompts: Any, seed: int) -> list[str]:
    """Text the tokenizer is trained on: the role prompts and demonstrations of synthetic tasks."""
    from prco_mega.data.demos import demonstrations

    rng, corpus = random.Random(seed), []
    for task in tasks:
        caption, answer = demonstrations(task, rng)
        corpus += [prompts.observer(task).text, prompts.solver(task, caption, True).text, answer]
    return corpus


def tiny_checkpoint(cache_dir: str | Path, tasks: list[Task], prompts: Any, seed: int,
                    sizes: dict[str, Any] | None = None) -> Path:
    """Build (once) the tiny random model with a tokenizer trained on the synthetic corpus;
    `sizes` overrides fields of `TinySizes`."""
    from prco_mega.data.tokenizer import make_tiny_checkpoint
    from prco_mega.models.tiny import TinySizes

    tiny = TinySizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in (sizes or {}).items()})
    # uids alone repeat across family mixes; the questions tell the corpora apart
    key = cache_key("tiny", seed, [(t.uid, t.question) for t in tasks[:4]],
                    *([sizes] if sizes else []))
    return build_cached(Path(cache_dir) / f"tiny-{key}", lambda d: make_tiny_checkpoint(
        d, training_corpus(tasks, prompts, seed), seed=seed, sizes=tiny, vocab_size=1024))


def demonstration_trajectories(tasks: list[Task], prompts: Any, tokenizer: Any, encoder: Any,
                               rng: random.Random, noise: Any) -> list[Trajectory]:
    """One Observer and one Solver demonstration per task; the Solver sees the image half the time
    (the caption-first warm-up and the later phase both start from here)."""
    from prco_mega.data.demos import demonstrations
    from prco_mega.learner.vision_inputs import expand_image_pads

    out = []
    for task in tasks:
        caption, answer = demonstrations(task, rng, noise)
        for prompt, response in ((prompts.observer(task), caption),
                                 (prompts.solver(task, caption, rng.random() < 0.5), answer)):
            ids = tokenizer.encode(prompt.text, add_special_tokens=False)
            resp = tokenizer.encode(response, add_special_tokens=False) + [tokenizer.eos_token_id]
            out.append(Trajectory(role=prompt.role, task_uid=task.uid, group_id=len(out),
                                  prompt_ids=expand_image_pads(ids, prompt.images, encoder),
                                  response_ids=resp, rollout_logprobs=[0.0] * len(resp),
                                  advantage=1.0, images=list(prompt.images)))
    return out


def warm_start(policy: Any, stream: Any, prompts: Any, tokenizer: Any, section: Any, seed: int,
               log: Callable[[int, dict], None]) -> None:
    """`section.steps` supervised steps (cross-entropy on responses, per-role global means)."""
    from prco_mega.data.demos import DemoNoise
    from prco_mega.learner.train_step import LossSettings

    settings = LossSettings(objective="sft")
    rng, noise = random.Random(seed), DemoNoise(section.drop, section.corrupt, section.bias,
                                                  section.misreads)
    for step in range(section.steps):
        trajs = demonstration_trajectories(stream.next_batch(), prompts, tokenizer, policy.encode,
                                           rng, noise)
        log(step, policy.step(trajs, settings))

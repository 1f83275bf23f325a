"""The warm-start stage: its product is the Hugging Face checkpoint RL starts from
(`prepare_model`). For the tiny CPU model that is a locally built Qwen2.5-VL-architecture
checkpoint and its supervised warm start on synthetic demonstrations (PRCO starts from an instruct
model; the tiny one has none); with `model.hf_path` and no warm-start steps, the checkpoint itself.

Both results are cached under `model.cache_dir`, keyed by everything that determines them, and
written to `<dir>.tmp` first and renamed when complete, so an interrupted build is never reused.
The stage builds its own learner and tears it down before RL builds the run's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prco_mega.bridge.hf_io import export_megatron_to_hf
from prco_mega.config import RunConfig
from prco_mega.data.synthetic import source_of
from prco_mega.dist import world
from prco_mega.families import family as family_of
from prco_mega.learner.loss_paths import LossSettings
from prco_mega.learner.parallel import destroy_parallel
from prco_mega.learner.vision_inputs import expand_image_pads
from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable
from prco_mega.runtime import build
from prco_mega.tiny.checkpoint import make_tiny_checkpoint
from prco_mega.tiny.demos import DemoNoise, demonstrations
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
    rng, corpus = random.Random(seed), []
    for task in tasks:
        caption, answer = demonstrations(task, rng)
        corpus += [prompts.observer(task).text, prompts.solver(task, caption, True).text, answer]
    return corpus


def tiny_checkpoint(cache_dir: str | Path, tasks: list[Task], prompts: Any, seed: int,
                    sizes: dict[str, Any] | None = None, family: str = "qwen2_5_vl") -> Path:
    """Build (once) the tiny random model of `family` with a tokenizer trained on the synthetic
    corpus; `sizes` overrides fields of its tiny sizes (`families.<family>.tiny`)."""
    tiny = family_of(family).tiny.sizes(**{k: tuple(v) if isinstance(v, list) else v
                                           for k, v in (sizes or {}).items()})
    # uids alone repeat across family mixes; the questions tell the corpora apart
    key = cache_key("tiny", seed, [(t.uid, t.question) for t in tasks[:4]],
                    *([sizes] if sizes else []),
                    *([family] if family != "qwen2_5_vl" else []))  # Qwen2.5-VL keys unchanged
    return build_cached(Path(cache_dir) / f"tiny-{key}", lambda d: make_tiny_checkpoint(
        d, training_corpus(tasks, prompts, seed), seed=seed, sizes=tiny, vocab_size=1024,
        family=family))


def demonstration_trajectories(tasks: list[Task], prompts: Any, tokenizer: Any, encoder: Any,
                               rng: random.Random, noise: Any) -> list[Trajectory]:
    """One Observer and one Solver demonstration per task; the Solver sees the image half the time
    (the caption-first warm-up and the later phase both start from here)."""
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
    """`section.steps` supervised steps (the policy's loss path is `loss_paths.Supervised`:
    cross-entropy on responses, per-role global means)."""
    rng, noise = random.Random(seed), DemoNoise(section.drop, section.corrupt, section.bias,
                                                  section.misreads)
    for step in range(section.steps):
        trajs = demonstration_trajectories(stream.next_batch(), prompts, tokenizer, policy.encode,
                                           rng, noise)
        log(step, policy.step(trajs))


# ----------------------------------------------------------------------------- the stage
def base_model(cfg: RunConfig) -> Path:
    """The Hugging Face checkpoint RL starts from (before any warm start)."""
    if cfg.model.hf_path:
        check_family(Path(cfg.model.hf_path), cfg.model.family)
        return Path(cfg.model.hf_path)
    source = source_of(cfg.data, cfg.run.seed + 30_011)
    corpus_tasks = [source.task(i) for i in range(1500)]
    out = None
    if world.is_host():
        out = tiny_checkpoint(cfg.model.cache_dir, corpus_tasks, build.prompt_set(cfg),
                              cfg.model.tiny_seed, cfg.model.tiny_sizes,
                              cfg.model.family or "qwen2_5_vl")
    world.barrier()
    return Path(world.broadcast(str(out)))


def check_family(hf_dir: Path, family: str | None) -> None:
    """ValueError if `model.family` is set and the checkpoint's config.json says otherwise (the
    checkpoint's model_type chooses the provider and the weight mapping)."""
    cfg = hf_dir / "config.json"
    if family is None or not cfg.is_file():
        return
    model_type = json.loads(cfg.read_text()).get("model_type")
    if model_type != family:
        raise ValueError(f"model.family is {family!r} but {cfg} has model_type {model_type!r}")


def warm_learner_config(cfg: RunConfig):
    """The learner section for the supervised warm start: its own LR, a short linear warm-up,
    then cosine decay to a tenth (a constant LR left the tiny model's loss bouncing on a plateau
    where it copied names but not the values next to them), and one update per step (the RL
    mini-batch count would shorten its schedule)."""
    ws, lc = cfg.warm_start, cfg.learner
    return dataclasses.replace(
        lc, optim=dataclasses.replace(lc.optim, lr=ws.lr, min_lr=ws.lr / 10),
        batching=dataclasses.replace(lc.batching, mini_batches=1),
        schedule=dataclasses.replace(lc.schedule, warmup_steps=max(1, ws.steps // 10),
                                     decay_steps=max(1, ws.steps), decay_style="cosine"))


def prepare_model(cfg: RunConfig) -> Path:
    """Base model, then (once, cached) its warm start; returns the checkpoint RL starts from."""
    base = base_model(cfg)
    ws = cfg.warm_start
    if ws.steps == 0:
        return base
    # The key holds what the warm start reads: not the RL batch size (tuning RL keeps the cache),
    # but the world size (data parallelism sums gradients in another order: other weights).
    data = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k != "prompts_per_step"}
    key = cache_key(str(base), dataclasses.asdict(ws), data, cfg.run.seed,
                    *([{"world": world.world_size()}] if world.world_size() > 1 else []))
    out = Path(cfg.model.cache_dir) / f"warm-{key}"
    if (out / "COMPLETE").exists():
        return out
    policy = build.make_policy(cfg, base, objective="sft", settings=LossSettings(),
                               learner=warm_learner_config(cfg))

    def log(step: int, m: dict) -> None:
        if world.is_host() and (step % 10 == 0 or step + 1 == ws.steps):
            print(f"warm start {step + 1}/{ws.steps}: nll {m.get('loss', float('nan')):.3f} "
                  f"lr {m.get('lr', 0):.2e}", flush=True)

    warm_start(policy, build.task_stream(cfg, ws.tasks_per_step, seed_offset=20_011),
               build.prompt_set(cfg), _tokenizer(base), ws, cfg.run.seed, log)
    _publish(policy, base, out)
    return out


def _publish(policy: Any, base: Path, out: Path) -> None:
    """Export the trained weights as `out` (written beside it, renamed when complete), then tear
    the stage's learner down so that RL builds its own."""
    tmp = out.with_name(out.name + ".tmp")
    export_megatron_to_hf(policy.chunks, tmp, policy.pg, policy.hf_config, copy_files_from=base)
    world.barrier()
    if world.is_host():
        (tmp / "COMPLETE").write_text("ok\n")
        tmp.rename(out)
    world.barrier()
    destroy_parallel()


def _tokenizer(model_dir: Path):
    ensure_torchvision_importable()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)

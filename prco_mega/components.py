"""Everything the controller's loop calls, built from the run config.

The algorithms differ only in which rollout and credit assigner they use (a table below), so the
loop itself has no per-algorithm branch. Heavy parts (vLLM, Megatron) are imported here, at the
edge, when a run starts.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prco_mega.config import RunConfig
from prco_mega.roles import PromptSet
from prco_mega.types import Role


def ensure_world() -> None:
    """A single process outside torchrun is a world of one (gloo on CPU, NCCL on GPU)."""
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"),
                       ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])


def init_world() -> None:
    """Start torch.distributed before anything else, so rank 0 alone builds cached artifacts while
    the other ranks wait (NCCL with CUDA, gloo without)."""
    import torch
    import torch.distributed as dist

    ensure_world()
    if dist.is_initialized():
        return
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())


def is_host() -> bool:
    """Rank 0 hosts the rollout engine, the data stream and the logs."""
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def prompt_set(cfg: RunConfig) -> PromptSet:
    r = cfg.roles
    return PromptSet(r.system_prompt, {Role.OBSERVER: r.observer_template,
                                        Role.SOLVER: r.solver_template,
                                        Role.SINGLE: r.single_template})


def synthetic_source(cfg: RunConfig, seed_offset: int = 0):
    from prco_mega.data.synthetic import SyntheticConfig, SyntheticTaskSource

    d = cfg.data
    kwargs = {"family_weights": d.families} if d.families else {}
    return SyntheticTaskSource(SyntheticConfig(image_size=d.image_size, difficulty=d.difficulty,
                                               seed=cfg.run.seed + seed_offset, **kwargs))


def task_stream(cfg: RunConfig, batch_size: int, seed_offset: int = 0):
    """The training stream: synthetic tasks by index, or a seeded walk over a local data file."""
    from prco_mega.data.stream import TaskStream, list_stream

    if cfg.data.source == "synthetic":
        return TaskStream(synthetic_source(cfg, seed_offset).task, batch_size, seed=cfg.run.seed)
    from prco_mega.data.reader import ReaderConfig, read_tasks

    tasks, stats = read_tasks(cfg.data.path, ReaderConfig(on_error=cfg.data.on_error,
                                                          image_backend=cfg.data.image_backend))
    print(f"data: {len(tasks)} tasks from {cfg.data.path} ({stats})")
    return list_stream(tasks, batch_size, cfg.run.seed)


def eval_tasks(cfg: RunConfig) -> list:
    """Held-out synthetic tasks: another seed than training's, the same families and difficulty."""
    source = synthetic_source(cfg, seed_offset=10_007)
    return [source.task(i) for i in range(cfg.run.eval_tasks)]


def loss_settings(cfg: RunConfig, **overrides: Any):
    from prco_mega.learner.train_step import LossSettings

    settings = LossSettings.from_algo(cfg.algo, temperature=cfg.learner.logprob_temperature)
    return dataclasses.replace(settings, **{"impl": cfg.kernels.impl, "tis_cap": cfg.algo.tis_cap,
                                            **overrides})


def leakage_checker(cfg: RunConfig, engine: Any) -> Callable:
    from prco_mega.rewards.leakage import RuleLeakageChecker

    if cfg.reward.leakage == "rule":
        return RuleLeakageChecker()
    if cfg.reward.leakage == "none":
        return lambda questions, captions, answers: [0] * len(captions)
    from prco_mega.rollout.judge import engine_judge

    return engine_judge(engine)


def _prco(cfg, engine, prompts, generator, shared):
    from prco_mega.rollout.two_stage import TwoStageRollout, settings_from_section
    from prco_mega.scoring import PRCOCredit

    rollout = TwoStageRollout(engine, prompts, settings_from_section(cfg.observer, cfg.run.seed),
                              settings_from_section(cfg.solver, cfg.run.seed + 1),
                              cfg.algo.warmup_steps)
    credit = PRCOCredit(leakage_checker(cfg, engine), generator, lam=cfg.reward.lam,
                        shared=shared, scale_by_std=cfg.algo.scale_by_std)
    return rollout, credit


def _single(cfg, engine, prompts, generator, dynamic_sampling):
    from prco_mega.rollout.single import SingleRoleRollout
    from prco_mega.rollout.two_stage import settings_from_section
    from prco_mega.scoring import SingleRoleCredit

    rollout = SingleRoleRollout(engine, prompts, settings_from_section(cfg.solver, cfg.run.seed))
    return rollout, SingleRoleCredit(lam=cfg.reward.lam, dynamic_sampling=dynamic_sampling)


ALGORITHMS: dict[str, Callable] = {
    "prco": lambda *a: _prco(*a, shared=False),
    "prco_shared": lambda *a: _prco(*a, shared=True),
    "grpo": lambda *a: _single(*a, dynamic_sampling=False),
    "dapo": lambda *a: _single(*a, dynamic_sampling=True),
}
"""algo.name -> (rollout, credit assigner) factory."""


@dataclass
class RunDirs:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"


def step_seed(seed: int, step: int) -> int:
    """Per-step seed, so a resumed run draws what the uninterrupted one drew at that step."""
    return (seed * 1_000_003 + step) % (2**63)

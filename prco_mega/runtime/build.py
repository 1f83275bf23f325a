"""The build layer: a `RunConfig` in, the run's parts out.

Everything the loop (`runtime.loop`) calls is made here from the config sections, once: the
data stream, the prompts, the learner with its loss path, the rollout engine, the algorithm's
sampler (`algo.registry.REGISTRY`), the evaluation. vLLM and Megatron are imported by the parts
that use them, when the run builds those. Nothing here imports the loop.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from prco_mega.algo import registry as algorithms
from prco_mega.algo.credit import LeakageFn
from prco_mega.bridge.hf_io import load_hf_config, load_hf_into_megatron
from prco_mega.config import RunConfig, to_dict
from prco_mega.data.reader import read_tasks
from prco_mega.data.stream import TaskStream, list_stream
from prco_mega.data.synthetic import held_out_tasks, source_of
from prco_mega.data.validate import reader_config
from prco_mega.dist.link import ROLE_ENGINE, current
from prco_mega.dist.world import broadcast, device, is_host, rank
from prco_mega.eval.report import comparison_table
from prco_mega.eval.synthetic import EvalResult, evaluate
from prco_mega.learner.loss_paths import LossSettings, make_loss_path
from prco_mega.learner.policy import MegatronPolicy
from prco_mega.rewards.leakage import RuleLeakageChecker
from prco_mega.roles import PromptSet
from prco_mega.rollout.engine import RolloutEngine
from prco_mega.rollout.judge import engine_judge
from prco_mega.rollout.placement import Shard, engine_placement
from prco_mega.rollout.two_stage import settings_from_section
from prco_mega.rollout.vllm_engine import VllmEngine
from prco_mega.runtime import samplers
from prco_mega.tracking.loggers import Loggers, make_loggers
from prco_mega.tracking.rollouts import RolloutSaver, write_eval_records
from prco_mega.types import Role


@dataclass
class RunDirs:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"


@dataclass
class EngineSide:
    """A rank's rollout engine and what samples with it (every rank in colocated placement, the
    engine ranks in separate placement): the rank hosts one rank of an engine, walks the same
    task stream as every other engine rank and samples its engine's block of each step."""

    cfg: RunConfig
    algo: algorithms.AlgoSettings
    """The algorithm's resolved preset (config values over the registry's)."""
    engine: RolloutEngine
    shard: Shard
    """This rank's engine among all engines: its block of a step, and gathering over engines."""
    stream: TaskStream
    sample: samplers.Sampler
    samples: RolloutSaver
    """Saves a sample of every Nth step's scored rollouts (`saved_rollouts`); collective over
    the engines' world."""


# ----------------------------------------------------------------------------- data and prompts
def prompt_set(cfg: RunConfig) -> PromptSet:
    r = cfg.roles
    return PromptSet(r.system_prompt, {Role.OBSERVER: r.observer_template,
                                        Role.SOLVER: r.solver_template,
                                        Role.SINGLE: r.single_template})


def task_stream(cfg: RunConfig, batch_size: int, seed_offset: int = 0) -> TaskStream:
    """The training stream: synthetic tasks by index, or a seeded walk over a local data file."""
    if cfg.data.source == "synthetic":
        source = source_of(cfg.data, cfg.run.seed + seed_offset)
        return TaskStream(source.task, batch_size, seed=cfg.run.seed)

    tasks, stats = read_tasks(cfg.data.path, reader_config(cfg.data))
    print(f"data: {len(tasks)} tasks from {cfg.data.path} ({stats})")
    return list_stream(tasks, batch_size, cfg.run.seed)


def leakage_checker(cfg: RunConfig, engine: Any) -> LeakageFn:
    if cfg.reward.leakage == "rule":
        return RuleLeakageChecker()
    if cfg.reward.leakage == "none":
        return lambda questions, captions, answers: [0] * len(captions)
    return engine_judge(engine)


# ----------------------------------------------------------------------------- learner
def resolved_algo(cfg: RunConfig) -> algorithms.AlgoSettings:
    return algorithms.resolve(cfg.algo, cfg.solver.max_new_tokens)


def loss_settings(cfg: RunConfig, algo: algorithms.AlgoSettings) -> LossSettings:
    a = cfg.algo
    correction, cap, band = a.correction()
    return LossSettings(clip_low=algo.clip_low, clip_high=algo.clip_high, dual_clip=a.dual_clip,
                        kl_coef=a.kl_coef, kl_kind=a.kl_kind, level=algo.level,
                        temperature=cfg.learner.logprob_temperature, tis_cap=cap,
                        correction=correction, correction_band=band)


def hf_weights(hf_dir: Path, hf_config: Any) -> Callable[[list, Any], Any]:
    """`load_weights(chunks, pg)` for the policy: the Hugging Face checkpoint through the bridge."""
    return lambda chunks, pg: load_hf_into_megatron(chunks, hf_dir, pg, hf_config)


def make_policy(cfg: RunConfig, model_dir: Path, *, objective: str, settings: LossSettings,
                learner: Any = None) -> MegatronPolicy:
    """The Megatron learner on `model_dir` with the loss path of `objective` ("ppo" or "sft"),
    chosen once here (`kernels.impl` for PPO; supervised steps run the torch path)."""
    impl = cfg.kernels.impl if objective == "ppo" else "torch"
    path = make_loss_path(objective, impl, settings, device())
    return policy_from_hf(model_dir, learner or cfg.learner, path,
                          freeze_vision=cfg.model.freeze_vision,
                          reference=objective == "ppo" and cfg.algo.kl_coef != 0,
                          routing_replay=cfg.algo.routing_replay if objective == "ppo" else "none")


def policy_from_hf(model_dir: Path, learner: Any, path: Any, **kwargs: Any) -> MegatronPolicy:
    """A `MegatronPolicy` with the loss path `path`, its weights read from the Hugging Face
    checkpoint `model_dir` (kwargs: `freeze_vision`, `reference`, `routing_replay`)."""
    hf_config = load_hf_config(model_dir)
    return MegatronPolicy(model_dir, hf_config, learner, path, hf_weights(model_dir, hf_config),
                          **kwargs)


# ----------------------------------------------------------------------------- engine and run
def shard_of(cfg: RunConfig) -> Shard:
    """This rank's place among the engines (colocated: every rank hosts one engine rank)."""
    if cfg.cluster is not None and cfg.cluster.rollout_placement != "colocated":
        # vLLM's external_launcher adopts the whole world as its own, so engines on a subset of
        # the ranks run in a world of their own (`dist.link.split_world`); the engines' world is
        # then this process's default group
        split = current()
        if split is None or split.role != ROLE_ENGINE:
            raise ValueError(f"cluster.rollout_placement {cfg.cluster.rollout_placement!r}: only "
                             "the engine ranks of a split world (`dist.link.split_world`) host "
                             "engines; the main job runs colocated placement only")
    world = dist.get_world_size() if dist.is_initialized() else 1
    return Shard(engine_placement(world, rank(), cfg.engine.tensor_parallel_size))


def start_engine(cfg: RunConfig, model_dir: Path) -> RolloutEngine:
    """This rank's rollout engine. Every rank builds its engine at the same moment (vLLM's
    start-up is collective over the world); in a torchrun world vLLM runs one worker per rank
    (`external_launcher`), engines of `engine.tensor_parallel_size` consecutive ranks."""
    threads = torch.get_num_threads()
    # Rollout routing replay needs the experts the engine routed each sample to.
    engine = VllmEngine(model_dir, dataclasses.replace(
        cfg.engine, return_routed_experts=cfg.algo.routing_replay == "rollout"))
    torch.set_num_threads(threads)  # vLLM's CPU engine pins the whole process to one thread
    return engine


def run_loggers(cfg: RunConfig, dirs: RunDirs, algo: algorithms.AlgoSettings) -> Loggers:
    """The loggers of `run.loggers` for the run's folder (opened by `Loggers.start`)."""
    r = cfg.run
    return make_loggers(r.loggers, dirs.root, total_steps=r.steps, run_name=r.name,
                        wandb_project=r.wandb_project, wandb_mode=r.wandb_mode,
                        config=resolved_config(cfg, algo))


def engine_side(cfg: RunConfig, dirs: RunDirs, model_dir: Path,
                algo: algorithms.AlgoSettings,
                sampling_engine: Callable[[Any], Any] | None = None) -> EngineSide:
    """This rank's engine (built at the same moment on every rank of its world), the task
    stream, the algorithm's sampler and the rollout saver. `sampling_engine(engine)` gives the
    engine the sampler draws from (e.g. `rollout.partial.PartialRollouts` around it); the
    evaluations use the engine itself."""
    shard = shard_of(cfg)
    engine = start_engine(cfg, model_dir)
    stream = task_stream(cfg, cfg.data.prompts_per_step)
    drawing = engine if sampling_engine is None else sampling_engine(engine)
    sample = samplers.build_sampler(cfg, algo, drawing, prompt_set(cfg),
                                    leakage_checker(cfg, engine), torch.Generator(), shard)
    samples = RolloutSaver(cfg.saved_rollouts, dirs.root / "rollouts", shard,
                           cfg.data.prompts_per_step)
    return EngineSide(cfg, algo, engine, shard, stream, sample, samples)


def announce(cfg: RunConfig, dirs: RunDirs, algo: algorithms.AlgoSettings) -> None:
    """The host prints the resolved algorithm and writes `config.json` into the run folder."""
    dirs.root.mkdir(parents=True, exist_ok=True)
    if is_host():
        print(f"algorithm {cfg.algo.name}: " + ", ".join(
            f"{k} {v}" for k, v in dataclasses.asdict(algo).items()), flush=True)
        (dirs.root / "config.json").write_text(json.dumps(resolved_config(cfg, algo), indent=1))


def resolved_config(cfg: RunConfig, algo: algorithms.AlgoSettings) -> dict:
    """The run's config as written to `config.json`: every section, and the algorithm's resolved
    preset under `algo_resolved`."""
    return {**to_dict(cfg), "algo_resolved": dataclasses.asdict(algo)}


# ----------------------------------------------------------------------------- evaluation
def evaluate_policy(side: EngineSide, path: Path, *, cache: bool) -> dict | None:
    """Greedy Observer -> Solver (with the image) on held-out tasks, plus the perception of
    captions sampled at the rollout's settings. Every engine evaluates its block of the tasks;
    the host gathers the records, writes the JSON and returns the summary (None elsewhere)."""
    cached = broadcast(cache and is_host() and path.exists())
    if cached:
        return json.loads(path.read_text()) if is_host() else None
    cfg = side.cfg
    tasks = held_out_tasks(cfg.data, cfg.run.seed, cfg.run.eval_tasks)
    # Captions sampled as the rollout samples them (no log-probs: nothing trains on them).
    sampled = dataclasses.replace(settings_from_section(cfg.observer, seed=cfg.run.seed),
                                  logprobs=False)
    block = side.shard.block(len(tasks))
    mode = algorithms.REGISTRY[cfg.algo.name].eval_mode
    mine = evaluate(side.engine, prompt_set(cfg), tasks[block.start:block.stop],
                    observer_max_tokens=cfg.observer.max_new_tokens,
                    solver_max_tokens=cfg.solver.max_new_tokens, mode=mode,
                    sampled_captions=sampled, offset=block.start).records if len(block) else []
    records = [r for part in side.shard.gather(mine) for r in part]
    if not is_host():
        return None
    summary = EvalResult(mode, records).summary()
    path.write_text(json.dumps(summary, indent=1))
    write_eval_records(path, records)  # per task, for `prco-mega inspect --compare`
    return summary


def write_report(root: Path, cfg: RunConfig, before: dict, after: dict) -> str:
    table = comparison_table(before, after)
    text = (f"# {cfg.run.name}: {cfg.algo.name}, {cfg.run.steps} steps, "
            f"{cfg.run.eval_tasks} held-out tasks\n\n{table}\n")
    (root / "report.md").write_text(text)
    print(text)
    return text

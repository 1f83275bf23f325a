"""Building a run: the model (tiny build + cached warm start), the learner, the engine, the
components; evaluation before and after training; the final report. Used by the controller."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from prco_mega import components as C
from prco_mega.config import RunConfig


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def base_model(cfg: RunConfig) -> Path:
    """The Hugging Face checkpoint RL starts from (before any warm start)."""
    from prco_mega.warm_start import tiny_checkpoint

    if cfg.model.hf_path:
        return Path(cfg.model.hf_path)
    source = C.synthetic_source(cfg, seed_offset=30_011)
    corpus_tasks = [source.task(i) for i in range(1500)]
    out = None
    if C.is_host():
        out = tiny_checkpoint(cfg.model.cache_dir, corpus_tasks, C.prompt_set(cfg),
                              cfg.model.tiny_seed, cfg.model.tiny_sizes)
    _barrier()
    from prco_mega.controller import broadcast

    return Path(broadcast(str(out)))


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
    from prco_mega.learner.parallel import destroy_parallel
    from prco_mega.learner.policy import MegatronPolicy
    from prco_mega.warm_start import cache_key, warm_start

    base = base_model(cfg)
    ws = cfg.warm_start
    if ws.steps == 0:
        return base
    # The key holds what the warm start reads: not the RL batch size (tuning RL keeps the cache).
    data = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k != "prompts_per_step"}
    key = cache_key(str(base), dataclasses.asdict(ws), data, cfg.run.seed)
    out = Path(cfg.model.cache_dir) / f"warm-{key}"
    if (out / "COMPLETE").exists():
        return out
    policy = MegatronPolicy(base, warm_learner_config(cfg),
                            C.loss_settings(cfg, objective="sft", impl="torch", tis_cap=None),
                            freeze_vision=cfg.model.freeze_vision)
    stream = C.task_stream(cfg, ws.tasks_per_step, seed_offset=20_011)
    tokenizer = _tokenizer(base)

    def log(step: int, m: dict) -> None:
        if C.is_host() and (step % 10 == 0 or step + 1 == ws.steps):
            print(f"warm start {step + 1}/{ws.steps}: nll {m.get('loss', float('nan')):.3f} "
                  f"lr {m.get('lr', 0):.2e}", flush=True)

    warm_start(policy, stream, C.prompt_set(cfg), tokenizer, ws, cfg.run.seed, log)
    tmp = out.with_name(out.name + ".tmp")
    policy.export_hf(tmp)
    _barrier()
    if C.is_host():
        (tmp / "COMPLETE").write_text("ok\n")
        tmp.rename(out)
    _barrier()
    del policy
    destroy_parallel()
    return out


def _tokenizer(model_dir: Path):
    from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable

    ensure_torchvision_importable()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def start_engine(cfg: RunConfig, model_dir: Path) -> Any:
    """The rollout engine on rank 0: in-process in a world of one, else in a child process
    (vLLM's in-process engine adopts an existing multi-rank default group and hangs)."""
    import torch.distributed as dist

    if not C.is_host():
        return None
    threads = torch.get_num_threads()
    if dist.get_world_size() == 1:
        from prco_mega.rollout.vllm_engine import VllmEngine

        engine = VllmEngine(model_dir, cfg.engine)
    else:
        from prco_mega.bridge.engine_host import EngineProcess

        engine = EngineProcess(model_dir, cfg.engine)
    torch.set_num_threads(threads)  # vLLM's CPU engine pins the whole process to one thread
    return engine


def build_run(cfg: RunConfig, dirs: C.RunDirs, model_dir: Path, logger: Any):
    from prco_mega.controller import Run
    from prco_mega.learner.policy import MegatronPolicy

    policy = MegatronPolicy(model_dir, cfg.learner, C.loss_settings(cfg),
                            freeze_vision=cfg.model.freeze_vision,
                            reference=cfg.algo.kl_coef != 0)
    engine = start_engine(cfg, model_dir)
    generator = torch.Generator()
    rollout, credit = C.ALGORITHMS[cfg.algo.name](cfg, engine, C.prompt_set(cfg), generator)
    stream = C.task_stream(cfg, cfg.data.prompts_per_step) if C.is_host() else None
    return Run(cfg, dirs, policy, engine, stream, rollout, credit, generator, logger)


def evaluate_policy(run: Any, path: Path, *, cache: bool) -> dict | None:
    """Greedy Observer -> Solver (with the image) on held-out tasks, plus the perception of
    captions sampled at the rollout's settings; rank 0 only; JSON on disk."""
    from prco_mega.eval.synthetic import evaluate
    from prco_mega.rollout.two_stage import settings_from_section

    if not C.is_host():
        return None
    if cache and path.exists():
        return json.loads(path.read_text())
    cfg = run.cfg
    mode = "single" if cfg.algo.name in ("grpo", "dapo") else "prco"
    # Captions sampled as the rollout samples them (no log-probs: nothing trains on them).
    sampled = dataclasses.replace(settings_from_section(cfg.observer, seed=cfg.run.seed),
                                  logprobs=False)
    result = evaluate(run.engine, C.prompt_set(cfg), C.eval_tasks(cfg),
                      observer_max_tokens=cfg.observer.max_new_tokens,
                      solver_max_tokens=cfg.solver.max_new_tokens, mode=mode,
                      sampled_captions=sampled)
    summary = result.summary()
    path.write_text(json.dumps(summary, indent=1))
    return summary


def write_report(root: Path, cfg: RunConfig, before: dict, after: dict) -> str:
    from prco_mega.eval.report import comparison_table

    table = comparison_table(before, after)
    text = (f"# {cfg.run.name}: {cfg.algo.name}, {cfg.run.steps} steps, "
            f"{cfg.run.eval_tasks} held-out tasks\n\n{table}\n")
    (root / "report.md").write_text(text)
    print(text)
    return text

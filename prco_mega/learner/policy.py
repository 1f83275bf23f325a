"""The learner as the controller sees it: trajectories in, metrics out; save, load, sync.

`MegatronPolicy` owns the Megatron model chunks, optimizer and LR schedule of this rank and hides
the packing, the schedules and the process groups behind four calls. Every rank of the world builds
one and makes the same calls in the same order (the calls are collective).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from prco_mega.learner.config import LearnerConfig
from prco_mega.learner.train_step import NonFiniteLoss  # noqa: F401  (raised by step)
from prco_mega.types import Trajectory


class MegatronPolicy:
    """Megatron-Core Qwen2.5-VL learner loaded from a Hugging Face checkpoint directory."""

    def __init__(self, hf_dir: str | Path, cfg: LearnerConfig, loss_settings: Any, *,
                 freeze_vision: bool = False, reference: bool = False):
        from prco_mega.bridge.hf_io import load_hf_config, load_hf_into_megatron
        from prco_mega.learner.model import build_model
        from prco_mega.learner.optim import build_optimizer
        from prco_mega.learner.parallel import init_parallel
        from prco_mega.learner.vision_inputs import VisionInputs

        par = cfg.parallel
        self.hf_dir, self.cfg, self.loss_settings = Path(hf_dir), cfg, loss_settings
        self.hf_config = load_hf_config(hf_dir)
        self.pg = init_parallel(par.tensor_parallel, par.pipeline_parallel,
                                par.virtual_pipeline_parallel, seed=cfg.seed,
                                hf_config=self.hf_config)
        chunks = build_model(self.hf_config, self.pg, freeze_vision=freeze_vision,
                             vpp=par.virtual_pipeline_parallel)
        # Weights first: the optimizer's fp32 master copies are taken from them.
        load_hf_into_megatron(chunks, hf_dir, self.pg, self.hf_config)
        self.chunks, self.optimizer, self.scheduler = build_optimizer(chunks, cfg, pg=self.pg)
        # The KL anchor is the checkpoint RL starts from, in the learner's own layout: a second
        # set of chunks, forward only (no optimizer state, no gradients). It is never saved: a
        # resumed run rebuilds it from `hf_dir`, so it stays the starting point, not a checkpoint.
        self.reference = _frozen_chunks(hf_dir, self.hf_config, self.pg, par) if reference else None
        self.encode = VisionInputs(hf_dir, self.hf_config)
        self.pad_token_id = int(self.hf_config.text_config.pad_token_id or 0)

    # ------------------------------------------------------------------ batches
    def micro_batches(self, trajectories: Sequence[Trajectory]):
        """This data-parallel rank's packed micro-batches of the step (global denominators)."""
        from prco_mega.learner.packing import plan_and_pack

        b = self.cfg.batching
        return plan_and_pack(trajectories, token_budget=b.micro_batch_tokens,
                             dp_size=self.pg.dp.size(), dp_rank=self.pg.dp.rank(),
                             level=self.loss_settings.level, encode=self.encode,
                             pad_to_multiple=b.pad_to_multiple, pad_token_id=self.pad_token_id)

    def logprobs(self, batches) -> list[torch.Tensor]:
        """[T_i] learner log-probs of each packed micro-batch's tokens (no gradients)."""
        from prco_mega.learner.train_step import compute_logprobs

        for chunk in self.chunks:
            chunk.eval()
        return compute_logprobs(self.chunks, batches, pg=self.pg,
                                temperature=self.loss_settings.temperature)

    def with_reference(self, batches: Sequence[Any]) -> list[Any]:
        """`batches` with `ref_logprobs` [T_i] filled in by the reference chunks."""
        from prco_mega.learner.train_step import compute_logprobs

        if self.reference is None:
            raise ValueError("a KL term (kl_coef != 0) needs the policy built with reference=True")
        ref = compute_logprobs(self.reference, batches, pg=self.pg,
                               temperature=self.loss_settings.temperature)
        return [dataclasses.replace(b, ref_logprobs=r) for b, r in zip(batches, ref, strict=True)]

    def mismatch(self, trajectories: Sequence[Trajectory]) -> dict[str, float]:
        """Train/rollout mismatch of the step's trajectories: learner log-probs (current weights,
        which produced the rollout) against the engine's, per role (mean/max |diff|, k3 KL)."""
        from prco_mega.bridge.mismatch import logprob_mismatch

        if not trajectories:
            return {}
        batches = self.micro_batches(trajectories)
        learner = self.logprobs(batches)
        cat = lambda name: torch.cat([getattr(b, name) for b in batches])  # noqa: E731
        stats = logprob_mismatch(torch.cat(learner), cat("old_logprobs"), cat("loss_mask"),
                                 cat("role_ids"))
        return _reduce_mismatch(stats, self.pg.dp)

    # ------------------------------------------------------------------ training
    def step(self, trajectories: Sequence[Trajectory], settings: Any = None) -> dict[str, float]:
        """The RL step's optimizer updates: one per mini-batch (`batching.mini_batches`). Raises
        `NonFiniteLoss` (naming the roles) instead of applying a NaN/inf update; the updates of
        the mini-batches before it stay applied. Metrics are means over the mini-batches."""
        from prco_mega.learner.train_step import compute_logprobs, train_step

        if not trajectories:
            raise ValueError("a learner step needs at least one trajectory")
        settings = settings or self.loss_settings
        packed = [self.micro_batches(part)
                  for part in deal(trajectories, self.cfg.batching.mini_batches)]
        if settings.kl_coef != 0.0:
            packed = [self.with_reference(batches) for batches in packed]
        # TIS weighs tokens by the learner's log-probs before the step: take them all before the
        # first update changes the weights (one mini-batch: train_step takes them itself).
        before = None
        if settings.tis_cap is not None and len(packed) > 1:
            for chunk in self.chunks:
                chunk.eval()
            before = [compute_logprobs(self.chunks, b, pg=self.pg,
                                       temperature=settings.temperature) for b in packed]
        for chunk in self.chunks:
            chunk.train()
        updates = [train_step(self.chunks, self.optimizer, self.scheduler, batches, settings,
                              pg=self.pg, check_finite=True,
                              learner_old_logprobs=None if before is None else before[i])
                   for i, batches in enumerate(packed)]
        self.encode.clear()
        return mean_metrics(updates)

    # ------------------------------------------------------------------ state
    def save(self, root: str | Path, step: int, data_state: dict | None = None) -> Path:
        from prco_mega.learner.checkpoint import save_checkpoint

        return save_checkpoint(root, step, self.chunks, self.optimizer, self.scheduler, pg=self.pg,
                               data_state=data_state, keep_last=self.cfg.checkpoint.keep_last)

    def load(self, path: str | Path) -> dict[str, Any]:
        from prco_mega.learner.checkpoint import load_checkpoint

        return load_checkpoint(path, self.chunks, self.optimizer, self.scheduler, pg=self.pg)

    def export_hf(self, out_dir: str | Path) -> Path:
        """Write the current weights as a Hugging Face checkpoint (config, tokenizer copied)."""
        from prco_mega.bridge.hf_io import export_megatron_to_hf

        export_megatron_to_hf(self.chunks, out_dir, self.pg, self.hf_config,
                              copy_files_from=self.hf_dir)
        return Path(out_dir)

    def sync_to(self, engine) -> Any:
        """Stream the weights into the rollout engine (collective; engine on rank 0 only)."""
        from prco_mega.bridge.sync import sync_weights

        return sync_weights(self.chunks, self.pg, self.hf_config, engine)


def _frozen_chunks(hf_dir: Path, hf_config: Any, pg: Any, par: Any) -> list[torch.nn.Module]:
    """Eval-mode chunks of `hf_dir` in this rank's layout, with no parameter requiring grad.
    Their random init (overwritten at once) runs under a forked CPU generator, so building the
    reference draws no numbers from the stream the rest of the run uses."""
    from prco_mega.bridge.hf_io import load_hf_into_megatron
    from prco_mega.learner.model import build_model

    with torch.random.fork_rng(devices=[]):
        chunks = build_model(hf_config, pg, vpp=par.virtual_pipeline_parallel)
    load_hf_into_megatron(chunks, hf_dir, pg, hf_config)
    for chunk in chunks:
        chunk.requires_grad_(False).eval()
    return chunks


def _reduce_mismatch(stats: dict[str, torch.Tensor], dp_group) -> dict[str, float]:
    """Combine per-rank mismatch stats over data parallelism (token-weighted means, max of max)."""
    import torch.distributed as dist

    if dp_group.size() > 1:
        for key, value in stats.items():
            if key.endswith("max_abs"):
                dist.all_reduce(value, op=dist.ReduceOp.MAX, group=dp_group)
            elif not key.endswith("tokens"):
                tokens = stats[key.rsplit("/", 1)[0] + "/tokens"]
                value.mul_(tokens)
                dist.all_reduce(value, group=dp_group)
        for key, value in stats.items():
            if key.endswith("tokens"):
                dist.all_reduce(value, group=dp_group)
        for key, value in stats.items():
            if not key.endswith(("max_abs", "tokens")):
                value.div_(stats[key.rsplit("/", 1)[0] + "/tokens"].clamp_min(1))
    return {k: float(v) for k, v in stats.items()}


def deal(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """`items` dealt round-robin into min(parts, len(items)) non-empty lists. The rollout lists a
    task's trajectories together, so dealing (not slicing) gives every mini-batch a share of
    each task and role; it is deterministic, so every rank (and a resumed run) splits alike."""
    if parts < 1:
        raise ValueError(f"mini-batches ({parts}) must be >= 1")
    k = min(parts, len(items))
    return [list(items[i::k]) for i in range(k)]


def mean_metrics(updates: Sequence[dict[str, float]]) -> dict[str, float]:
    """One step's metrics from its updates': the mean of each key (over the updates that report
    it), `lr` of the first update, `update_successful` of the worst, and `mini_batches`."""
    keys = dict.fromkeys(k for u in updates for k in u)
    out = {k: sum(u[k] for u in updates if k in u) / sum(k in u for u in updates) for k in keys}
    out["lr"] = updates[0]["lr"]
    out["update_successful"] = min(u["update_successful"] for u in updates)
    out["mini_batches"] = float(len(updates))
    return out

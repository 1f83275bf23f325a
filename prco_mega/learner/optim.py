"""Megatron's optimizer for the learner: DDP with contiguous grad buffers, Adam with the
distributed optimizer (state and fp32 master weights sharded over data-parallel ranks), optionally
kept and stepped on the host (`learner.optim.cpu_offload`, GPU only), global gradient-norm
clipping, and a warm-up + decay learning-rate schedule (a pure function).

Precision: bf16 parameters and compute with fp32 master weights and fp32 gradient reduction on
GPU; plain fp32 on CPU (`config.resolve_precision`).
"""
from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from typing import Any

import torch

from prco_mega.learner.config import (LearnerConfig, OptimizerConfig, ScheduleConfig,
                                      resolve_precision)
from prco_mega.learner.train_step import prepare_model_config


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, decay_steps: int | None,
          decay_style: str) -> float:
    """Learning rate of optimizer step `step` (0-based).

    Warm-up (`step < W`): `lr * (step + 1) / W`. Then with `p = (step - W) / (D - W)` clipped to
    [0, 1] (D = decay_steps): linear `min_lr + (lr - min_lr) * (1 - p)`, cosine
    `min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2`, constant `lr`. `D = None` means constant.
    """
    if step < 0:
        raise ValueError(f"step ({step}) must be >= 0")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay_style == "constant" or decay_steps is None:
        return lr
    span = decay_steps - warmup_steps
    p = 1.0 if span <= 0 else min(1.0, (step - warmup_steps) / span)
    if decay_style == "linear":
        return min_lr + (lr - min_lr) * (1.0 - p)
    if decay_style == "cosine":
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"decay_style {decay_style!r} is not one of ['constant', 'linear', 'cosine']")


class LRScheduler:
    """Applies `lr_at` (and the weight decay) to the optimizer's parameter groups. Call `step()`
    after each successful optimizer step. Megatron's per-group overrides (`max_lr`, `min_lr`,
    `wd_mult`, e.g. no decay on biases and norms) are honoured."""

    def __init__(self, optimizer: Any, optim: OptimizerConfig, schedule: ScheduleConfig):
        self.optimizer, self.optim, self.schedule = optimizer, optim, schedule
        self.num_steps = 0
        self._apply()

    def _lr(self, group: dict) -> float:
        return lr_at(self.num_steps, lr=group.get("max_lr", self.optim.lr),
                     min_lr=group.get("min_lr", self.optim.min_lr),
                     warmup_steps=self.schedule.warmup_steps, decay_steps=self.schedule.decay_steps,
                     decay_style=self.schedule.decay_style)

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(group)
            group["weight_decay"] = self.optim.weight_decay * group.get("wd_mult", 1.0)

    def current_lr(self) -> float:
        """LR the next optimizer step uses (of the default parameter group)."""
        return lr_at(self.num_steps, lr=self.optim.lr, min_lr=self.optim.min_lr,
                     warmup_steps=self.schedule.warmup_steps, decay_steps=self.schedule.decay_steps,
                     decay_style=self.schedule.decay_style)

    def step(self) -> None:
        self.num_steps += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"num_steps": self.num_steps}

    def load_state_dict(self, state: dict) -> None:
        self.num_steps = int(state["num_steps"])
        self._apply()


def _wrap_chunks(model_chunks: Sequence[torch.nn.Module], cfg: LearnerConfig, precision: str,
                 pg: Any) -> list[torch.nn.Module]:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.transformer.module import Float16Module

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=cfg.optim.distributed_optimizer,
    )
    wrapped = []
    for i, chunk in enumerate(model_chunks):
        config = chunk.config
        prepare_model_config(config)
        if precision == "bf16":
            config.bf16 = True
            config.params_dtype = config.pipeline_dtype = torch.bfloat16
            chunk = Float16Module(config, chunk)
        # Only the first chunk's buffer is bucketed; later chunks reduce in one go (as Megatron-LM).
        wrapped.append(DistributedDataParallel(config, ddp_config, chunk, disable_bucketing=i > 0,
                                               pg_collection=pg))
    return wrapped


def offload_fields(o: OptimizerConfig, precision: str, cuda_available: bool,
                   have_te: bool) -> dict[str, Any]:
    """Megatron `OptimizerConfig` fields of `learner.optim.cpu_offload` / `precision_aware`,
    or a ValueError where they cannot run (`OptimizerConfig.check_offload`).

    The gradient copies to the host and the weight copies back overlap the CPU Adam on their own
    CUDA streams (`overlap_cpu_optimizer_d2h_h2d`). `precision_aware` is refused without
    Transformer Engine rather than dropped: 0.16.1's `OptimizerConfig` compares TE's version,
    which is None without it.
    """
    o.check_offload(precision, cuda_available)
    if not o.cpu_offload:
        return {}
    if o.precision_aware and not have_te:
        raise ValueError("learner.optim.precision_aware (True) needs Transformer Engine, which "
                         "is not installed: Megatron 0.16.1 reads its version for the "
                         "precision-aware optimizer. Set precision_aware: false here (the fp32 "
                         "master copy then stays on the GPU as well as on the host)")
    return {"optimizer_cpu_offload": True, "optimizer_offload_fraction": o.offload_fraction,
            "use_precision_aware_optimizer": o.precision_aware,
            "overlap_cpu_optimizer_d2h_h2d": True}


def build_optimizer(model_chunks: Sequence[torch.nn.Module], cfg: LearnerConfig, *, pg: Any
                    ) -> tuple[list[torch.nn.Module], Any, LRScheduler]:
    """Wrap the model chunks (fp32, as built) in Megatron DDP and build Adam + the LR schedule.

    Returns `(ddp_chunks, optimizer, scheduler)`; use `ddp_chunks` from here on (train_step,
    checkpoints). `pg` is the Megatron ProcessGroupCollection of the layout.
    """
    from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
    from megatron.core.optimizer import get_megatron_optimizer

    precision = resolve_precision(cfg.precision, torch.cuda.is_available())
    o = cfg.optim
    offload = offload_fields(o, precision, torch.cuda.is_available(),
                             importlib.util.find_spec("transformer_engine") is not None)
    chunks = _wrap_chunks(model_chunks, cfg, precision, pg)
    mcfg = MegatronOptimizerConfig(
        optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps,
        clip_grad=o.clip_grad, bf16=precision == "bf16",
        params_dtype=torch.bfloat16 if precision == "bf16" else torch.float32,
        use_distributed_optimizer=o.distributed_optimizer, **offload,
    )
    # Gloo side groups only serve legacy optimizer-checkpoint formats we do not use.
    optimizer = get_megatron_optimizer(mcfg, chunks, use_gloo_process_groups=False,
                                       pg_collection=pg)
    config = chunks[0].config
    config.no_sync_func = [c.no_sync for c in chunks] if len(chunks) > 1 else chunks[0].no_sync
    config.grad_scale_func = optimizer.scale_loss
    return chunks, optimizer, LRScheduler(optimizer, cfg.optim, cfg.schedule)

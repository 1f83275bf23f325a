"""The learner as the loop sees it: trajectories in, metrics out; save, load.

`MegatronPolicy` owns the Megatron model chunks, optimizer and LR schedule of this rank and hides
the packing, the schedules and the process groups behind a few calls. Every rank of the learner's
world builds one and makes the same calls in the same order (the calls are collective). It knows
nothing of engines, links or routing: it takes its replica's trajectories and the step's plan.
Reading and writing Hugging Face checkpoints and the engine sync belong to the bridge: the build
layer hands the policy a `load_weights(chunks, pg)` function, and a publisher
(`bridge.colocated`, `bridge.remote`) reads `policy.chunks`.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from prco_mega.dist.world import device
from prco_mega.learner.checkpoint import load_checkpoint, save_checkpoint
from prco_mega.learner.config import LearnerConfig
from prco_mega.learner.loss_paths import LossPath, corrected, with_image_token
from prco_mega.learner.mismatch import finish_mismatch, lag_counts
from prco_mega.learner.optim import build_optimizer
from prco_mega.learner.packing import pack_plan, plan_and_pack, plan_step, shape_of
from prco_mega.learner.parallel import init_parallel
from prco_mega.learner.provider import build_model
from prco_mega.learner.routing_replay import install as install_replay
from prco_mega.learner.train_step import (
    NonFiniteLoss,  # noqa: F401  (raised by step)
    compute_logprobs,
    reduce_metrics,
    train_step,
)
from prco_mega.learner.vision_inputs import VisionInputs
from prco_mega.types import Trajectory

LoadWeights = Callable[[list, Any], Any]
"""`load_weights(chunks, pg)`: set the freshly built chunks' weights (e.g. from a Hugging Face
checkpoint, `bridge.hf_io.load_hf_into_megatron`)."""


class MegatronPolicy:
    """Megatron-Core learner (Qwen2.5-VL or Qwen3-VL: `learner.provider`) built for `hf_config`,
    its weights set by `load_weights`."""

    def __init__(self, hf_dir: str | Path, hf_config: Any, cfg: LearnerConfig, path: LossPath,
                 load_weights: LoadWeights, *, freeze_vision: bool = False,
                 reference: bool = False, routing_replay: str = "none"):
        par = cfg.parallel
        self.hf_dir, self.hf_config, self.cfg, self.path = Path(hf_dir), hf_config, cfg, path
        self.pg = init_parallel(par.tensor_parallel, par.pipeline_parallel,
                                par.virtual_pipeline_parallel, seed=cfg.seed, hf_config=hf_config,
                                ep=par.expert_parallel, etp=par.expert_tensor_parallel)
        chunks = build_model(hf_config, self.pg, freeze_vision=freeze_vision,
                             vpp=par.virtual_pipeline_parallel,
                             config_overrides=megatron_overrides(cfg, hf_config))
        # Weights first: the optimizer's fp32 master copies are taken from them.
        load_weights(chunks, self.pg)
        self.chunks, self.optimizer, self.scheduler = build_optimizer(chunks, cfg, pg=self.pg)
        # The KL anchor is the checkpoint RL starts from, in the learner's own layout: a second
        # set of chunks, forward only (no optimizer state, no gradients). It is never saved: a
        # resumed run rebuilds it with `load_weights`, so it stays the starting point.
        self.reference = (_frozen_chunks(hf_config, self.pg, par, load_weights,
                                         megatron_overrides(cfg, hf_config)) if reference
                          else None)
        self.encode = VisionInputs(hf_dir, hf_config)
        self.path = with_image_token(path, self.encode.image_token_id)  # metrics by token kind
        self.pad_token_id = int(hf_config.text_config.pad_token_id or 0)
        self.routing_replay = routing_replay
        self.replay = None if routing_replay == "none" else install_replay(
            self.chunks, hf_config, routing_replay, image_token_id=self.encode.image_token_id,
            pg=self.pg)

    # ------------------------------------------------------------------ batches
    def micro_batches(self, trajectories: Sequence[Trajectory]):
        """This data-parallel rank's packed micro-batches of the step (global denominators)."""
        b = self.cfg.batching
        return plan_and_pack(trajectories, token_budget=b.micro_batch_tokens,
                             dp_size=self.pg.dp.size(), dp_rank=self.pg.dp.rank(),
                             level=self.path.settings.level, encode=self.encode,
                             pad_to_multiple=b.pad_to_multiple, pad_token_id=self.pad_token_id)

    def logprobs(self, batches, chunks=None) -> list[torch.Tensor]:
        """[T_i] log-probs of each packed micro-batch's tokens under `chunks` (default: the
        policy's), no gradients."""
        chunks = self.chunks if chunks is None else chunks
        for chunk in chunks:
            chunk.eval()
        return compute_logprobs(chunks, batches, pg=self.pg,
                                temperature=self.path.settings.temperature)

    def with_reference(self, batches: Sequence[Any]) -> list[Any]:
        """`batches` with `ref_logprobs` [T_i] filled in by the reference chunks."""
        if self.reference is None:
            raise ValueError("a KL term (kl_coef != 0) needs the policy built with reference=True")
        ref = self.logprobs(batches, self.reference)
        return [dataclasses.replace(b, ref_logprobs=r) for b, r in zip(batches, ref, strict=True)]

    # ------------------------------------------------------------------ training
    def step(self, trajectories: Sequence[Trajectory]) -> dict[str, float]:
        """The RL step's optimizer updates on the whole step (every rank passes the same list):
        one per mini-batch (`batching.mini_batches`). Raises `NonFiniteLoss` (naming the roles)
        instead of applying a NaN/inf update; the updates of the mini-batches before it stay
        applied. Metrics are means over the mini-batches, with the train/rollout mismatch of the
        step's log-probs before the first update. A run whose ranks each hold a part of the step
        routes it first (`dist.routing`) and calls `train`.

        The learner's pre-update log-probs (mismatch metric, off-policy correction) come from the
        training forward itself when the step is one mini-batch; with several, or a correction
        the loss path cannot apply chunk by chunk, one pass before the first update serves both
        (the later mini-batches' forwards see updated weights)."""
        return self.train(dict(enumerate(trajectories)),
                          self.plan([shape_of(t) for t in trajectories]))

    def train(self, mine: dict[int, Trajectory], plan, step: int | None = None
              ) -> dict[str, float]:
        """`step` on this replica's trajectories (by step-wide id) of a planned step (`plan`,
        the same on every rank; `dist.routing.Router.route` gives both). Given the RL `step`
        being trained, the metrics add the policy-lag histogram of the step's trajectories."""
        b = self.cfg.batching
        self._check_routing(mine)
        packed = pack_plan(mine, plan, self.pg.dp.rank(), encode=self.encode,
                           pad_to_multiple=b.pad_to_multiple, pad_token_id=self.pad_token_id)
        if self.routing_replay != "rollout":  # only rollout replay reads the engine's routing
            packed = [[dataclasses.replace(x, routed_experts=None) for x in batches]
                      for batches in packed]
        if self.path.settings.kl_coef != 0.0:
            packed = [self.with_reference(batches) for batches in packed]
        path, before = self.path, {} if step is None else self._lag_counts(mine, step)
        pre_pass = self.path.reads_rollout and (len(packed) > 1 or not path.corrects_in_forward)
        # R2 records the routing of the first pass over the step; only a step with a later pass
        # (several mini-batches, or a pre-step pass) has somewhere to replay it.
        record = self.routing_replay == "learner" and (len(packed) > 1 or pre_pass)
        with self._recording(record):
            if pre_pass:
                packed, stats = self._pre_step_pass(packed)
                before |= stats
                path = dataclasses.replace(path, from_forward=False)
            elif record:
                self.logprobs([x for batches in packed for x in batches])
        if record:
            packed = self._with_recorded(packed)
        for chunk in self.chunks:
            chunk.train()
        updates = [train_step(self.chunks, self.optimizer, self.scheduler, batches, path,
                              pg=self.pg, check_finite=True) for batches in packed]
        self.encode.clear()
        if self.replay is not None:
            before |= self.replay.end_step()
        return clip_fractions(finish_mismatch({**mean_metrics(updates), **before}))

    def _check_routing(self, mine: dict[int, Trajectory]) -> None:
        """Start the step's routing replay; rollout replay needs every trajectory's routing."""
        if self.replay is not None:
            self.replay.begin_step()
        missing = [i for i, t in mine.items() if t.routed_experts is None]
        if self.routing_replay == "rollout" and missing:
            raise ValueError(f"algo.routing_replay: rollout, but {len(missing)} of the step's "
                             f"trajectories (ids {missing[:5]}...) carry no engine routing: "
                             "build the engine with engine.return_routed_experts")

    def _recording(self, record: bool):
        return self.replay.mode(record=True) if record else contextlib.nullcontext()

    def _with_recorded(self, packed: list[list[Any]]) -> list[list[Any]]:
        """`packed` with each micro-batch's routing as this rank's routers recorded it."""
        it = iter(self.replay.take_recorded([x for batches in packed for x in batches]))
        return [[next(it) for _ in batches] for batches in packed]

    def plan(self, shapes: Sequence[Any]):
        """The step's `packing.StepPlan` for this learner's batching and data parallelism."""
        if not shapes:
            raise ValueError("a learner step needs at least one trajectory")
        b = self.cfg.batching
        if b.micro_batch_tokens % b.pad_to_multiple:
            raise ValueError(f"pad_to_multiple ({b.pad_to_multiple}) must divide "
                             f"micro_batch_tokens ({b.micro_batch_tokens}), else padding could "
                             "overflow the budget")
        return plan_step(shapes, mini_batches=b.mini_batches, token_budget=b.micro_batch_tokens,
                         dp_size=self.pg.dp.size(), level=self.path.settings.level)

    def _pre_step_pass(self, packed: list[list[Any]]) -> tuple[list[list[Any]], dict[str, float]]:
        """One no-gradient pass over every mini-batch before the first update: the batches
        rewritten for the off-policy correction and the mismatch and correction statistics
        (reduced over data parallelism)."""
        flat = [b for batches in packed for b in batches]
        roles = sorted({int(r) for b in flat for r in b.role_denominators})
        done = [corrected(b, lp, self.path.settings, roles)
                for b, lp in zip(flat, self.logprobs(flat), strict=True)]
        it = iter(b for b, _ in done)
        return ([[next(it) for _ in batches] for batches in packed],
                reduce_metrics([s for _, s in done], pp_group=_NoPipeline(), dp_group=self.pg.dp))

    def _lag_counts(self, mine: dict[int, Trajectory], step: int) -> dict[str, float]:
        """`mismatch.lag_counts` of the step's trajectories: host integers, summed over the
        data-parallel replicas (one small collective where there are several)."""
        versions = [t.policy_version for t in mine.values()]
        if self.pg.dp.size() == 1:
            return {k: float(v) for k, v in lag_counts(versions, step).items()}
        return reduce_metrics([lag_counts(versions, step, device())], pp_group=_NoPipeline(),
                              dp_group=self.pg.dp)

    # ------------------------------------------------------------------ state
    def save(self, root: str | Path, step: int, data_state: dict | None = None) -> Path:
        return save_checkpoint(root, step, self.chunks, self.optimizer, self.scheduler, pg=self.pg,
                               data_state=data_state, keep_last=self.cfg.checkpoint.keep_last)

    def load(self, path: str | Path) -> dict[str, Any]:
        return load_checkpoint(path, self.chunks, self.optimizer, self.scheduler, pg=self.pg)


def megatron_overrides(cfg: LearnerConfig, hf_config: Any) -> dict[str, Any]:
    """The `TransformerConfig` fields the learner config sets: its recompute (the one the planner
    counts), sequence parallel (TP > 1 only), and for a mixture-of-experts model the router's
    losses (`learner.moe`)."""
    out = dict(cfg.recompute.megatron_fields())
    if cfg.parallel.sequence_parallel and cfg.parallel.tensor_parallel > 1:
        out["sequence_parallel"] = True
    if getattr(getattr(hf_config, "text_config", hf_config), "num_experts", 0):
        out.update(cfg.moe.megatron_fields())
    return out


def _frozen_chunks(hf_config: Any, pg: Any, par: Any, load_weights: LoadWeights,
                   overrides: dict[str, Any]) -> list[torch.nn.Module]:
    """Eval-mode chunks of the starting weights in this rank's layout, with no parameter
    requiring grad. Their random init (overwritten at once) runs under a forked CPU generator, so
    building the reference draws no numbers from the stream the rest of the run uses."""
    with torch.random.fork_rng(devices=[]):
        chunks = build_model(hf_config, pg, vpp=par.virtual_pipeline_parallel,
                             config_overrides=overrides)
    load_weights(chunks, pg)
    for chunk in chunks:
        chunk.requires_grad_(False).eval()
    return chunks


class _NoPipeline:
    """A one-stage stand-in for `reduce_metrics`: every rank already holds its own log-probs."""

    def size(self) -> int:
        return 1

    def rank(self) -> int:
        return 0


def clip_fractions(metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` with `<role>/clip_frac` = clipped / weighted tokens wherever a loss path reports
    those counts (the fused path's kernel sums) instead of the fraction itself."""
    out = dict(metrics)
    for key, clipped in metrics.items():
        prefix = key.removesuffix("/clipped_tokens")
        if prefix != key and metrics.get(f"{prefix}/tokens", 0) > 0:
            out[f"{prefix}/clip_frac"] = clipped / metrics[f"{prefix}/tokens"]
    return out


def mean_metrics(updates: Sequence[dict[str, float]]) -> dict[str, float]:
    """One step's metrics from its updates': the mean of each key (over the updates that report
    it), `lr` of the first update, `update_successful` of the worst, and `mini_batches`."""
    keys = dict.fromkeys(k for u in updates for k in u)
    out = {k: sum(u[k] for u in updates if k in u) / sum(k in u for u in updates) for k in keys}
    out["lr"] = updates[0]["lr"]
    out["update_successful"] = min(u["update_successful"] for u in updates)
    out["mini_batches"] = float(len(updates))
    return out

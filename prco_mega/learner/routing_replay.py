"""Routing replay for mixture-of-experts learners (`algo.routing_replay`).

A MoE policy's log-prob depends on which experts each token is routed to, and the engine and the
learner route differently (other kernels, other precision, weights a few updates apart): most
tokens take another expert in at least one layer, and the train/rollout mismatch grows with it.
Replay makes the learner's forward use routing it is given instead of its own top-k:

- `rollout` (R3): the engine's routing. Each trajectory carries `routed_experts` [T, L, k] (the
  engine's top-k per position and MoE layer, `rollout.vllm_routing`); packing lays them out like the
  tokens (`TrainBatch.routed_experts`) and every forward of the step replays them.
- `learner` (R2): the learner's own routing of its first pass over the step's micro-batches
  (recorded), replayed by the later passes, so the updates of later mini-batches do not move it.

How: Megatron-Core's top-k routing calls a per-router `router_replay` object for its top-k
(`moe_utils.topk_routing_with_score_function`). `install` gives every `TopKRouter` of the policy's
chunks a `LayerReplay` of ours, not Megatron's `RouterReplay` (whose instances sit in one
class-level list shared by every model in the process: the reference model's routers and the
policy's would mix). On replay the probabilities are the router's scores gathered at the given
experts, so the router keeps its gradients.

Shards: the router sees this rank's local tokens. Under sequence parallelism that is the rank's
1/TP slice of the (pipeline-padded) micro-batch; otherwise every TP rank sees all of it. Pipeline
stages hold their own layers (Megatron numbers decoder layers globally). Expert parallelism routes
before the dispatch, so it changes nothing here. Activation recompute (full, or of the MoE module)
re-runs the router inside the backward, after later micro-batches' forwards may have set other
targets: each forward's targets are also queued, and a recompute (recognised by running inside the
autograd engine) takes the oldest.

Agreement metrics: with targets from the engine, every forward also computes the learner's own
top-k (one top-k over [tokens, experts], no gradient) and counts per layer, role and token kind
(image-pad vs text positions) how many tokens it routes to the same set of experts.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from prco_mega.dist.world import device
from prco_mega.types import Role, TrainBatch

MODES = ("none", "learner", "rollout")
_ROLES = (Role.OBSERVER, Role.SOLVER, Role.SINGLE)
_KINDS = ("text", "image")
N_CATEGORIES = len(_ROLES) * len(_KINDS)
"""Token categories of the agreement counts: role x (text, image) position."""


# ----------------------------------------------------------------------------- pure helpers
def same_sets(a: Tensor, b: Tensor) -> Tensor:
    """[T] bool: row t of `a` and `b` ([T, k] expert ids) name the same experts (any order)."""
    return (a.sort(dim=-1).values == b.to(a.dtype).sort(dim=-1).values).all(dim=-1)


def padding_rows(n: int, layers: int, top_k: int, dtype: torch.dtype = torch.uint8) -> Tensor:
    """[n, L, k] routing for padding tokens: experts 0..k-1 (distinct, as top-k ids are; the
    tokens carry no loss and attend to nothing real)."""
    return torch.arange(top_k, dtype=dtype).expand(n, layers, top_k).clone()


def token_categories(batch: TrainBatch, image_token_id: int | None) -> Tensor:
    """[T] int64 category of each token (`N_CATEGORIES`: role x text/image position), -1 for
    padding."""
    role = batch.role_ids.long()
    image = (torch.zeros_like(batch.tokens, dtype=torch.bool) if image_token_id is None
             else batch.tokens == image_token_id)
    cat = role * len(_KINDS) + image.long()
    return torch.where((role >= 0) & (role < len(_ROLES)), cat, torch.full_like(cat, -1))


def local_rows(total: int, tp_rank: int, tp_size: int, sequence_parallel: bool) -> slice:
    """The rows of a micro-batch of `total` tokens this rank's routers see."""
    if not sequence_parallel or tp_size == 1:
        return slice(0, total)
    if total % tp_size:
        raise ValueError(f"sequence parallelism needs the micro-batch length ({total}) divisible "
                         f"by TP ({tp_size}): set learner.batching.pad_to_multiple")
    part = total // tp_size
    return slice(tp_rank * part, (tp_rank + 1) * part)


def agreement_metrics(counts: Tensor) -> dict[str, float]:
    """Metrics from the summed counts [L, N_CATEGORIES, 2] (agreeing tokens, tokens):
    `moe/agree` over all tokens and layers, `moe/agree/layer_<l>` per layer and
    `moe/<role>/<kind>/agree` per role and token kind (only where there are tokens)."""
    out: dict[str, float] = {}
    agree, total = counts[..., 0], counts[..., 1]
    if float(total.sum()) == 0:
        return out
    out["moe/agree"] = float(agree.sum() / total.sum())
    for layer in range(counts.shape[0]):
        if float(total[layer].sum()) > 0:
            out[f"moe/agree/layer_{layer}"] = float(agree[layer].sum() / total[layer].sum())
    for c in range(N_CATEGORIES):
        if float(total[:, c].sum()) > 0:
            role, kind = _ROLES[c // len(_KINDS)], _KINDS[c % len(_KINDS)]
            out[f"moe/{role.name.lower()}/{kind}/agree"] = float(agree[:, c].sum()
                                                                 / total[:, c].sum())
    return out


# ----------------------------------------------------------------------------- the router hook
class LayerReplay:
    """Megatron's `router_replay` hook of one MoE layer (the `get_replay_topk` it calls).

    Per forward: `target` [local tokens, k] replays (`apply`) or is only compared against
    (`apply=False`); without a target, `record` keeps the router's own top-k. `counts` sums the
    agreement of the router's own top-k with the targets per token category."""

    def __init__(self, layer: int, requeue_on_recompute: bool):
        self.layer = layer
        """0-based MoE layer index (the L axis of `routed_experts`)."""
        self.requeue_on_recompute = requeue_on_recompute
        self.target: Tensor | None = None
        self.categories: Tensor | None = None
        self.apply = True
        self.record = False
        self.training = False
        self.recorded: list[Tensor] = []
        self.queue: list[Tensor] = []
        self.counts: Tensor | None = None

    def get_replay_topk(self, scores: Tensor, topk: int, num_groups=None, group_topk=None,
                        default_compute_topk=None) -> tuple[Tensor, Tensor]:
        if torch._C._current_graph_task_id() != -1:  # a recompute inside the backward
            if self.requeue_on_recompute and self.queue:
                ids = self.queue.pop(0).to(scores.device)
                return scores.gather(1, ids), ids
            return default_compute_topk(scores, topk, num_groups, group_topk)
        if self.target is None:
            probs, ids = default_compute_topk(scores, topk, num_groups, group_topk)
            if self.record:
                self.recorded.append(ids.detach())
            return probs, ids
        ids = self.target.to(scores.device, torch.long)
        if ids.shape != (scores.shape[0], topk):
            raise ValueError(f"routing replay of layer {self.layer}: {tuple(ids.shape)} expert ids "
                             f"for {scores.shape[0]} local tokens x top-{topk}")
        with torch.no_grad():
            own = default_compute_topk(scores.detach(), topk, num_groups, group_topk)[1]
            self._count(same_sets(own, ids))
        if not self.apply:
            return default_compute_topk(scores, topk, num_groups, group_topk)
        if self.requeue_on_recompute and self.training:
            # (not `torch.is_grad_enabled()`: a checkpointed forward runs under no_grad)
            self.queue.append(ids)
        return scores.gather(1, ids), ids

    def _count(self, agree_T: Tensor) -> None:
        cats = self.categories.to(agree_T.device)
        keep = cats >= 0
        if self.counts is None:
            self.counts = torch.zeros(N_CATEGORIES, 2, dtype=torch.float64, device=agree_T.device)
        self.counts[:, 0].index_add_(0, cats[keep], agree_T[keep].double())
        self.counts[:, 1].index_add_(0, cats[keep], torch.ones_like(agree_T[keep], dtype=torch.float64))


@dataclasses.dataclass
class ChunkReplay:
    """The replay hooks of one model chunk and the shard facts needed to slice its targets."""

    layers: list[LayerReplay]
    tp_rank: int
    tp_size: int
    sequence_parallel: bool


class RoutingReplay:
    """Routing replay over a policy's chunks (`install`): which batches replay, record or only
    compare, and the step's agreement counts."""

    def __init__(self, chunks: Sequence[torch.nn.Module], num_layers: int, top_k: int, *,
                 image_token_id: int | None, pg: Any):
        from megatron.core.transformer.moe.router import TopKRouter
        from megatron.core.utils import get_model_config

        self.num_layers, self.top_k, self.image_token_id, self.pg = (
            num_layers, top_k, image_token_id, pg)
        self.apply = True
        self.record = False
        self._chunks: dict[int, ChunkReplay] = {}
        for chunk in chunks:
            config = get_model_config(chunk)
            if config.moe_router_fusion:
                # Transformer Engine's fused top-k never calls the replay hook
                raise ValueError("routing replay needs Megatron's unfused top-k routing "
                                 "(moe_router_fusion is on)")
            requeue = config.recompute_granularity == "full" or (
                config.recompute_granularity == "selective"
                and "moe" in (config.recompute_modules or ()))
            layers = []
            for module in chunk.modules():
                if isinstance(module, TopKRouter):
                    module.router_replay = LayerReplay(module.layer_number - 1, requeue)
                    layers.append(module.router_replay)
            self._chunks[id(chunk)] = ChunkReplay(layers, pg.tp.rank(), pg.tp.size(),
                                                  bool(config.sequence_parallel))
            # On the chunk itself (not a registry keyed by id, which a later model could reuse):
            # the model forward finds it there (`replay_scope`).
            chunk._prco_routing_replay = self

    @property
    def layers(self) -> Iterator[LayerReplay]:
        return (layer for c in self._chunks.values() for layer in c.layers)

    @contextmanager
    def forward(self, chunk: torch.nn.Module, batch: TrainBatch) -> Iterator[None]:
        """Around one chunk's forward of `batch`: its targets (the rows of `batch.routed_experts`
        this rank's routers see) set, or recording on."""
        c = self._chunks.get(id(chunk))
        if c is None:
            yield
            return
        rows = local_rows(batch.num_tokens, c.tp_rank, c.tp_size, c.sequence_parallel)
        routed = batch.routed_experts
        cats = token_categories(batch, self.image_token_id)[rows]
        for layer in c.layers:
            layer.target = None if routed is None else routed[rows, layer.layer]
            layer.categories, layer.apply, layer.record = cats, self.apply, self.record
            layer.training = chunk.training  # a training pass: its backward may recompute
        try:
            yield
        finally:
            for layer in c.layers:
                layer.target = layer.categories = None

    @contextmanager
    def mode(self, *, apply: bool = True, record: bool = False) -> Iterator[None]:
        """Within: targets replay (`apply`) or are only compared; batches without targets have
        their routing recorded (`record`)."""
        before = self.apply, self.record
        self.apply, self.record = apply, record
        try:
            yield
        finally:
            self.apply, self.record = before

    def take_recorded(self, batches: Sequence[TrainBatch]) -> list[TrainBatch]:
        """`batches` (the micro-batches of the pass that recorded, in order) with
        `routed_experts` set from what this rank's routers recorded: the rows and layers this
        rank routes (the only ones it replays); the rest stays 0. Clears the records."""
        out = [dataclasses.replace(b, routed_experts=torch.zeros(
            b.num_tokens, self.num_layers, self.top_k, dtype=torch.int16)) for b in batches]
        for c in self._chunks.values():
            for layer in c.layers:
                # A pipeline schedule may have padded the pass (longer micro-batches, and extra
                # padding micro-batches after the real ones): keep the real rows.
                for b, ids in zip(out, layer.recorded):
                    padded = ids.shape[0] * (c.tp_size if c.sequence_parallel else 1)
                    rows = local_rows(padded, c.tp_rank, c.tp_size, c.sequence_parallel)
                    stop = min(rows.stop, b.num_tokens)
                    if stop > rows.start:
                        b.routed_experts[rows.start:stop, layer.layer] = (
                            ids[: stop - rows.start].to("cpu", torch.int16))
                layer.recorded = []
        return out

    def begin_step(self) -> None:
        """Forget what a step that did not finish (a refused non-finite loss) left behind:
        recompute queues, records and counts."""
        for layer in self.layers:
            layer.queue, layer.recorded, layer.counts = [], [], None

    def end_step(self) -> dict[str, float]:
        """The step's agreement metrics (collective over the learner's world), counts reset."""
        counts = torch.zeros(self.num_layers, N_CATEGORIES, 2, dtype=torch.float64)
        for c in self._chunks.values():
            duplicate = c.tp_size > 1 and not c.sequence_parallel and c.tp_rank != 0
            for layer in c.layers:
                if layer.counts is not None and not duplicate:
                    counts[layer.layer] += layer.counts.cpu()
                layer.counts, layer.queue = None, []
        counts = counts.to(device())
        for group, needed in ((self.pg.dp, True), (self.pg.tp, any(
                c.sequence_parallel for c in self._chunks.values())), (self.pg.pp, True)):
            if needed and group.size() > 1:
                dist.all_reduce(counts, group=group)
        return agreement_metrics(counts.cpu())


@contextmanager
def replay_scope(chunk: torch.nn.Module, batch: TrainBatch) -> Iterator[None]:
    """`RoutingReplay.forward` of the chunk's replay, if it has one (`install`); else nothing.
    The model forward (`forward.qwen_vl_forward`) enters it, so no caller passes hooks around."""
    replay = getattr(chunk, "_prco_routing_replay", None)
    if replay is None:
        yield
        return
    with replay.forward(chunk, batch):
        yield


def install(chunks: Sequence[torch.nn.Module], hf_config: Any, mode: str, *,
            image_token_id: int | None, pg: Any) -> RoutingReplay:
    """Routing-replay hooks (`mode`: learner or rollout) on every router of `chunks`, a
    mixture-of-experts policy's; ValueError for a dense model or an unknown mode."""
    tc = getattr(hf_config, "text_config", hf_config)
    if mode not in MODES[1:]:
        raise ValueError(f"algo.routing_replay {mode!r}: one of {list(MODES)}")
    if not getattr(tc, "num_experts", 0):
        raise ValueError(f"algo.routing_replay: {mode} needs a mixture-of-experts model; "
                         f"{getattr(hf_config, 'model_type', 'this model')} is dense (no "
                         "num_experts): set routing_replay: none")
    return RoutingReplay(chunks, tc.num_hidden_layers, tc.num_experts_per_tok,
                         image_token_id=image_token_id, pg=pg)

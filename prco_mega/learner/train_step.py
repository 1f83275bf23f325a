"""Log-probs and the PRCO loss through Megatron-Core's pipeline schedules.

`train_step` runs one optimizer step over this rank's packed micro-batches with
`get_forward_backward_func()` (no pipelining, 1F1B, or interleaved 1F1B with several model
chunks); `compute_logprobs` is the same forward without gradients (old-policy recompute,
reference log-probs).

Loss normalisation (why the step loss does not depend on how it is split): every micro-batch
returns its share `sum_t l_t / D_role` with the step's GLOBAL per-role denominators, so the step
loss is the plain SUM of the shares over micro-batches and data-parallel ranks. Megatron's
schedule is told exactly that: `calculate_per_token_loss=True` makes it use the returned loss as
is (no division by the micro-batch count or the returned token count) and makes DDP sum, not
average, gradients over data-parallel ranks; `finalize_model_grads` is called without the token
count (it would divide once more). `prepare_model_config` (called by `optim.build_optimizer`,
before DDP wraps the model) sets these.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from prco_mega.types import TrainBatch

ModelForward = Callable[[torch.nn.Module, TrainBatch], Tensor]
"""`model_forward(model_chunk, batch)`: the chunk's output for a packed micro-batch: on the last
pipeline stage vocab-parallel logits `[1, T, V/tp]`, elsewhere the hidden states Megatron sends
on."""


@dataclass(frozen=True)
class LossSettings:
    """What `prco_loss` needs besides the batch (build it from the run's algo section)."""

    clip_low: float = 0.2
    """PPO ratio lower clip: rho >= 1 - clip_low."""
    clip_high: float = 0.2
    """PPO ratio upper clip: rho <= 1 + clip_high."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 for negative advantages; None = off."""
    kl_coef: float = 0.0
    """KL-to-reference coefficient; > 0 needs `ref_logprobs` in every batch."""
    kl_kind: str = "k3"
    """KL estimator: k1, k2 or k3."""
    level: str = "token"
    """Aggregation: "token" or "sequence" (denominators must match it)."""
    temperature: float = 1.0
    """Logits are divided by this before log-softmax (match the rollout's log-prob definition)."""
    impl: str = "torch"
    """Loss head: "torch" (logits + `prco_loss`) or "triton" (fused kernels, `loss_head.py`;
    raises where Triton cannot run)."""
    tis_cap: float | None = None
    """Truncated importance-sampling cap (`loss_head.apply_tis`); None = off."""
    objective: str = "ppo"
    """"ppo": the PRCO/GRPO clipped surrogate; "sft": negative log-likelihood of the response
    tokens (the tiny model's warm start), same per-role global denominators."""

    def __post_init__(self):
        if self.impl not in ("torch", "triton"):
            raise ValueError(f"impl must be 'torch' or 'triton', got {self.impl!r}")
        if self.objective not in ("ppo", "sft"):
            raise ValueError(f"objective must be 'ppo' or 'sft', got {self.objective!r}")
        if self.objective == "sft" and (self.impl != "torch" or self.tis_cap is not None):
            raise ValueError(f"objective 'sft' runs with impl 'torch' and no TIS (got impl "
                             f"{self.impl!r}, tis_cap {self.tis_cap})")
        if self.tis_cap is not None and self.tis_cap <= 0:
            raise ValueError(f"tis_cap ({self.tis_cap}) must be > 0 or None")

    @classmethod
    def from_algo(cls, algo: Any, temperature: float = 1.0, impl: str = "torch") -> LossSettings:
        """From the run config's `AlgoSection` (or anything with the same attribute names) and
        `kernels.impl`."""
        return cls(algo.clip_low, algo.clip_high, algo.dual_clip, algo.kl_coef, algo.kl_kind,
                   algo.level, temperature, impl=impl, tis_cap=getattr(algo, "tis_cap", None))


# ----------------------------------------------------------------------------- model input
def qwen_vl_forward(model: torch.nn.Module, batch: TrainBatch, return_hidden: bool = False):
    """`ModelForward` for `prco_mega.learner.model` chunks (Qwen2.5-VL, possibly DDP-wrapped):
    packed tokens as one row `[1, T]`, mrope positions `[3, 1, T]`, THD packing by `cu_seqlens`
    (the model turns it into a block-diagonal causal mask where Transformer Engine is absent).
    `return_hidden`: see `model.forward` (the fused loss head's input)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    from prco_mega.learner.model import forward

    if batch.position_ids is None or batch.position_ids.dim() != 2:
        raise ValueError("qwen_vl_forward needs batch.position_ids [3, T] (mrope positions)")
    cu = batch.cu_seqlens.to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                             max_seqlen_q=longest, max_seqlen_kv=longest)
    return forward(model, batch.tokens[None, :], batch.position_ids[:, None, :],
                   batch.pixel_values, batch.image_grid_thw, packed_seq_params=packed,
                   return_hidden=return_hidden)


# ----------------------------------------------------------------------------- log-probs
def token_logprobs(logits: Tensor, tokens: Tensor, cu_seqlens: Tensor,
                   temperature: float = 1.0) -> Tensor:
    """Log-prob of every packed token under the model, from vocab-parallel logits.

    `logprobs[t] = log softmax(logits[t-1] / temperature)[tokens[t]]` (over the FULL vocabulary:
    Megatron's vocab-parallel cross-entropy reduces over the TP group), and 0 at the first token
    of each sequence (nothing predicts it). Aligned with `TrainBatch.old_logprobs`.

    logits      # [1, T, V/tp] (or [T, V/tp])
    tokens      # [T] int64
    cu_seqlens  # [N+1]
    returns     # [T] float32
    """
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    logits_TV = logits.reshape(tokens.numel(), -1)
    # A fresh fp32 tensor: the Megatron op overwrites its input in place.
    scaled = logits_TV.float() / temperature if temperature != 1.0 else logits_TV.float().clone()
    next_T = torch.roll(tokens, -1)
    next_lp_T = -vocab_parallel_cross_entropy(scaled[:, None, :], next_T[:, None])[:, 0]
    lp_T = torch.cat([next_lp_T.new_zeros(1), next_lp_T[:-1]])
    starts = torch.zeros_like(tokens, dtype=torch.bool)
    starts[cu_seqlens[:-1].long()] = True
    return torch.where(starts, torch.zeros_like(lp_T), lp_T)


# ----------------------------------------------------------------------------- loss
def prco_loss_func(batch: TrainBatch, settings: LossSettings, output: Tensor):
    """Megatron loss function for one micro-batch: `(loss share, loss-token count, metrics)`.

    The share uses the step's global per-role denominators (see the module doc), so the schedule
    must run with `calculate_per_token_loss=True` (see `prepare_model_config`).
    """
    from prco_mega.algo.losses import nll_loss, prco_loss

    logprobs = token_logprobs(output, batch.tokens, batch.cu_seqlens, settings.temperature)
    denominators = {int(r): float(d) for r, d in batch.role_denominators.items()}
    if settings.objective == "sft":
        loss, metrics = nll_loss(logprobs, batch.loss_mask, batch.role_ids, denominators,
                                 level=settings.level, cu_seqlens=batch.cu_seqlens)
        num_tokens = (batch.loss_mask != 0).sum().to(torch.int)
        return loss, num_tokens, {**metrics, "loss": loss.detach(),
                                  "loss_tokens": num_tokens.to(loss.dtype)}
    loss, metrics = prco_loss(
        logprobs, batch.old_logprobs, batch.advantages, batch.loss_mask, batch.role_ids,
        denominators,
        clip_low=settings.clip_low, clip_high=settings.clip_high, dual_clip=settings.dual_clip,
        ref_logprobs=batch.ref_logprobs, kl_coef=settings.kl_coef, kl_kind=settings.kl_kind,
        level=settings.level, cu_seqlens=batch.cu_seqlens,
    )
    num_tokens = (batch.loss_mask != 0).sum().to(torch.int)
    metrics = {**metrics, "loss": loss.detach(), "loss_tokens": num_tokens.to(loss.dtype)}
    return loss, num_tokens, metrics


def _logprobs_func(temperature: float, batch: TrainBatch, output: Tensor,
                   non_loss_data: bool = True):
    return token_logprobs(output, batch.tokens, batch.cu_seqlens, temperature).detach()


def to_device(batch: TrainBatch, device: torch.device | str) -> TrainBatch:
    """The batch with every tensor on `device` (a no-op on CPU)."""
    moved = {f.name: getattr(batch, f.name).to(device, non_blocking=True)
             for f in dataclasses.fields(batch) if isinstance(getattr(batch, f.name), Tensor)}
    return dataclasses.replace(batch, **moved)


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def make_forward_step(model_forward: ModelForward, loss_func: Callable) -> Callable:
    """A Megatron `forward_step_func(data_iterator, model) -> (output, loss_func)`;
    `loss_func(batch, output)` is bound to the micro-batch it is called for."""

    def forward_step(data_iterator: Iterator[TrainBatch], model: torch.nn.Module):
        batch = to_device(next(data_iterator), _device())
        return model_forward(model, batch), partial(loss_func, batch)

    return forward_step


# ----------------------------------------------------------------------------- schedules
def prepare_model_config(config: Any) -> None:
    """Set the Megatron model-config fields our loss convention needs (see the module doc).
    Call before wrapping the model in DDP (DDP reads `calculate_per_token_loss`)."""
    from megatron.core.distributed import finalize_model_grads

    config.calculate_per_token_loss = True
    # Not Megatron's shape exchange for packed micro-batches of different lengths: with PP=2 the
    # previous and next stage are the same rank and its shape messages of the two directions can
    # cross (megatron-core 0.16). `run_schedule` pads micro-batches to one length instead.
    config.variable_seq_lengths = False
    # Batched p2p posts both directions' messages to the same peer on one communicator; with PP=2
    # (previous stage == next stage) the interleaved schedule's activation and gradient then
    # cross silently. The unbatched path splits the two directions over two communicators.
    config.batch_p2p_comm = False

    def finalize_without_token_scaling(model, num_tokens=None, **kwargs):
        finalize_model_grads(model, None, **kwargs)

    config.finalize_model_grads_func = finalize_without_token_scaling


def fit_to_pipeline(micro_batches: Sequence[TrainBatch], model_chunks: Sequence[torch.nn.Module]
                    ) -> list[TrainBatch]:
    """Micro-batches the pipeline schedule accepts, with the same loss and gradients.

    With pipeline parallelism stages exchange activations of one fixed shape, so every
    micro-batch is padded to the longest (`pad_to_length`). The interleaved schedule also needs a
    multiple of PP micro-batches (at least PP): loss-free padding micro-batches fill up.
    """
    from megatron.core.utils import get_model_config

    from prco_mega.learner.packing import pad_to_length, padding_micro_batch

    pp = get_model_config(model_chunks[0]).pipeline_model_parallel_size
    if pp == 1:
        return list(micro_batches)
    longest = max(b.num_tokens for b in micro_batches)
    out = [pad_to_length(b, longest) for b in micro_batches]
    if len(model_chunks) > 1:
        want = max(pp, -(-len(out) // pp) * pp)
        out += [padding_micro_batch(out[0], longest) for _ in range(want - len(out))]
    return out


def run_schedule(
    model_chunks: Sequence[torch.nn.Module],
    micro_batches: Sequence[TrainBatch],
    forward_step: Callable,
    *,
    forward_only: bool,
    collect_non_loss_data: bool = False,
) -> list:
    """`get_forward_backward_func()` over the micro-batches (after `fit_to_pipeline`); every model
    chunk reads its own iterator over the same micro-batches (the interleaved schedule asks per
    chunk). Returns Megatron's forward data store (last pipeline stage only)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if not micro_batches:
        raise ValueError("a step needs at least one micro-batch on every data-parallel rank")
    micro_batches = fit_to_pipeline(micro_batches, model_chunks)
    iters = [iter(micro_batches) for _ in model_chunks]
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iters if len(iters) > 1 else iters[0],
        model=list(model_chunks),
        num_microbatches=len(micro_batches),
        seq_length=max(b.num_tokens for b in micro_batches),
        micro_batch_size=1,
        forward_only=forward_only,
        collect_non_loss_data=collect_non_loss_data,
    )


def _is_last_stage(pp_group) -> bool:
    return pp_group.rank() == pp_group.size() - 1


def _last_stage_rank(pp_group) -> int:
    import torch.distributed as dist

    return dist.get_global_rank(pp_group, pp_group.size() - 1)


def reduce_metrics(store: list[dict[str, Tensor]], *, pp_group, dp_group) -> dict[str, float]:
    """Step metrics on every rank: sum of the micro-batch metrics (they are shares with global
    denominators) over micro-batches and data-parallel ranks, sent from the last pipeline stage.
    The one host sync of the step."""
    import torch.distributed as dist

    keys = [sorted(store[0])] if _is_last_stage(pp_group) else [None]
    if pp_group.size() > 1:
        dist.broadcast_object_list(keys, src=_last_stage_rank(pp_group), group=pp_group)
    keys = keys[0]
    if _is_last_stage(pp_group):
        values = torch.stack([sum(m[k].float() for m in store) for k in keys])
    else:
        values = torch.zeros(len(keys), device=_device())
    dist.all_reduce(values, group=dp_group)
    if pp_group.size() > 1:
        dist.broadcast(values, src=_last_stage_rank(pp_group), group=pp_group)
    return dict(zip(keys, values.tolist()))


def train_step(
    model_chunks: Sequence[torch.nn.Module],
    optimizer: Any,
    scheduler: Any,
    micro_batches: Sequence[TrainBatch],
    settings: LossSettings,
    *,
    pg: Any,
    model_forward: ModelForward | None = None,
    learner_old_logprobs: Sequence[Tensor] | None = None,
    check_finite: bool = False,
) -> dict[str, float]:
    """One optimizer step on this rank's micro-batches (all carrying the step's global
    denominators). Returns the step metrics (identical on every rank): `loss`, `pg_loss`,
    per-role metrics, `grad_norm`, `lr`, `update_successful`.

    `settings.impl` picks the loss head (`loss_head.py`); `model_forward=None` takes the matching
    Qwen2.5-VL forward. With `settings.tis_cap`, truncated importance sampling
    (`loss_head.apply_tis`) uses `learner_old_logprobs` ([T_i] per micro-batch, the learner's
    log-probs before this step), computed here by one `compute_logprobs` pass when not given.

    `check_finite`: raise `NonFiniteLoss` (naming the roles) before the optimizer would apply a
    NaN/inf loss's gradients; the weights stay as they were.

    pg  # Megatron ProcessGroupCollection (uses .pp and .dp)
    """
    from prco_mega.learner import loss_head

    loss_head.check_impl(settings.impl, _device())
    if model_forward is None:
        model_forward = qwen_vl_forward if settings.impl == "torch" else \
            loss_head.qwen_vl_hidden_forward
    if settings.tis_cap is not None:
        if learner_old_logprobs is None:
            learner_old_logprobs = compute_logprobs(
                model_chunks, micro_batches, pg=pg, temperature=settings.temperature,
                model_forward=model_forward if settings.impl == "torch" else qwen_vl_forward)
        micro_batches = [loss_head.apply_tis(b, lp.to(b.old_logprobs.device), settings.tis_cap)
                         for b, lp in zip(micro_batches, learner_old_logprobs, strict=True)]
    elif learner_old_logprobs is not None:
        raise ValueError("learner_old_logprobs given but settings.tis_cap is None (TIS off)")
    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    forward_step = make_forward_step(model_forward, partial(_loss_with, settings))
    store = run_schedule(model_chunks, micro_batches, forward_step, forward_only=False)
    metrics = reduce_metrics(store, pp_group=pg.pp, dp_group=pg.dp)
    if check_finite:
        raise_if_not_finite(metrics)
    lr = scheduler.current_lr()
    ok, grad_norm, _ = optimizer.step()
    if ok:
        scheduler.step()
    metrics.update(grad_norm=float(grad_norm or 0.0), lr=lr,
                   update_successful=float(ok))
    return metrics


class NonFiniteLoss(RuntimeError):
    """A step's loss is NaN/inf; raised before the optimizer applies it."""


def raise_if_not_finite(metrics: dict[str, float]) -> None:
    """`NonFiniteLoss` naming every non-finite loss metric (per role), if there is one."""
    import math

    bad = {k: v for k, v in metrics.items()
           if k.endswith(("loss", "nll")) and not math.isfinite(v)}
    if bad:
        raise NonFiniteLoss("non-finite loss: " + ", ".join(f"{k}={v}" for k, v in sorted(bad.items())))


def _loss_with(settings: LossSettings, batch: TrainBatch, output: Any):
    if settings.impl == "triton":
        from prco_mega.learner.loss_head import fused_prco_loss_func

        return fused_prco_loss_func(batch, settings, output)
    return prco_loss_func(batch, settings, output)


def compute_logprobs(
    model_chunks: Sequence[torch.nn.Module],
    micro_batches: Sequence[TrainBatch],
    *,
    pg: Any,
    model_forward: ModelForward = qwen_vl_forward,
    temperature: float = 1.0,
) -> list[Tensor]:
    """Per-token log-probs (`token_logprobs`) of each micro-batch, no gradients, on every rank of
    the pipeline. Use for the old-policy recompute or a reference model's log-probs.

    returns  # list of [T_i] float32, one per micro-batch
    """
    import torch.distributed as dist

    forward_step = make_forward_step(model_forward, partial(_logprobs_func, temperature))
    with torch.no_grad():
        store = run_schedule(model_chunks, micro_batches, forward_step, forward_only=True,
                             collect_non_loss_data=True)
    # Cut off the padding that fit_to_pipeline may have added (zip drops padding micro-batches).
    store = [lp[: b.num_tokens] for lp, b in zip(store, micro_batches)]
    if pg.pp.size() == 1:
        return store
    out = [lp.contiguous() for lp in store] if _is_last_stage(pg.pp) else [
        torch.empty(b.num_tokens, device=_device()) for b in micro_batches]
    for lp in out:
        dist.broadcast(lp, src=_last_stage_rank(pg.pp), group=pg.pp)
    return out


def sequence_logprobs(model_chunks: Sequence[torch.nn.Module], ids: Tensor, hf_config: Any, *,
                      pg: Any, pixel_values: Tensor | None = None,
                      image_grid_thw: Tensor | None = None, temperature: float = 1.0) -> Tensor:
    """[T] learner log-probs of one sequence `ids` [T] (with its images), no gradients, on every
    rank; position 0 is 0 (nothing predicts it). For checks against other implementations
    (conversion `--verify`, the engine-sync test)."""
    from prco_mega.learner.mrope import mrope_position_ids
    from prco_mega.types import Role

    T = ids.numel()
    pos = mrope_position_ids(ids[None], image_grid_thw, hf_config.image_token_id,
                             hf_config.vision_config.spatial_merge_size)[:, 0]
    zeros = torch.zeros(T)
    batch = TrainBatch(tokens=ids, cu_seqlens=torch.tensor([0, T], dtype=torch.int32),
                       role_ids=torch.full((T,), int(Role.SOLVER), dtype=torch.int8),
                       loss_mask=zeros, old_logprobs=zeros, advantages=zeros,
                       role_denominators={Role.SOLVER: 1.0}, position_ids=pos,
                       pixel_values=pixel_values, image_grid_thw=image_grid_thw)
    (lp,) = compute_logprobs(model_chunks, [batch], pg=pg, temperature=temperature)
    return lp

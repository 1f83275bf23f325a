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

import math
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from prco_mega.dist.world import device
from prco_mega.learner.forward import qwen_vl_forward, to_device, token_logprobs
from prco_mega.learner.loss_paths import LossPath
from prco_mega.learner.mrope import mrope_position_ids
from prco_mega.learner.packing import pad_to_length, padding_micro_batch
from prco_mega.types import Role, TrainBatch

ModelForward = Callable[[torch.nn.Module, TrainBatch], Tensor]
"""`model_forward(model_chunk, batch)`: the chunk's output for a packed micro-batch: on the last
pipeline stage vocab-parallel logits `[1, T, V/tp]`, elsewhere the hidden states Megatron sends
on."""


# ----------------------------------------------------------------------------- forward steps
def _logprobs_func(temperature: float, batch: TrainBatch, output: Tensor,
                   non_loss_data: bool = True):
    return token_logprobs(output, batch.tokens, batch.cu_seqlens, temperature).detach()


def make_forward_step(model_forward: ModelForward, loss_func: Callable) -> Callable:
    """A Megatron `forward_step_func(data_iterator, model) -> (output, loss_func)`;
    `loss_func(batch, output)` is bound to the micro-batch it is called for."""

    def forward_step(data_iterator: Iterator[TrainBatch], model: torch.nn.Module):
        batch = to_device(next(data_iterator), device())
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
    return dist.get_global_rank(pp_group, pp_group.size() - 1)


def reduce_metrics(store: list[dict[str, Tensor]], *, pp_group, dp_group) -> dict[str, float]:
    """Step metrics on every rank: sum of the micro-batch metrics (they are shares with global
    denominators) over micro-batches and data-parallel ranks, sent from the last pipeline stage;
    keys ending in `max_abs` take the max instead. The one host sync of the step."""
    keys = [sorted(store[0])] if _is_last_stage(pp_group) else [None]
    if pp_group.size() > 1:
        dist.broadcast_object_list(keys, src=_last_stage_rank(pp_group), group=pp_group)
    keys = keys[0]
    is_max = torch.tensor([k.endswith("max_abs") for k in keys], device=device())
    if _is_last_stage(pp_group):
        values = torch.stack([
            torch.stack([m[k].float() for m in store]).max() if k.endswith("max_abs") else
            sum(m[k].float() for m in store) for k in keys])
    else:
        values = torch.zeros(len(keys), device=device())
    if is_max.any():  # max_abs >= 0, so a zero stands in for "not reduced yet" on both sides
        peaks = torch.where(is_max, values, 0.0)
        dist.all_reduce(peaks, op=dist.ReduceOp.MAX, group=dp_group)
    dist.all_reduce(values, group=dp_group)
    if is_max.any():
        values = torch.where(is_max, peaks, values)
    if pp_group.size() > 1:
        dist.broadcast(values, src=_last_stage_rank(pp_group), group=pp_group)
    return dict(zip(keys, values.tolist()))


def train_step(
    model_chunks: Sequence[torch.nn.Module],
    optimizer: Any,
    scheduler: Any,
    micro_batches: Sequence[TrainBatch],
    path: LossPath,
    *,
    pg: Any,
    check_finite: bool = False,
) -> dict[str, float]:
    """One optimizer step on this rank's micro-batches (all carrying the step's global
    denominators) through the loss path `path` (`loss_paths.make_loss_path`). Returns the step
    metrics (identical on every rank): `loss`, `pg_loss`, per-role metrics, `grad_norm`, `lr`,
    `update_successful`, and whatever additive statistics the path reports (reduced, not
    finished: see `mismatch.finish_mismatch`).

    `check_finite`: raise `NonFiniteLoss` (naming the roles) before the optimizer would apply a
    NaN/inf loss's gradients; the weights stay as they were.

    pg  # Megatron ProcessGroupCollection (uses .pp and .dp)
    """
    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    forward_step = make_forward_step(path.forward, lambda batch, output: path.loss(batch, output))
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
    bad = {k: v for k, v in metrics.items()
           if k.endswith(("loss", "nll")) and not math.isfinite(v)}
    if bad:
        raise NonFiniteLoss("non-finite loss: " + ", ".join(f"{k}={v}" for k, v in sorted(bad.items())))


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
    forward_step = make_forward_step(model_forward, partial(_logprobs_func, temperature))
    with torch.no_grad():
        store = run_schedule(model_chunks, micro_batches, forward_step, forward_only=True,
                             collect_non_loss_data=True)
    # Cut off the padding that fit_to_pipeline may have added (zip drops padding micro-batches).
    store = [lp[: b.num_tokens] for lp, b in zip(store, micro_batches)]
    if pg.pp.size() == 1:
        return store
    out = [lp.contiguous() for lp in store] if _is_last_stage(pg.pp) else [
        torch.empty(b.num_tokens, device=device()) for b in micro_batches]
    for lp in out:
        dist.broadcast(lp, src=_last_stage_rank(pg.pp), group=pg.pp)
    return out


def sequence_logprobs(model_chunks: Sequence[torch.nn.Module], ids: Tensor, hf_config: Any, *,
                      pg: Any, pixel_values: Tensor | None = None,
                      image_grid_thw: Tensor | None = None, temperature: float = 1.0) -> Tensor:
    """[T] learner log-probs of one sequence `ids` [T] (with its images), no gradients, on every
    rank; position 0 is 0 (nothing predicts it). For checks against other implementations
    (conversion `--verify`, the engine-sync test)."""
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

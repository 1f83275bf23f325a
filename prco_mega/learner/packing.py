"""Packing trajectories into `TrainBatch`es and the token-budget micro-batch planner.

The step's trajectories are planned once for the whole step: every data-parallel rank gets a list
of micro-batches (sequence indices), each micro-batch holds at most `token_budget` tokens, no
sequence is dropped or duplicated, and the ranks get nearly equal token loads. Each micro-batch is
then packed back to back (no padding between sequences; `cu_seqlens` marks the boundaries) and
carries the step's GLOBAL per-role loss denominators, so how the step is split never changes the
loss.

The planner is pure Python: best-fit decreasing with a sorted list of free capacities is
O(N log N + N * B) with a C-speed memmove per item (B = micro-batches), ~0.2 s for 100k sequences
(see `tests/test_packing.py::test_planner_speed_at_100k`), so no C++ version is needed.
"""
from __future__ import annotations

import bisect
import dataclasses
import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prco_mega.learner.routing_replay import padding_rows
from prco_mega.types import Role, TrainBatch, Trajectory

PAD_ROLE = -1
"""`role_ids` value of padding tokens (they are never in the loss)."""


# ----------------------------------------------------------------------------- planner
def _best_fit_decreasing(order: list[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Pack `order` (indices, longest first) into bins of capacity `budget`; each item goes to the
    bin whose free space is the smallest that still fits it (a new bin if none does)."""
    free: list[tuple[int, int]] = []  # sorted (free tokens, bin id)
    bins: list[list[int]] = []
    for i in order:
        pos = bisect.bisect_left(free, (lengths[i], -1))
        if pos == len(free):
            bins.append([i])
            room, b = budget - lengths[i], len(bins) - 1
        else:
            room, b = free.pop(pos)
            bins[b].append(i)
            room -= lengths[i]
        bisect.insort(free, (room, b))
    return bins


def _split_to_count(bins: list[list[int]], count: int) -> list[list[int]]:
    """Split the bins with the most sequences until there are `count` bins (or none can split).
    Equal micro-batch counts keep data-parallel ranks in step."""
    bins = [list(b) for b in bins]
    while len(bins) < count:
        widest = max(range(len(bins)), key=lambda k: len(bins[k]))
        if len(bins[widest]) < 2:
            break
        b = bins.pop(widest)
        bins += [b[0::2], b[1::2]]
    return bins


def plan_micro_batches(
    lengths: Sequence[int], token_budget: int, num_dp_ranks: int = 1
) -> list[list[list[int]]]:
    """Assign sequences to data-parallel ranks and micro-batches under a token budget.

    Returns `plan[rank][micro_batch] = [sequence indices, ascending]`. Guarantees: every index in
    `range(len(lengths))` appears exactly once; `sum(lengths[i] for i in mb) <= token_budget` for
    every micro-batch; every rank gets >= 1 micro-batch and, where sequences allow, all ranks the
    same number of micro-batches.

    Ranks are filled longest-sequence-first onto the rank with the fewest tokens (LPT), then each
    rank's sequences are packed by best-fit decreasing.
    """
    if token_budget < 1 or num_dp_ranks < 1:
        raise ValueError(
            f"token_budget ({token_budget}) and num_dp_ranks ({num_dp_ranks}) must be >= 1")
    too_long = [(i, n) for i, n in enumerate(lengths) if n > token_budget]
    if too_long:
        i, n = too_long[0]
        raise ValueError(f"sequence {i} has {n} tokens, more than the micro-batch token budget "
                         f"({token_budget}); {len(too_long)} sequence(s) are too long")
    if len(lengths) < num_dp_ranks:
        raise ValueError(
            f"{len(lengths)} sequence(s) cannot fill {num_dp_ranks} data-parallel ranks")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    loads = [(0, r) for r in range(num_dp_ranks)]
    per_rank: list[list[int]] = [[] for _ in range(num_dp_ranks)]
    for i in order:
        load, r = heapq.heappop(loads)
        per_rank[r].append(i)
        heapq.heappush(loads, (load + lengths[i], r))
    plan = [_best_fit_decreasing(idx, lengths, token_budget) for idx in per_rank]
    count = max(len(p) for p in plan)
    plan = [_split_to_count(p, count) for p in plan]
    return [sorted((sorted(mb) for mb in p), key=lambda mb: mb[0]) for p in plan]


# ----------------------------------------------------------------------------- denominators
def step_denominators(trajectories: Sequence[Trajectory], level: str = "token") -> dict[int, float]:
    """Global per-role loss denominators of a step (computed BEFORE splitting it).

    `"token"`: `D_r = sum over trajectories of role r of len(response_ids)`;
    `"sequence"`: `D_r = number of trajectories of role r with >= 1 response token`.
    """
    return shape_denominators([shape_of(t) for t in trajectories], level)


# ----------------------------------------------------------------------------- packing
@dataclass(frozen=True)
class SequenceInputs:
    """Model inputs of one sequence beyond its token ids (what a vision model's processor gives)."""

    position_ids: Tensor
    """[3, L] mrope positions, or [L] for a text-only model (L = prompt + response length)."""
    pixel_values: Tensor | None = None
    """[P_i, D] flattened image patches of this sequence's images."""
    image_grid_thw: Tensor | None = None
    """[n_i, 3] (t, h, w) patch grid of each image."""


def text_inputs(traj: Trajectory, mrope: bool = True) -> SequenceInputs:
    """Positions of a text-only sequence: 0..L-1, the same on all three mrope axes."""
    pos_L = torch.arange(len(traj.prompt_ids) + len(traj.response_ids), dtype=torch.int64)
    return SequenceInputs(pos_L.expand(3, -1) if mrope else pos_L)


def _check(traj: Trajectory, i: int) -> None:
    if len(traj.rollout_logprobs) != len(traj.response_ids):
        raise ValueError(f"trajectory {i}: {len(traj.rollout_logprobs)} rollout log-probs for "
                         f"{len(traj.response_ids)} response tokens")
    if not traj.prompt_ids:
        raise ValueError(
            f"trajectory {i} has an empty prompt (its first token cannot be predicted)")


def _token_fields(traj: Trajectory) -> tuple[list[int], list[float], list[float], list[float]]:
    """(tokens, loss_mask, old_logprobs, advantages) of one sequence, aligned with its tokens."""
    p, r = len(traj.prompt_ids), len(traj.response_ids)
    return (
        list(traj.prompt_ids) + list(traj.response_ids),
        [0.0] * p + [1.0] * r,
        [0.0] * p + [float(x) for x in traj.rollout_logprobs],
        [0.0] * p + [float(traj.advantage)] * r,
    )


def pack_trajectories(
    trajectories: Sequence[Trajectory],
    role_denominators: dict[int, float],
    *,
    encode: Callable[[Trajectory], SequenceInputs] | None = None,
    pad_to_multiple: int = 1,
    pad_token_id: int = 0,
) -> TrainBatch:
    """Pack sequences back to back into one `TrainBatch` (one micro-batch).

    `role_denominators` must be the step's global ones (`step_denominators` over ALL the step's
    trajectories). `encode` gives positions and image inputs per sequence (default: text-only
    mrope positions). With `pad_to_multiple > 1` a padding segment (`pad_to_length`) makes T a
    multiple of it (sequence parallelism needs T % TP == 0).
    """
    if not trajectories:
        raise ValueError("cannot pack an empty micro-batch")
    encode = encode or text_inputs
    cols: tuple[list, ...] = ([], [], [], [], [])  # tokens, mask, old lp, adv, roles
    lens, inputs = [], []
    for i, traj in enumerate(trajectories):
        _check(traj, i)
        fields = _token_fields(traj)
        for col, values in zip(cols, fields):
            col.extend(values)
        cols[4].extend([int(traj.role)] * len(fields[0]))
        lens.append(len(fields[0]))
        inputs.append(encode(traj))
    batch = _assemble(cols, lens, inputs, trajectories, role_denominators)
    batch.routed_experts = _packed_routing(trajectories, lens)
    return pad_to_length(batch, -(-batch.num_tokens // pad_to_multiple) * pad_to_multiple,
                         pad_token_id)


def pad_to_length(batch: TrainBatch, length: int, pad_token_id: int = 0) -> TrainBatch:
    """`batch` with a padding segment appended so that it holds `length` tokens.

    The segment is its own sequence in `cu_seqlens` (so no real token attends to it), has role
    `PAD_ROLE`, loss mask 0 and positions 0..pad-1; it never changes the loss or the log-probs of
    the real tokens.
    """
    pad = length - batch.num_tokens
    if pad < 0:
        raise ValueError(f"cannot pad a micro-batch of {batch.num_tokens} tokens to {length}")
    if pad == 0:
        return batch

    def ext(t: Tensor, value) -> Tensor:
        return torch.cat([t, t.new_full((pad,), value)])

    pos = batch.position_ids
    if pos is not None:
        pad_pos = torch.arange(pad, dtype=pos.dtype).expand(pos.shape[:-1] + (pad,))
        pos = torch.cat([pos, pad_pos], dim=-1)
    return dataclasses.replace(
        batch,
        tokens=ext(batch.tokens, pad_token_id),
        cu_seqlens=torch.cat([batch.cu_seqlens, batch.cu_seqlens.new_tensor([length])]),
        role_ids=ext(batch.role_ids, PAD_ROLE),
        loss_mask=ext(batch.loss_mask, 0.0),
        old_logprobs=ext(batch.old_logprobs, 0.0),
        advantages=ext(batch.advantages, 0.0),
        ref_logprobs=None if batch.ref_logprobs is None else ext(batch.ref_logprobs, 0.0),
        position_ids=pos,
        seq_group_ids=None if batch.seq_group_ids is None else
        torch.cat([batch.seq_group_ids, batch.seq_group_ids.new_tensor([-1])]),
        routed_experts=None if batch.routed_experts is None else torch.cat([
            batch.routed_experts, padding_rows(pad, *batch.routed_experts.shape[1:],
                                               dtype=batch.routed_experts.dtype)]),
    )


def padding_micro_batch(like: TrainBatch, length: int, pad_token_id: int = 0) -> TrainBatch:
    """A micro-batch of `length` padding tokens only (no loss, no images), with `like`'s
    denominators: fills a pipeline schedule that needs more micro-batches than a rank has."""
    empty = like.tokens.new_zeros(0)
    pos = None if like.position_ids is None else like.position_ids[..., :0]
    blank = TrainBatch(
        tokens=empty, cu_seqlens=like.cu_seqlens.new_zeros(1), role_ids=like.role_ids[:0],
        loss_mask=like.loss_mask[:0], old_logprobs=like.old_logprobs[:0],
        advantages=like.advantages[:0], role_denominators=dict(like.role_denominators),
        ref_logprobs=None if like.ref_logprobs is None else like.ref_logprobs[:0],
        position_ids=pos, seq_group_ids=None if like.seq_group_ids is None else
        like.seq_group_ids[:0])
    return pad_to_length(blank, length, pad_token_id)


def _packed_routing(trajectories: Sequence[Trajectory], lens: list[int]) -> Tensor | None:
    """[T, L, k] the trajectories' engine routing back to back (`Trajectory.routed_experts`), or
    None when none carries it; a micro-batch that mixes the two cannot replay."""
    routed = [t.routed_experts for t in trajectories]
    if all(r is None for r in routed):
        return None
    for i, (r, n) in enumerate(zip(routed, lens)):
        if r is None or r.shape[0] != n:
            got = "none" if r is None else f"{r.shape[0]} positions"
            raise ValueError(f"trajectory {i}: routed experts for {got}, but its sequence has {n} "
                             "tokens; every trajectory of a micro-batch needs its engine routing "
                             "for routing replay")
    return torch.cat([torch.as_tensor(r) for r in routed])


def _as_role(r: int) -> Role | int:
    try:
        return Role(int(r))
    except ValueError:
        return int(r)


def _cat_optional(parts: list[Tensor | None]) -> Tensor | None:
    present = [p for p in parts if p is not None]
    return torch.cat(present) if present else None


def _assemble(cols, lens, inputs, trajectories, role_denominators) -> TrainBatch:
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lens, dtype=torch.int32), 0)
    return TrainBatch(
        tokens=torch.tensor(cols[0], dtype=torch.int64),
        cu_seqlens=cu,
        role_ids=torch.tensor(cols[4], dtype=torch.int8),
        loss_mask=torch.tensor(cols[1], dtype=torch.float32),
        old_logprobs=torch.tensor(cols[2], dtype=torch.float32),
        advantages=torch.tensor(cols[3], dtype=torch.float32),
        role_denominators={_as_role(r): float(d) for r, d in role_denominators.items()},
        position_ids=torch.cat([x.position_ids for x in inputs], dim=-1),
        pixel_values=_cat_optional([x.pixel_values for x in inputs]),
        image_grid_thw=_cat_optional([x.image_grid_thw for x in inputs]),
        seq_group_ids=torch.tensor([t.group_id for t in trajectories], dtype=torch.int64),
    )


@dataclass(frozen=True)
class SequenceShape:
    """What planning needs of a trajectory, without its tokens or images (ranks exchange these
    before the trajectories themselves move)."""

    role: int
    tokens: int
    """Prompt (image pads expanded) + response tokens."""
    response: int
    """Response tokens (the loss tokens)."""


def shape_of(traj: Trajectory) -> SequenceShape:
    return SequenceShape(int(traj.role), len(traj.prompt_ids) + len(traj.response_ids),
                         len(traj.response_ids))


def shape_denominators(shapes: Sequence[SequenceShape], level: str = "token") -> dict[int, float]:
    """`step_denominators` from shapes."""
    if level not in ("token", "sequence"):
        raise ValueError(f"aggregation level {level!r} is not one of ['token', 'sequence']")
    out: dict[int, float] = {}
    for s in shapes:
        out[s.role] = out.get(s.role, 0.0) + (float(s.response) if level == "token"
                                              else float(s.response > 0))
    return out


@dataclass(frozen=True)
class StepPlan:
    """Who trains what in one step: per mini-batch, its global per-role denominators and
    `micro[dp_rank][micro_batch]` = the step-wide ids of the trajectories packed there."""

    mini_batches: tuple[tuple[dict[int, float], list[list[list[int]]]], ...]

    def owner(self) -> dict[int, int]:
        """Trajectory id -> the data-parallel rank that trains it."""
        return {i: dp for _, micro in self.mini_batches for dp, mbs in enumerate(micro)
                for mb in mbs for i in mb}


def plan_step(shapes: Sequence[SequenceShape], *, mini_batches: int, token_budget: int,
              dp_size: int, level: str = "token") -> StepPlan:
    """The step's plan from its trajectories' shapes (ids = positions in `shapes`): dealt
    round-robin into mini-batches (a task's trajectories are listed together, so every
    mini-batch gets a share of each task and role), each planned with `plan_micro_batches`
    under its own global denominators. Every rank computes the same plan from the same shapes."""
    if mini_batches < 1:
        raise ValueError(f"mini-batches ({mini_batches}) must be >= 1")
    k = max(1, min(mini_batches, len(shapes)))
    parts = [list(range(len(shapes)))[i::k] for i in range(k)]
    out = []
    for ids in parts:
        part = [shapes[i] for i in ids]
        micro = plan_micro_batches([s.tokens for s in part], token_budget, dp_size)
        out.append((shape_denominators(part, level),
                    [[[ids[j] for j in mb] for mb in rank] for rank in micro]))
    return StepPlan(tuple(out))


def pack_plan(trajectories: dict[int, Trajectory], plan: StepPlan, dp_rank: int, *,
              encode: Callable[[Trajectory], SequenceInputs] | None = None,
              pad_to_multiple: int = 1, pad_token_id: int = 0) -> list[list[TrainBatch]]:
    """This data-parallel rank's packed micro-batches of each mini-batch of `plan`;
    `trajectories` holds (at least) the ones it trains, by step-wide id."""
    return [[pack_trajectories([trajectories[i] for i in mb], denominators, encode=encode,
                               pad_to_multiple=pad_to_multiple, pad_token_id=pad_token_id)
             for mb in micro[dp_rank]]
            for denominators, micro in plan.mini_batches]


def plan_and_pack(
    trajectories: Sequence[Trajectory],
    *,
    token_budget: int,
    dp_size: int,
    dp_rank: int,
    level: str = "token",
    encode: Callable[[Trajectory], SequenceInputs] | None = None,
    pad_to_multiple: int = 1,
    pad_token_id: int = 0,
) -> list[TrainBatch]:
    """This data-parallel rank's packed micro-batches for a step (every rank calls it with the
    same, whole-step `trajectories`, so all ranks agree on the plan and the denominators)."""
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank ({dp_rank}) must be in [0, dp_size ({dp_size}))")
    if token_budget % pad_to_multiple:
        raise ValueError(f"pad_to_multiple ({pad_to_multiple}) must divide token_budget "
                         f"({token_budget}), else padding could overflow the budget")
    plan = plan_step([shape_of(t) for t in trajectories], mini_batches=1,
                     token_budget=token_budget, dp_size=dp_size, level=level)
    (batches,) = pack_plan(dict(enumerate(trajectories)), plan, dp_rank, encode=encode,
                           pad_to_multiple=pad_to_multiple, pad_token_id=pad_token_id)
    return batches

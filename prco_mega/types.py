"""The central data types: one verifiable example, one sampled response, one packed learner batch.

Everything else in the stack passes these around; keep them small. Shapes are written in the
field docs: T = packed tokens in the batch, N = sequences, P = image patches.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports stay out of the import path of the pure parts
    import torch
    from PIL.Image import Image


class Role(enum.IntEnum):
    """Which prompt the shared policy answered. The integer is what `role_ids` tensors hold."""

    OBSERVER = 0  # writes a question-focused evidence caption of the image
    SOLVER = 1  # answers from the caption (and, after the warm-up, the image)
    SINGLE = 2  # baselines (GRPO/DAPO): one "look and answer" trajectory, no roles


@dataclass
class Task:
    """One verifiable example."""

    uid: str
    """Stable id, unique within a data set (seed and index for synthetic tasks)."""
    question: str
    answer: str
    """Gold answer as a string the verifier normalises (`"12"`, `"3/4"`, `"B"`)."""
    images: list[Image] = field(default_factory=list)
    """Decoded RGB images; decoded once and reused by every rollout stage."""
    family: str = ""
    """Task family (synthetic: `"shapes"`, `"bars"`, ...; real data: the source name)."""
    facts: dict[str, Any] | None = None
    """Ground-truth scene facts (synthetic tasks only): what a perfect caption would state."""
    choices: list[str] | None = None
    """Multiple-choice options in order (A, B, ...), when the question has them."""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, order=True)
class Slot:
    """Where a sample sits in its RL step, whichever engine drew it: the batch of the step it
    came from and the task's position in that batch. The step's trajectories are ordered by
    their slots (then by their order within a slot), which is the order one engine sampling the
    whole step lists them in, so routing and the learner's plan do not depend on the engines."""

    draw: int
    """Which batch of the step (dynamic sampling's extra draws count up; else 0)."""
    task: int
    """The task's position in the batch (`TaskRollout.index`)."""


@dataclass
class Trajectory:
    """One sampled response of the policy, with everything the learner needs."""

    role: Role
    task_uid: str
    group_id: int
    """Advantage group: all trajectories sharing it are centred together (per role)."""
    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logprobs: list[float]
    """[len(response_ids)] log-probs of the sampled tokens under the rollout engine."""
    text: str = ""
    """Decoded response."""
    reward: float = 0.0
    advantage: float = 0.0
    policy_version: int = 0
    """Updates in the weights that drew this sample (the oldest, when several drew its tokens)."""
    token_versions: list[int] | None = None
    """[len(response_ids)] the version that drew each token, when new weights arrived while it
    was generated (partial rollouts); None: `policy_version` drew them all. Each token's
    behaviour log-prob is in `rollout_logprobs`."""
    caption_index: int | None = None
    """Solver only: which of the task's Observer captions this answer was conditioned on."""
    images: list[Image] = field(default_factory=list)
    """Images in the prompt (empty for a Solver during the caption-first warm-up)."""
    slot: Slot | None = None
    """Its place in the step (set by the rollout); routing a step over engines needs it."""
    routed_experts: Any = None
    """numpy [len(prompt_ids) + len(response_ids), MoE layers, top_k] uint8/int16: the experts the
    engine routed each position to (mixture-of-experts policies with `algo.routing_replay:
    rollout`); None otherwise."""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskRollout:
    """Everything sampled for one task in one step."""

    task: Task
    observer: list[Trajectory] = field(default_factory=list)
    """[G_O] PRCO captions."""
    solver: list[list[Trajectory]] = field(default_factory=list)
    """[G_O][G_S] PRCO answers, one list per caption."""
    single: list[Trajectory] = field(default_factory=list)
    """[G] look-and-answer trajectories of the single-role baselines (GRPO, DAPO)."""
    index: int = 0
    """The task's position in the step's batch, whichever engine sampled it: seeds, group ids
    and the Solver-group draw are keyed by it."""
    draw: int = 0
    """Which batch of the step it came from (dynamic sampling's extra draws count up)."""


@dataclass
class TrainBatch:
    """Packed variable-length sequences (no padding) for one learner step.

    Token-aligned tensors are aligned with `tokens`: position t holds the quantity for predicting
    `tokens[t]` from `tokens[:t]` (so the first token of every sequence has loss_mask 0).
    """

    tokens: torch.Tensor
    """[T] int64 token ids, sequences back to back."""
    cu_seqlens: torch.Tensor
    """[N+1] int32 cumulative sequence lengths; cu_seqlens[0] = 0, cu_seqlens[-1] = T."""
    role_ids: torch.Tensor
    """[T] int8 `Role` of the sequence each token belongs to."""
    loss_mask: torch.Tensor
    """[T] float32 1.0 on response tokens that enter the loss, else 0.0."""
    old_logprobs: torch.Tensor
    """[T] float32 behaviour-policy log-probs (rollout engine, or learner recompute)."""
    advantages: torch.Tensor
    """[T] float32 per-token advantages (the trajectory's advantage on each response token)."""
    role_denominators: dict[Role, float]
    """Global (whole step, all micro-batches and DP ranks) loss-token count per role, so that
    gradient accumulation and data parallelism never change the loss."""
    ref_logprobs: torch.Tensor | None = None
    """[T] float32 reference-policy log-probs; only when the KL coefficient is > 0."""
    position_ids: torch.Tensor | None = None
    """[3, T] int64 mrope positions (temporal, height, width); [T] for text-only models."""
    pixel_values: torch.Tensor | None = None
    """[P, C*t*p*p] flattened image patches of all images in the batch, in sequence order."""
    image_grid_thw: torch.Tensor | None = None
    """[num_images, 3] int64 (t, h, w) patch grid of each image."""
    seq_group_ids: torch.Tensor | None = None
    """[N] int64 advantage group of each sequence."""
    routed_experts: torch.Tensor | None = None
    """[T, MoE layers, top_k] uint8/int16 expert ids the learner's routers replay
    (`learner.routing_replay`); None: the routers pick their own."""

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.numel())

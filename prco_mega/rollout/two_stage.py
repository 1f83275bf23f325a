"""The two-stage PRCO rollout: Observer captions, then Solver answers for every caption.

One step costs two engine calls whatever the batch: every task's Observer prompt (n = G_O), then
every caption's Solver prompt (n = G_S), so the engine batches across tasks and captions. The
Solver sees no image during the caption-first warm-up (`step < warmup_steps`) and the task's image
afterwards; either way the task's decoded PIL images are passed on as they are, never re-decoded.

A rollout samples a block of the step's tasks (its engine's share, `placement.deal`); `offset` is
the block's first position in the step. Every sample's seed and group id are keyed by its global
identity (step, draw, task position, caption index, sample index; `group_id`), never by the engine
or the block, so any split of a step over engines draws the same trajectories. The G_O captions
of a task share one group, the G_S answers of one caption another. Trajectories carry the prompt
ids as the engine saw them (image pads expanded), which is what the learner must score.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prco_mega.roles.prompts import Prompt, PromptSet
from prco_mega.rollout.engine import Generation, GenerationRequest, RolloutEngine, SamplingSettings
from prco_mega.types import Role, Slot, Task, TaskRollout, Trajectory

if TYPE_CHECKING:
    from PIL.Image import Image

    from prco_mega.config import SamplingSection

_CONTROL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>")
_STEP_SEED_STRIDE = 1 << 20
"""Seed distance between steps: room for 1M samples per step before seeds repeat."""
_DRAW_SEED_STRIDE = 1 << 16
"""Seed distance between the extra draws of one step (dynamic sampling): 16 draws of 64k."""


def strip_control_tokens(text: str) -> str:
    """`text` without chat control-token spellings (`<|im_end|>`, `<|image_pad|>`, ...).

    Model text is pasted into later prompts (Solver, judge) that the engine tokenizes, and the
    tokenizer turns such a spelling into the control token itself: an `<|im_end|>` would close the
    user turn early, an `<|image_pad|>` would add an image placeholder that no image fills.
    """
    return _CONTROL_TOKEN.sub("", text)


def engine_eos(engine: Any) -> str | None:
    """The engine tokenizer's EOS text, which `solver_caption` strips (None without one)."""
    return getattr(getattr(engine, "tokenizer", None), "eos_token", None)


def solver_caption(text: str, eos_token: str | None = None) -> str:
    """The caption as the Solver prompt shows it: trailing EOS and control tokens removed, outer
    whitespace trimmed. An empty caption stays empty (the Solver then has only the question, and
    the image after the warm-up, so such a caption earns what guessing earns)."""
    if eos_token and text.rstrip().endswith(eos_token):
        text = text.rstrip()[: -len(eos_token)]
    return strip_control_tokens(text).strip()


def step_settings(settings: SamplingSettings, step: int, draw: int = 0) -> SamplingSettings:
    """Per-step sampling settings: a fixed base seed would replay the same samples every step,
    so the seed moves by `_STEP_SEED_STRIDE` per step and `_DRAW_SEED_STRIDE` per extra draw
    within the step (None stays None: engine RNG)."""
    if settings.seed is None:
        return settings
    if not 0 <= draw < _STEP_SEED_STRIDE // _DRAW_SEED_STRIDE:
        raise ValueError(f"draw ({draw}) must be in [0, {_STEP_SEED_STRIDE // _DRAW_SEED_STRIDE})")
    return dataclasses.replace(settings, seed=settings.seed + step * _STEP_SEED_STRIDE
                               + draw * _DRAW_SEED_STRIDE)


def settings_from_section(section: SamplingSection, seed: int | None = None) -> SamplingSettings:
    """`SamplingSettings` of a config `SamplingSection` (n, temperature, top_p, max_new_tokens)."""
    return SamplingSettings(n=section.n, temperature=section.temperature, top_p=section.top_p,
                            max_new_tokens=section.max_new_tokens, seed=seed)


def request_of(prompt: Prompt, key: int | None = None) -> GenerationRequest:
    return GenerationRequest(prompt=prompt.text, images=tuple(prompt.images), key=key)


def group_id(step: int, draw: int, solver: bool, key: int) -> int:
    """An advantage group's id, unique within a run and independent of which engine sampled it:
    (step, draw, Observer/single or Solver, global request key) packed into one int64."""
    family = (((step << 4) + draw) << 1) + int(solver)  # draw < 16: see `step_settings`
    return (family << 32) + key


def trajectory_of(gen: Generation, role: Role, task: Task, group_id: int, policy_version: int,
                  step: int, images: Sequence[Image], caption_index: int | None = None,
                  slot: Slot | None = None) -> Trajectory:
    """One engine sample as a Trajectory (prompt ids as the engine saw them) at `slot`, its
    place in the step."""
    if gen.logprobs is None or len(gen.logprobs) != len(gen.token_ids) or not gen.prompt_ids:
        raise ValueError(f"{role.name.lower()} sample of task {task.uid!r} lacks rollout log-probs "
                         f"({None if gen.logprobs is None else len(gen.logprobs)} for "
                         f"{len(gen.token_ids)} tokens) or prompt ids ({len(gen.prompt_ids)}); "
                         "sample with logprobs=True on an engine that returns prompt ids")
    return Trajectory(
        role=role, task_uid=task.uid, group_id=group_id, prompt_ids=list(gen.prompt_ids),
        response_ids=list(gen.token_ids), rollout_logprobs=list(gen.logprobs), text=gen.text,
        policy_version=policy_version, caption_index=caption_index, images=list(images),
        token_versions=gen.token_versions, slot=slot, routed_experts=gen.routed_experts,
        meta={"step": step, "finish_reason": gen.finish_reason})


def require_logprobs(**settings: SamplingSettings) -> None:
    for name, s in settings.items():
        if not s.logprobs:
            raise ValueError(f"{name} sampling has logprobs=False; the learner needs the "
                             "behaviour policy's log-probs of every sampled token")


def sample_groups(engine: RolloutEngine, tasks: Sequence[Task], prompts: Sequence[Prompt],
                  settings: SamplingSettings, role: Role, keys: Sequence[int], step: int,
                  policy_version: int, draw: int = 0) -> list[list[Trajectory]]:
    """One engine call for all prompts; the `settings.n` samples of prompt i (global key
    `keys[i]`) form one advantage group of task i."""
    samples = engine.generate([request_of(p, k) for p, k in zip(prompts, keys, strict=True)],
                              step_settings(settings, step, draw))
    return [[trajectory_of(g, role, task, group_id(step, draw, False, key), policy_version, step,
                           prompt.images, slot=Slot(draw, key)) for g in gens]
            for task, prompt, key, gens in zip(tasks, prompts, keys, samples, strict=True)]


class TwoStageRollout:
    """PRCO rollout: G_O = `observer.n` captions per task, G_S = `solver.n` answers per caption."""

    def __init__(self, engine: RolloutEngine, prompts: PromptSet, observer: SamplingSettings,
                 solver: SamplingSettings, warmup_steps: int):
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be >= 0")
        require_logprobs(observer=observer, solver=solver)
        self.engine = engine
        self.prompts = prompts
        self.observer = observer
        self.solver = solver
        self.warmup_steps = warmup_steps
        self.eos_token = engine_eos(engine)

    def solver_sees_image(self, step: int) -> bool:
        """False during the caption-first warm-up."""
        return step >= self.warmup_steps

    def __call__(self, tasks: list[Task], step: int, policy_version: int,
                 offset: int = 0) -> list[TaskRollout]:
        rollouts = self.observe(tasks, step, policy_version, offset)
        self.solve(rollouts, step, policy_version)
        return rollouts

    def observe(self, tasks: list[Task], step: int, policy_version: int,
                offset: int = 0) -> list[TaskRollout]:
        """One rollout per task with its G_O Observer captions (`solver` still empty); task i
        is the step's task `offset + i`."""
        prompts = [self.prompts.observer(t) for t in tasks]
        keys = range(offset, offset + len(tasks))
        captions = sample_groups(self.engine, tasks, prompts, self.observer, Role.OBSERVER,
                                 keys, step, policy_version)
        return [TaskRollout(task=t, observer=c, index=k) for t, c, k in zip(tasks, captions, keys)]

    def solve(self, rollouts: list[TaskRollout], step: int, policy_version: int) -> None:
        """Fill each rollout's empty `solver` with [G_O][G_S] answers to its Observer captions,
        in place (the captions may come from elsewhere, e.g. given captions in evaluation). Each
        caption's `meta["solver_caption"]` records the text the Solver was shown."""
        with_image = self.solver_sees_image(step)
        for c in (c for r in rollouts for c in r.observer):
            c.meta["solver_caption"] = solver_caption(c.text, self.eos_token)
        prompts = [self.prompts.solver(r.task, c.meta["solver_caption"], with_image)
                   for r in rollouts for c in r.observer]
        # caption k of the step's task i is the step's Solver request i * G_O + k
        keys = [r.index * len(r.observer) + k for r in rollouts for k in range(len(r.observer))]
        samples = iter(self.engine.generate([request_of(p, key) for p, key in zip(prompts, keys)],
                                            step_settings(self.solver, step)))
        prompt_iter, key_iter = iter(prompts), iter(keys)
        for r in rollouts:
            for k in range(len(r.observer)):
                group, prompt = group_id(step, 0, True, next(key_iter)), next(prompt_iter)
                r.solver.append([trajectory_of(g, Role.SOLVER, r.task, group, policy_version, step,
                                               prompt.images, caption_index=k,
                                               slot=Slot(r.draw, r.index))
                                 for g in next(samples)])

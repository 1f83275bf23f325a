"""2 ranks (`routing_replay.py --engine` calls it): rollout routing replay (R3) end to end with the real engine: vLLM (one engine per rank,
`external_launcher`, CPU MoE kernel) samples image and text prompts on the tiny Qwen3-VL-MoE and
reports the experts it routed every position to (`return_routed_experts`); a Megatron learner at
expert parallel 2 (`MegatronPolicy`, `routing_replay="rollout"`) on the same checkpoint computes
the sampled tokens' log-probs.

It returns, before and after every learner router weight is perturbed (the router moved
between rollout and learning, as an update or a different kernel would): the learner's own
routing agreement with the engine's (`moe/agree` and per role and position kind), the k3
mismatch KL(engine || learner) of the sampled tokens without replay and with rollout replay, and
the fraction of routed tokens whose dispatched experts were the engine's under replay.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from bridge_sync_tp2 import make_image  # noqa: E402
from routing_replay_common import applied_agreement, applied_routing, perturb_routers  # noqa: E402
from tiny_world import shared_checkpoint  # noqa: E402

QUESTIONS = [("How many red circles are there?", True), ("What colour is the square?", True),
             ("What is two plus three?", False)]


def sample(engine, processor, image) -> list:
    """Trajectories of the engine's samples (4 per prompt), with their routing."""
    from prco_mega.rollout import GenerationRequest, SamplingSettings
    from prco_mega.types import Role, Trajectory

    requests = []
    for q, with_image in QUESTIONS:
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": q}]
        text = processor.apply_chat_template([{"role": "user", "content": content}],
                                             add_generation_prompt=True, tokenize=False)
        requests.append(GenerationRequest(prompt=text, images=[image] if with_image else []))
    settings = SamplingSettings(n=4, temperature=1.0, max_new_tokens=16, seed=5)
    out = []
    for k, (request, gens) in enumerate(zip(requests, engine.generate(requests, settings))):
        for g in gens:
            out.append(Trajectory(role=Role(len(out) % 2), task_uid=f"t{k}", group_id=k,
                                  prompt_ids=g.prompt_ids, response_ids=g.token_ids,
                                  rollout_logprobs=g.logprobs, images=list(request.images),
                                  routed_experts=g.routed_experts))
    return out


def mismatch(policy, trajectories, *, replay: bool) -> tuple[float, dict]:
    """k3 KL(engine || learner) over the sampled tokens of the world, and the pass's replay
    metrics."""
    if not replay:
        trajectories = [dataclasses.replace(t, routed_experts=None) for t in trajectories]
    batches = policy.micro_batches(trajectories)
    lps = policy.logprobs(batches)
    metrics = policy.replay.end_step()
    d = torch.cat([(lp.double() - b.old_logprobs.double())[b.loss_mask != 0]
                   for lp, b in zip(lps, batches)])
    t = torch.tensor([float((d.exp() - d - 1).sum()), float(d.numel())])
    dist.all_reduce(t)
    return float(t[0] / t[1]), metrics


def measure(policy, trajectories) -> dict:
    kl_none, _ = mismatch(policy, trajectories, replay=False)
    with policy.replay.mode(apply=False):  # the learner's own routing, compared
        _, own = mismatch(policy, trajectories, replay=True)
    with applied_routing(policy) as seen:
        kl_rollout, _ = mismatch(policy, trajectories, replay=True)
    return {"kl_none": kl_none, "kl_rollout": kl_rollout, "agree_applied":
            applied_agreement(seen), "agree": own}


def engine_check(work: Path) -> dict:
    """The measurements above (every rank calls it; the engine stays up: vLLM's shutdown would
    destroy the shared default group)."""
    from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable

    ensure_torchvision_importable()
    from transformers import AutoProcessor

    from prco_mega.learner.config import LearnerConfig
    from prco_mega.learner.loss_paths import LossSettings, TorchPPO
    from prco_mega.learner.parallel import destroy_parallel
    from prco_mega.rollout import EngineConfig, VllmEngine
    from prco_mega.runtime.build import policy_from_hf

    ckpt = shared_checkpoint(work / "tiny-qwen3vl-moe-engine", 3000, init_std=0.2,
                             family="qwen3_vl_moe")
    engine = VllmEngine(ckpt, EngineConfig(dtype="float32", max_model_len=256, seed=0,
                                           return_routed_experts=True))
    trajectories = sample(engine, AutoProcessor.from_pretrained(ckpt), make_image())
    cfg = LearnerConfig(precision="fp32")
    cfg.parallel.expert_parallel = 2
    cfg.batching.micro_batch_tokens = 256
    cfg.validate()
    policy = policy_from_hf(ckpt, cfg, TorchPPO(LossSettings()), routing_replay="rollout")
    result = {"samples": len(trajectories),
              "image_positions": sum(t.prompt_ids.count(policy.encode.image_token_id)
                                     for t in trajectories),
              "rescore_seconds": engine.last_routing_seconds,
              "same_weights": measure(policy, trajectories)}
    perturb_routers(policy, 0.5)
    result["perturbed"] = measure(policy, trajectories)
    del policy
    destroy_parallel()
    return result

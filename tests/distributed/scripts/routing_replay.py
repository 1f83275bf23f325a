"""2 ranks: routing replay of the Megatron Qwen3-VL-MoE learner (`learner/routing_replay.py`) at
several layouts, through `MegatronPolicy` (packing, the pre-step pass, the training step).

The "engine routing" each trajectory carries is transformers' own router top-k on the same
checkpoint (its `mlp.gate` indices), i.e. what an engine with the learner's weights routes. Per
layout (`LAYOUTS`), rank 0 writes:
- `agree_same_weights`: the learner's own routing vs it (`moe/agree` of a pass);
- `replay_vs_own_max_abs`: max |log-prob with replay - without| on the same weights;
- after every router weight is perturbed: `agree_perturbed` (own routing vs the carried one),
  and the k3 mismatch KL of the perturbed learner's log-probs against the unperturbed ones
  without replay (`kl_none`) and with rollout replay (`kl_rollout`), with the replayed
  agreement (`agree_applied`: the experts Megatron's dispatcher received vs the carried ones);
- `grad_norm_plain`, `grad_norm_rollout`: the gradient norm of one step (lr 1e-30, below the
  weights' ulp, so they stay) without replay and replaying the carried routing; `grad_norm_plain_2`
  and `grad_norm_learner` the same for two mini-batches without replay and under R2 (a record
  pass, then the training passes replay), with R2's `moe/agree`; `grad_norm_perturbed_rollout`
  of a replayed step with the perturbed routers (activation recompute must replay too).
With `--engine`, first the same with vLLM as the engine (`routing_replay_engine.py`), under
`"engine"`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from routing_replay_common import (applied_agreement, applied_routing,  # noqa: E402
                                   perturb_routers)
from routing_replay_engine import engine_check  # noqa: E402
from tiny_world import shared_checkpoint, text_trajectories  # noqa: E402

LAYOUTS = {  # name: (tp, pp, ep, expert tp or None, sequence parallel, recompute)
    "ep2": (1, 1, 2, None, False, "none"),
    "tp2-sp": (2, 1, 1, None, True, "none"),
    "tp2-ep2-sp-full": (2, 1, 2, 1, True, "full"),
    "pp2": (1, 2, 1, None, False, "none"),
}


def hf_routing(hf_dir: Path, trajectories) -> list:
    """Each trajectory with `routed_experts` [T, L, k] from transformers' routers."""
    import transformers

    hf = transformers.AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.float32)
    hf.eval()
    layers = hf.model.language_model.layers
    picked: list = []
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, i, o: picked.append(o[2]))
             for layer in layers]
    out = []
    for t in trajectories:
        picked.clear()
        ids = torch.tensor([t.prompt_ids + t.response_ids])
        with torch.no_grad():
            hf(input_ids=ids)
        routed = torch.stack([p.reshape(ids.shape[1], -1) for p in picked], dim=1)
        out.append(dataclasses.replace(t, routed_experts=routed.to(torch.uint8).numpy()))
    for h in hooks:
        h.remove()
    return out


def logprobs(policy, trajectories, *, replay: bool) -> torch.Tensor:
    """Response-token log-probs of this data-parallel rank's share, with or without the carried
    routing replayed; the agreement metrics of the pass in `policy.last_replay`."""
    if not replay:
        trajectories = [dataclasses.replace(t, routed_experts=None) for t in trajectories]
    batches = policy.micro_batches(trajectories)
    lps = policy.logprobs(batches)
    policy.last_replay = policy.replay.end_step()
    return torch.cat([lp[b.loss_mask != 0] for lp, b in zip(lps, batches)])


def max_over_world(x: float) -> float:
    t = torch.tensor([x])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def k3(reference: torch.Tensor, lp: torch.Tensor) -> float:
    """Mean k3 KL estimate between the two token log-prob vectors, over the world's tokens."""
    d = lp - reference
    t = torch.tensor([float((d.exp() - d - 1).sum()), float(d.numel())])
    dist.all_reduce(t)
    return float(t[0] / t[1])


@contextlib.contextmanager
def captured_value_error():
    """Within: the block must raise ValueError; its message lands in the yielded list."""
    box: list = []
    try:
        yield box
    except ValueError as e:
        box.append(str(e))
    else:
        box.append(None)


def check(name: str, hf_dir: Path, trajectories) -> dict:
    from prco_mega.learner.config import LearnerConfig
    from prco_mega.learner.loss_paths import LossSettings, TorchPPO
    from prco_mega.learner.parallel import destroy_parallel
    from prco_mega.runtime.build import policy_from_hf

    tp, pp, ep, etp, sp, recompute = LAYOUTS[name]
    cfg = LearnerConfig(precision="fp32")
    par = cfg.parallel
    par.tensor_parallel, par.pipeline_parallel, par.sequence_parallel = tp, pp, sp
    par.expert_parallel, par.expert_tensor_parallel = ep, etp
    cfg.recompute.granularity = recompute
    cfg.batching.micro_batch_tokens = 64
    cfg.batching.pad_to_multiple = 2
    cfg.optim.lr = 1e-30  # below every weight's ulp: the steps leave the weights as they are
    cfg.validate()
    policy = policy_from_hf(hf_dir, cfg, TorchPPO(LossSettings()), routing_replay="rollout")
    own = logprobs(policy, trajectories, replay=False)
    replayed = logprobs(policy, trajectories, replay=True)
    result = {"agree_same_weights": policy.last_replay["moe/agree"],
              "replay_vs_own_max_abs": max_over_world(float((replayed - own).abs().max()))}
    policy.routing_replay = "none"
    result["grad_norm_plain"] = policy.step(
        [dataclasses.replace(t, routed_experts=None) for t in trajectories])["grad_norm"]
    policy.routing_replay = "rollout"
    with captured_value_error() as refused:  # rollout replay without the engine's routing
        policy.step([dataclasses.replace(t, routed_experts=None) for t in trajectories])
    result["missing_routing_error"] = refused[0]
    result["grad_norm_rollout"] = policy.step(trajectories)["grad_norm"]
    cfg.batching.mini_batches = 2
    policy.routing_replay = "none"
    result["grad_norm_plain_2"] = policy.step(trajectories)["grad_norm"]
    policy.routing_replay = "learner"
    learner = policy.step(trajectories)
    result |= {"grad_norm_learner": learner["grad_norm"], "agree_learner": learner["moe/agree"]}
    cfg.batching.mini_batches = 1
    policy.routing_replay = "rollout"
    perturb_routers(policy, 0.5)
    none = logprobs(policy, trajectories, replay=False)
    with policy.replay.mode(apply=False):  # compare only: the perturbed routers' own routing
        logprobs(policy, trajectories, replay=True)
    result["agree_perturbed"] = policy.last_replay["moe/agree"]
    result["agree_perturbed_layers"] = {k: v for k, v in policy.last_replay.items()
                                        if k.startswith("moe/agree/")}
    with applied_routing(policy) as applied:
        rollout = logprobs(policy, trajectories, replay=True)
    result["agree_applied"] = applied_agreement(applied)
    # Under activation recompute the backward re-runs the routers: it must replay the same
    # routing as the forward did (the perturbed routers' own would differ), so this norm is the
    # same at every layout, recompute or not.
    result["grad_norm_perturbed_rollout"] = policy.step(trajectories)["grad_norm"]
    result |= {"kl_none": k3(own, none), "kl_rollout": k3(own, rollout),
               "roles": {k: v for k, v in policy.last_replay.items()
                         if k.count("/") == 3}}
    del policy
    destroy_parallel()
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    p.add_argument("--engine", action="store_true",
                   help="first the end-to-end check with vLLM (routing_replay_engine.py)")
    args = p.parse_args()
    out = Path(args.out)
    dist.init_process_group("gloo")
    from prco_mega.platform.megatron_cpu import install_megatron_cpu_compat

    install_megatron_cpu_compat()
    hf_dir = shared_checkpoint(out.parent / "tiny-moe", family="qwen3_vl_moe")
    results = {"engine": engine_check(out.parent)} if args.engine else {}
    trajectories = hf_routing(hf_dir, text_trajectories([1.0, -1.0, 0.5, -0.5, 1.0, -1.0]))
    results |= {name: check(name, hf_dir, trajectories) for name in args.layouts.split(",")}
    if dist.get_rank() == 0:
        out.write_text(json.dumps(results, indent=1))
    if args.engine:
        dist.barrier()  # vLLM's engine shares the default group: its shutdown would destroy it
    else:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

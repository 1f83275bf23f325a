"""The KL anchor of `MegatronPolicy(reference=True)` at TP=2 (2 ranks, gloo, fp32): reference
log-probs before and after training steps, and what one KL-only step does to the policy.

Rank 0 writes, for the response tokens of a fixed text-only PRCO step:
- `start_max_abs`: max |policy - reference| log-prob before any step (same checkpoint: ~0);
- `ref_drift_max_abs`: max |reference after 3 policy steps - reference before| (frozen: 0);
- `policy_drift_max_abs`: the same for the policy (it trained: > 0);
- `kl_before`, `kl_after`: mean k3 KL(policy || reference) before and after one step whose only
  term is the KL (advantages 0, kl_coef 1), and that step's reported per-role `kl` metrics;
- `missing_reference_error`: the error of a KL step on a policy built without a reference.
"""
from __future__ import annotations

import dataclasses
import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from tiny_world import start, text_trajectories  # noqa: E402


def trajectories(advantage: float):
    """Three Observer/Solver pairs: Observers get `advantage`, Solvers `-advantage`."""
    return text_trajectories([advantage * (1 - k % 2 * 2) for k in range(6)])


def response_logprobs(policy, chunks, trajs) -> torch.Tensor:
    """[N] log-probs of the response tokens of `trajs` under `chunks` (policy's or reference)."""
    from prco_mega.learner.train_step import compute_logprobs

    batches = policy.micro_batches(trajs)
    lps = compute_logprobs(chunks, batches, pg=policy.pg)
    return torch.cat([lp[b.loss_mask != 0] for lp, b in zip(lps, batches)])


def k3(policy_lp: torch.Tensor, ref_lp: torch.Tensor) -> float:
    d = ref_lp - policy_lp
    return float((d.exp() - d - 1).mean())


def main() -> None:
    from prco_mega.runtime.build import policy_from_hf
    from prco_mega.learner.config import LearnerConfig
    from prco_mega.learner.loss_paths import LossSettings, TorchPPO
    from prco_mega.learner.parallel import destroy_parallel

    out, hf_dir = start()
    cfg = LearnerConfig(precision="fp32")
    cfg.parallel.tensor_parallel = 2
    cfg.batching.micro_batch_tokens = 64
    cfg.optim.lr = 1e-3
    cfg.validate()
    policy = policy_from_hf(hf_dir, cfg, TorchPPO(LossSettings()), reference=True)
    trajs = trajectories(advantage=1.0)
    ref0 = response_logprobs(policy, policy.reference, trajs)
    pol0 = response_logprobs(policy, policy.chunks, trajs)
    for _ in range(3):  # plain PPO steps (kl_coef 0) pull the policy away from the start
        policy.step(trajs)
    ref1 = response_logprobs(policy, policy.reference, trajs)
    pol1 = response_logprobs(policy, policy.chunks, trajs)
    kl_only = trajectories(advantage=0.0)
    policy.path = TorchPPO(dataclasses.replace(policy.path.settings, kl_coef=1.0))
    metrics = policy.step(kl_only)
    pol2 = response_logprobs(policy, policy.chunks, trajs)
    result = {
        "start_max_abs": float((pol0 - ref0).abs().max()),
        "ref_drift_max_abs": float((ref1 - ref0).abs().max()),
        "policy_drift_max_abs": float((pol1 - pol0).abs().max()),
        "kl_before": k3(pol1, ref0), "kl_after": k3(pol2, ref0),
        "reported_kl": {k: v for k, v in metrics.items() if k.endswith("/kl")},
        "tokens": int(ref0.numel()),
    }
    del policy
    destroy_parallel()
    plain = policy_from_hf(hf_dir, cfg, TorchPPO(LossSettings(kl_coef=1.0)))
    try:
        plain.step(kl_only)
        result["missing_reference_error"] = None
    except ValueError as e:
        result["missing_reference_error"] = str(e)
    if dist.get_rank() == 0:
        out.write_text(json.dumps(result, indent=1))
    destroy_parallel()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""Measure what the tiny CPU learner allocates per rank and put the memory planner's prediction
beside it, at TP=1 x DP=2 and TP=2 x DP=1 in one launch (2 ranks, gloo, fp32).

For each layout, after one real optimizer step of `MegatronPolicy`, every rank reports:
- weights: bytes of its parameters (sum of `numel * element_size`) and of the storage behind them
  (the distributed optimizer re-maps parameters into DDP's padded `param_data` buffer);
- gradients: bytes of the parameters' `main_grad` views and of DDP's `grad_data` buffers (padded);
- optimizer: bytes of every optimizer-owned tensor whose storage is not a weight or gradient
  buffer: fp32 master copies (none for fp32 parameters: mcore's `shard_fp32_groups` are views
  into `param_data`) + Adam `exp_avg`, `exp_avg_sq` of the rank's shard + torch's 4-byte `step`
  tensors, and the rank's shard of the buffer (elements, padding excluded);
- the planner's rows for the same dims (read from the checkpoint's config.json) and layout.
Then, for each recompute setting of `tools/gpu_check.py` (shared out over the ranks, TP = 1), the
bytes the autograd graph keeps inside the decoder during one bf16 forward + backward of the tiny
model on one 256-token sequence with unfused (math) attention (`gpu_check.SavedActivations`:
unique storages through `saved_tensors_hooks`, after the forward and at the peak), beside the
planner's figure for the same dims.
Rank 0 writes `{layout: [per-rank dicts], "activations": {setting: dict}}` to `--out`.
"""
from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
import torch.distributed as dist
from tiny_world import start, text_trajectories

# tools/gpu_check.py measures the same activations on CUDA: its meter and step are the ones used here
sys.path.append(str(Path(__file__).resolve().parents[3] / "tools"))
import gpu_check  # noqa: E402

LAYOUTS = {"tp1_dp2": 1, "tp2_dp1": 2}  # name -> TP (2 ranks: DP = 2 / TP)
ACT_TOKENS = 256
"""Tokens of the activation measurement's one sequence."""


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def _unique_storage_bytes(tensors) -> tuple[int, set]:
    keys = {_storage_key(t) for t in tensors}
    return sum(n for _, n in keys), {p for p, _ in keys}


def _inner_optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _optimizer_tensors(optimizer):
    """(master copies, state tensors by name, shard params) of a (chained) mcore optimizer."""
    masters, state, shards = [], {}, []
    for opt in _inner_optimizers(optimizer):
        for group in getattr(opt, "shard_fp32_from_float16_groups", []):
            masters += [t for t in group if t is not None]
        for group in getattr(opt, "shard_fp32_groups", []):
            shards += list(group)
        for per_param in opt.optimizer.state.values():
            for name, t in per_param.items():
                if torch.is_tensor(t):
                    state.setdefault(name, []).append(t)
    return masters, state, shards


def measure(policy) -> dict:
    """Bytes this rank holds in weights, gradients and optimizer state (see module doc)."""
    params = [p for c in policy.chunks for p in c.parameters()]
    buffers = [b for c in policy.chunks for b in c.buffers + c.expert_parallel_buffers]
    w_storage, w_ptrs = _unique_storage_bytes(params)
    g_ptrs = {_storage_key(b.grad_data)[0] for b in buffers}
    masters, state, shards = _optimizer_tensors(policy.optimizer)
    new = [t for t in masters + [t for ts in state.values() for t in ts]
           if _storage_key(t)[0] not in w_ptrs | g_ptrs]
    dp = policy.pg.dp.size()
    return {
        "params": sum(p.numel() for p in params),
        "param_tensors": len(params),
        "buckets": sum(len(b.buckets) for b in buffers),
        "weights_bytes": sum(p.numel() * p.element_size() for p in params),
        "weights_storage_bytes": w_storage,
        "grads_bytes": sum(p.main_grad.numel() * p.main_grad.element_size() for p in params),
        "grad_buffer_bytes": sum(b.grad_data.nbytes for b in buffers),
        "buffer_numel": sum(b.numel for b in buffers),
        "buffer_numel_unpadded": sum(b.numel_unpadded for b in buffers),
        "shard_numel": sum(t.numel() for t in shards),
        "buffer_shard_numel": sum(b.numel for b in buffers) // dp,
        "shards_are_views_of_weights": all(_storage_key(t)[0] in w_ptrs for t in shards),
        "master_bytes": sum(t.nbytes for t in masters),
        "state_bytes": {k: sum(t.nbytes for t in ts) for k, ts in state.items()},
        "state_tensors": len(state.get("exp_avg", [])),
        "optimizer_new_bytes": _unique_storage_bytes(new)[0],
    }


def planned(hf_dir: Path, tp: int, dp: int) -> dict:
    """The planner's weight, gradient and optimizer rows for this layout, fp32 as on CPU."""
    from prco_mega.cluster.plan import PlanInputs, model_dims, plan_memory

    x = PlanInputs(model=model_dims(str(hf_dir)), tp=tp, pp=1, dp=dp, sequence_parallel=False,
                   micro_batch_tokens=64, max_model_len=64, param_bytes=4, grad_bytes=4,
                   distributed_optimizer=True, rollout_batch=1)
    rows = {r.name.split(" ")[0].rstrip(":"): r.bytes for r in plan_memory(x).train}
    return {"weights": rows["weights"], "gradients": rows["gradients"],
            "optimizer": rows["optimizer"]}


def trajectories():
    """A small text-only PRCO step."""
    return text_trajectories([1.0 - k / 2 for k in range(4)])


def run_layout(hf_dir: Path, tp: int) -> dict:
    from prco_mega.runtime.build import policy_from_hf
    from prco_mega.learner.config import LearnerConfig
    from prco_mega.learner.loss_paths import LossSettings, TorchPPO
    from prco_mega.learner.parallel import destroy_parallel

    cfg = LearnerConfig(precision="fp32")
    cfg.parallel.tensor_parallel = tp
    cfg.batching.micro_batch_tokens = 64
    cfg.validate()
    policy = policy_from_hf(hf_dir, cfg, TorchPPO(LossSettings()))
    policy.step(trajectories())
    out = {"rank": dist.get_rank(), "tp": tp, "dp": policy.pg.dp.size(),
           "tp_rank": policy.pg.tp.rank(), "dp_rank": policy.pg.dp.rank(),
           **measure(policy), "planned": planned(hf_dir, tp, policy.pg.dp.size())}
    del policy
    gc.collect()
    destroy_parallel()
    return out


def measure_activations(hf_dir: Path, names: list[str]) -> dict:
    """Saved-activation bytes of one bf16 forward + backward of the tiny decoder at the recompute
    settings `names` (`gpu_check.settings`), unfused (math) attention, beside the planner's."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from prco_mega.bridge.hf_io import load_hf_config
    from prco_mega.cluster.plan import model_dims
    from prco_mega.learner.parallel import destroy_parallel, init_parallel

    cfg, dims = load_hf_config(hf_dir), model_dims(str(hf_dir))
    pg = init_parallel(1, 1)
    tokens = torch.randint(0, 400, (1, ACT_TOKENS), generator=torch.Generator().manual_seed(0))
    out = {}
    for name in names:
        rc = gpu_check.settings(dims.layers)[name]
        chunk = gpu_check.build_chunk(cfg, pg, rc, torch.bfloat16)
        with sdpa_kernel(SDPBackend.MATH):
            meter = gpu_check.decoder_step(chunk, tokens, lambda h, w: h.float().square().mean())
        out[name] = {"forward": meter.forward, "peak": meter.peak,
                     "planned": gpu_check.planned(dims, rc, ACT_TOKENS, flash=False),
                     "rotary_bytes": ACT_TOKENS * dims.head_dim * 4}
    destroy_parallel()
    return out


def main() -> None:
    out, hf_dir = start()
    result = {}
    for name, tp in LAYOUTS.items():
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, run_layout(hf_dir, tp))
        result[name] = ranks
    # the recompute settings shared out over the ranks (TP = 1, no DDP: no rank waits on another)
    from prco_mega.cluster.plan import model_dims

    names = list(gpu_check.settings(model_dims(str(hf_dir)).layers))
    mine = measure_activations(hf_dir, names[dist.get_rank()::dist.get_world_size()])
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mine)
    result["activations"] = {n: next(p[n] for p in parts if n in p) for n in names}
    if dist.get_rank() == 0:
        out.write_text(json.dumps(result, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""Shared pieces of the train-step / checkpoint torchrun scripts: the tiny Qwen2.5-VL at any
layout with layout-independent weights, a fixed PRCO step of trajectories (some with images), and
gathering full (unsharded) weights for comparison across layouts."""
from __future__ import annotations

import os
import zlib

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from prco_mega.learner.config import LearnerConfig, OptimizerConfig  # noqa: E402
from prco_mega.learner.mrope import mrope_positions_1d  # noqa: E402
from prco_mega.learner.packing import SequenceInputs, text_inputs  # noqa: E402
from prco_mega.types import Role, Trajectory  # noqa: E402

IMAGE_GRID = (1, 4, 4)  # t, h, w patches -> 4 merged image tokens (spatial merge 2)
PATCH_DIM = 3 * 2 * 14 * 14  # channels * temporal patch * patch * patch


def hf_config():
    from prco_mega.families.qwen2_5_vl.tiny import tiny_qwen25vl_config

    return tiny_qwen25vl_config()


def learner_config(tp=1, pp=1, vpp=None, budget=48) -> LearnerConfig:
    # adam_eps well above fp32 gradient noise: Adam's update lr * g / (|g| + eps) would otherwise
    # turn summation-order noise in near-zero gradients into a sizeable fraction of lr.
    cfg = LearnerConfig(optim=OptimizerConfig(lr=1e-3, clip_grad=1.0, weight_decay=0.01,
                                              adam_eps=1e-4))
    cfg.parallel.tensor_parallel, cfg.parallel.pipeline_parallel = tp, pp
    cfg.parallel.virtual_pipeline_parallel = vpp
    cfg.batching.micro_batch_tokens = budget
    cfg.precision = "fp32"
    cfg.validate()
    return cfg


def deterministic_init(chunks) -> None:
    """Fill every parameter from a global tensor seeded by its checkpoint key, so any TP/PP
    layout holds the same model (the slice of the global tensor this rank owns)."""
    with torch.no_grad():
        for st in sharded_tensors(chunks):
            assert st.flattened_range is None
            g = torch.Generator().manual_seed(zlib.crc32(st.key.encode()))
            full = torch.randn(st.global_shape, generator=g) * 0.05
            if any(n in st.key for n in ("norm", "layer_norm", "ln_q")):
                full += 1.0
            st.data.copy_(full[st.global_slice()].reshape(st.data.shape))


def build(cfg: LearnerConfig):
    """(pg, ddp_chunks, optimizer, scheduler) at the config's layout with deterministic weights."""
    from prco_mega.learner.provider import build_model
    from prco_mega.learner.optim import build_optimizer
    from prco_mega.learner.parallel import init_parallel

    p = cfg.parallel
    pg = init_parallel(tp=p.tensor_parallel, pp=p.pipeline_parallel,
                       vpp=p.virtual_pipeline_parallel, seed=cfg.seed)
    chunks = build_model(hf_config(), pg, vpp=p.virtual_pipeline_parallel)
    deterministic_init(chunks)
    ddp, opt, sched = build_optimizer(chunks, cfg, pg=pg)
    return pg, ddp, opt, sched


def trajectories(n: int = 10, seed: int = 0) -> list[Trajectory]:
    """A PRCO step: Observer and Solver trajectories of varied lengths; every third has an image."""
    cfg = hf_config()
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        p_len, r_len = 4 + int(torch.randint(0, 14, (1,), generator=g)), 2 + k % 7
        prompt = torch.randint(0, 480, (p_len,), generator=g).tolist()
        if k % 3 == 0:
            prompt = prompt[:2] + [cfg.vision_start_token_id] + [cfg.image_token_id] * 4 \
                + [cfg.vision_end_token_id] + prompt[2:]
        response = torch.randint(0, 480, (r_len,), generator=g).tolist()
        old = (-6.3 + 0.6 * torch.randn(r_len, generator=g)).tolist()
        adv = float(torch.randn((), generator=g))
        out.append(Trajectory(role=Role(k % 2), task_uid=f"t{k // 4}", group_id=k // 4,
                              prompt_ids=prompt, response_ids=response, rollout_logprobs=old,
                              advantage=adv, meta={"seed": k}))
    return out


def encode(traj: Trajectory) -> SequenceInputs:
    """Positions and (random, seeded per trajectory) image patches of one trajectory."""
    cfg = hf_config()
    ids = torch.tensor(traj.prompt_ids + traj.response_ids)
    if not (ids == cfg.image_token_id).any():
        return text_inputs(traj)
    grid = torch.tensor([IMAGE_GRID])
    g = torch.Generator().manual_seed(1000 + traj.meta["seed"])
    pixels = torch.randn(int(grid.prod()), PATCH_DIM, generator=g)
    return SequenceInputs(mrope_positions_1d(ids, grid, cfg.image_token_id, 2), pixels, grid)


def sharded_tensors(chunks) -> list:
    """The model's checkpoint tensors (factories such as the fused gate/up weight built into
    their parts, whose `data` are views of the parameters)."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

    from prco_mega.learner.checkpoint import model_sharded_state_dict

    sd = model_sharded_state_dict(chunks)
    apply_factories(sd)
    return [st for st in nested_values(sd) if isinstance(st, ShardedTensor)]


def full_weights(chunks) -> dict[str, torch.Tensor]:
    """Every parameter as one global tensor, keyed by checkpoint key, on every rank."""
    mine = [(st.key, st.global_shape, st.global_slice(), st.data.detach().clone())
            for st in sharded_tensors(chunks)]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    out: dict[str, torch.Tensor] = {}
    for pieces in everyone:
        for key, shape, where, data in pieces:
            full = out.setdefault(key, torch.full(shape, float("nan")))
            full[where] = data.reshape(full[where].shape)
    return out


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    worst = max(((a[k] - b[k]).abs().max().item(), k) for k in a)
    return worst


def qwen_forward():
    from prco_mega.learner.forward import qwen_vl_forward

    return qwen_vl_forward

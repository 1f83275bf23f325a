"""The start of a parallel layout: torch.distributed (gloo on CPU, NCCL on GPU), Megatron's
model-parallel groups and RNG, returned as the explicit `ProcessGroupCollection` that the model,
DDP, optimizer and the bridge take as an argument. The layout is judged first, by
`learner.layout.check_layout`, before any process group starts.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from prco_mega.learner.layout import check_layout
from prco_mega.platform.megatron_cpu import install_megatron_cpu_compat


def init_parallel(tp: int = 1, pp: int = 1, vpp: int | None = None, backend: str | None = None,
                  seed: int = 1234, hf_config: Any = None, *, ep: int = 1,
                  etp: int | None = None):
    """Start torch.distributed (if needed) and Megatron's groups; return a `ProcessGroupCollection`.

    `backend` defaults to NCCL with CUDA and gloo without; on CPU the megatron compatibility layer
    is installed first. The collection holds tp, pp, dp, cp, embd, ... and the experts' ep,
    expt_tp, expt_dp (expert parallel `ep`, expert tensor parallel `etp`, None: tp) as Megatron
    defines them; a MoE model takes its expert layout from them.
    `seed` seeds Megatron's RNG tracker (TP ranks get distinct streams for sharded init/dropout).
    With `hf_config`, `check_layout` judges the layout (world size from torchrun's WORLD_SIZE)
    before any process group starts.
    """
    if hf_config is not None:
        world = (dist.get_world_size() if dist.is_initialized()
                 else int(os.environ.get("WORLD_SIZE", 1)))
        check_layout(hf_config, world, tp, pp, vpp, ep=ep, etp=etp)

    install_megatron_cpu_compat()
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
        if torch.cuda.is_available():
            torch.cuda.set_device(dist.get_rank() % torch.cuda.device_count())
    from megatron.core import parallel_state
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp, expert_model_parallel_size=ep,
        expert_tensor_parallel_size=etp)
    model_parallel_cuda_manual_seed(seed)
    return ProcessGroupCollection.use_mpu_process_groups()


def destroy_parallel() -> None:
    """Tear down Megatron's groups (torch.distributed stays up for the next layout)."""
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()

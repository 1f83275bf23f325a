"""The `cluster:` section of a run config: machines, rollout placement, launch settings and the
memory planner's assumptions. Plain dataclasses with no dependency on the rest of the stack, so
that `config` can assemble the run config from them and the planner can read whole configs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

@dataclass
class SlurmSection:
    partition: str | None = None
    """`#SBATCH --partition`; None = the cluster's default."""
    account: str | None = None
    """`#SBATCH --account`; None = the user's default."""
    time: str = "24:00:00"
    """Wall-clock limit (`#SBATCH --time`, [D-]HH:MM:SS)."""
    cpus_per_task: int = 96
    """CPUs of the one task per node (torchrun and all its ranks, data loaders, vLLM workers)."""
    log_dir: str = "logs"
    """Directory of `%x-%j.out/.err` (relative to the submit directory; created before sbatch)."""
    exclusive: bool = True
    """Ask for whole nodes: colocated vLLM and the learner want every GPU's memory."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run on the batch host before srun (module load, venv activation)."""
    extra_sbatch: list[str] = field(default_factory=list)
    """Further `#SBATCH` options verbatim, e.g. `--qos=high`."""

    def validate(self) -> None:
        if self.cpus_per_task < 1:
            raise ValueError(f"cluster.slurm.cpus_per_task ({self.cpus_per_task}) must be >= 1")


@dataclass
class MemoryAssumptions:
    """What the planner assumes beyond the run config. Activation recompute is not here: the
    planner reads the learner's own `learner.recompute`, the setting the runtime applies."""

    flash_attention: bool = True
    """Fused attention (flash / cuDNN): no [heads, s, s] score tensors are kept."""
    grad_dtype: Literal["fp32", "bf16"] = "fp32"
    """Gradient buffer dtype (Megatron accumulates and reduces bf16 models' grads in fp32)."""
    vision_frozen: bool = False
    """The ViT gets no gradients (no optimizer state, no saved activations)."""
    image_tokens_per_micro_batch: int = 4096
    """Language-model image tokens in one micro-batch (ViT patches = 4x this with 2x2 merging)."""
    loss_chunk_tokens: int | None = None
    """Token chunk of the fused loss head; None = T / ceil(V_local / H) (logit chunk <= [T, H])."""
    reserved_gib: float = 4.0
    """Per-GPU memory outside tensors: CUDA context, NCCL buffers, allocator fragmentation."""
    rollout_overhead_gib: float = 2.0
    """vLLM memory besides weights and KV cache (profiled activations, CUDA graphs, sampler)."""

    def validate(self) -> None:
        if self.image_tokens_per_micro_batch < 0 or self.reserved_gib < 0:
            raise ValueError(f"cluster.memory: image_tokens_per_micro_batch "
                             f"({self.image_tokens_per_micro_batch}) and reserved_gib "
                             f"({self.reserved_gib}) must be >= 0")


@dataclass
class ClusterSection:
    model: str = "qwen2.5-vl-7b"
    """Architecture to plan for: a preset in prco_mega.cluster.dims or a path to a config.json."""
    nodes: int = 1
    """Learner nodes; the learner's world size is nodes * gpus_per_node."""
    gpus_per_node: int = 8
    """GPUs per node (torchrun --nproc_per_node)."""
    gpu_memory_gib: float = 79.6
    """Memory of one GPU as the driver reports it (H100 SXM 80GB: 81559 MiB = 79.6 GiB)."""
    data_parallel: int | None = None
    """Expected DP degree; when set, world size must equal TP * PP * DP (guards edits)."""
    rollout_placement: Literal["colocated", "separate"] = "colocated"
    """vLLM engines on the learner's GPUs (sleeping during training) or on their own nodes."""
    rollout_nodes: int = 0
    """Extra nodes for the engines when rollout_placement is separate (0 when colocated)."""
    master_port: int = 29500
    """Rendezvous port on the first node."""
    rdzv_backend: Literal["c10d", "static"] = "c10d"
    """torchrun rendezvous: c10d (ranks by arrival, restart-safe) or static (--node_rank fixed)."""
    nccl_socket_ifname: str | None = None
    """NCCL_SOCKET_IFNAME (bootstrap/TCP interface, e.g. `ens`, `^lo,docker`); None = unset."""
    nccl_ib_hca: str | None = None
    """NCCL_IB_HCA (InfiniBand adapters, e.g. `mlx5`); None = NCCL's auto-detection."""
    env: dict[str, str] = field(default_factory=dict)
    """Further environment variables exported on every node (override the defaults)."""
    slurm: SlurmSection = field(default_factory=SlurmSection)
    """sbatch settings."""
    memory: MemoryAssumptions = field(default_factory=MemoryAssumptions)
    """What the memory planner assumes about the run."""

    def validate(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1 or self.gpu_memory_gib <= 0:
            raise ValueError(f"cluster.nodes ({self.nodes}), gpus_per_node ({self.gpus_per_node}) "
                             f"and gpu_memory_gib ({self.gpu_memory_gib}) must be positive")
        if (self.rollout_placement == "separate") != (self.rollout_nodes > 0):
            raise ValueError(f"cluster.rollout_nodes ({self.rollout_nodes}) must be > 0 exactly "
                             f"when rollout_placement is 'separate' (got "
                             f"{self.rollout_placement!r})")

    @property
    def world_size(self) -> int:
        """Learner ranks."""
        return self.nodes * self.gpus_per_node

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
class TimingAssumptions:
    """Rates behind the planner's phase times (`cluster.timing`). None is measured here: the
    defaults are an H100 SXM node's published peaks, the bandwidths docs/cluster.md assumes, and
    efficiencies that are assumptions, stated as such."""

    peak_tflops: float = 989.0
    """Dense bf16 tensor-core TFLOP/s of one GPU (H100 SXM datasheet: 989)."""
    learner_mfu: float = 0.25
    """Share of peak the learner's passes reach, all-to-all and pipeline waits included (an
    assumption; fine-grained MoE layers with narrow experts sit well below dense models)."""
    prefill_mfu: float = 0.5
    """Share of peak vLLM's prefill reaches (an assumption)."""
    hbm_gb_s: float = 3350.0
    """HBM bandwidth of one GPU in GB/s (H100 SXM datasheet: 3.35 TB/s)."""
    decode_bandwidth_share: float = 0.5
    """Share of `hbm_gb_s` one decode iteration reaches while reading the engine's weights and
    its batch's KV cache (an assumption: decoding is memory-bound)."""
    nvlink_gb_s: float = 300.0
    """NCCL bandwidth per GPU inside a node (docs/cluster.md: NVLink 4 peaks at 450 GB/s per
    direction, all-gathers reach ~300)."""
    infiniband_gb_s: float = 40.0
    """Inter-node bandwidth per GPU (docs/cluster.md: NDR 400 Gb/s, one NIC per GPU, ~40 GB/s)."""
    pcie_gb_s: float = 50.0
    """Host <-> GPU copies per GPU, each direction (PCIe Gen5 x16: 64 GB/s raw, ~50 effective)."""
    host_adam_gb_s: float = 307.0
    """Host-memory bandwidth the CPU Adam of one node's ranks reaches together. Adam is
    memory-bound: per fp32 parameter it reads weight, gradient, m and v and writes weight, m
    and v, 28 B. A two-socket H100 host (DGX H100: 2 x Xeon 8480C, 8 DDR5-4800 channels each)
    peaks at 2 x 8 x 4.8 GT/s x 8 B = 614 GB/s; half of that is assumed for torch's AdamW run by
    8 ranks side by side: 307 / 28 = 11 billion parameters per second per node."""
    image_tokens: int = 1024
    """Image tokens per prompt (the Solver's prompt holds the image too)."""
    text_tokens: int = 128
    """Question and instruction tokens per prompt."""

    def validate(self) -> None:
        rates = {k: v for k, v in vars(self).items() if k not in ("image_tokens", "text_tokens")}
        if any(v <= 0 for v in rates.values()) or not (
                self.learner_mfu <= 1 and self.prefill_mfu <= 1
                and self.decode_bandwidth_share <= 1):
            raise ValueError(f"cluster.timing: rates must be > 0 and shares <= 1 (got {rates})")
        if self.image_tokens < 0 or self.text_tokens < 1:
            raise ValueError(f"cluster.timing: image_tokens ({self.image_tokens}) must be >= 0 "
                             f"and text_tokens ({self.text_tokens}) >= 1")


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
    host_memory_gib: float = 2048.0
    """Host RAM of one node (DGX H100: 2 TiB); the plan's host rows (offloaded optimizer state,
    vLLM's weights while asleep) must fit in it."""
    memory: MemoryAssumptions = field(default_factory=MemoryAssumptions)
    """What the memory planner assumes about the run."""
    timing: TimingAssumptions = field(default_factory=TimingAssumptions)
    """Rates the planner's phase times assume."""

    def validate(self) -> None:
        if (self.nodes < 1 or self.gpus_per_node < 1 or self.gpu_memory_gib <= 0
                or self.host_memory_gib <= 0):
            raise ValueError(f"cluster.nodes ({self.nodes}), gpus_per_node ({self.gpus_per_node}), "
                             f"gpu_memory_gib ({self.gpu_memory_gib}) and host_memory_gib "
                             f"({self.host_memory_gib}) must be positive")
        if (self.rollout_placement == "separate") != (self.rollout_nodes > 0):
            raise ValueError(f"cluster.rollout_nodes ({self.rollout_nodes}) must be > 0 exactly "
                             f"when rollout_placement is 'separate' (got "
                             f"{self.rollout_placement!r})")

    @property
    def world_size(self) -> int:
        """Learner ranks."""
        return self.nodes * self.gpus_per_node

"""Typed inputs of the memory planner and the launchers.

`ClusterSection` (`prco_mega.cluster.config`) is the `cluster:` section of a run config (machines, placement,
launch settings, memory assumptions). `PlanInputs` is the flat set of numbers the memory formulas need; it is built
from a whole config mapping by `plan_inputs_from_config`, which reads the `learner:` section through
the learner's own typed config, the `engine:` section through the rollout engine's typed config,
`kernels.impl` and `cluster:`; the layout is judged by the rule set the converter and the learner
share (`learner.layout.check_layout`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from prco_mega.config import AlgoSection, KernelsSection, from_dict
from prco_mega.learner.config import LearnerConfig, RecomputeConfig
from prco_mega.learner.layout import Layout, LayoutDims, check_layout
from prco_mega.cluster.config import ClusterSection, MemoryAssumptions, SlurmSection  # noqa: F401
from prco_mega.cluster.dims import ModelDims, model_dims
from prco_mega.rollout.config import EngineConfig

GiB = 2**30


@dataclass
class PlanInputs:
    """Everything the memory formulas need, as plain numbers."""

    model: ModelDims
    tp: int
    pp: int
    dp: int
    vpp: int = 1
    ep: int = 1
    """Expert parallel (`learner.parallel.expert_parallel`): each rank holds num_experts / ep of
    each MoE layer's experts."""
    etp: int | None = None
    """Expert tensor parallel (None: tp, Megatron's default): each expert split over etp ranks."""
    sequence_parallel: bool = True
    micro_batch_tokens: int = 16384
    recompute: RecomputeConfig = field(default_factory=RecomputeConfig)
    """The learner's activation recompute (`learner.recompute`), the one the runtime applies."""
    flash_attention: bool = True
    fused_loss_head: bool = True
    param_bytes: int = 2
    """Bytes per weight: 2 for bf16 training (fp32 master copies then live in the optimizer),
    4 for fp32 training (the CPU learner; no master copy: Adam updates the weights in place)."""
    grad_bytes: int = 4
    """Bytes per element of DDP's gradient buffer (fp32 reduction: 4; bf16 grads: 2)."""
    distributed_optimizer: bool = True
    offload_fraction: float = 0.0
    """Share of each rank's optimizer shard kept and stepped on the host
    (`learner.optim.cpu_offload` x `offload_fraction`; 0 = none)."""
    offload_master: bool = False
    """`learner.optim.precision_aware`: the offloaded share's fp32 master copy lives only on the
    host (the distributed optimizer keeps none on the GPU)."""
    gpus_per_node: int = 8
    """GPUs of one node, whose host memory the host rows add up."""
    host_memory_gib: float = 2048.0
    """Host RAM of one node (`cluster.host_memory_gib`)."""
    engine_sleep_level: int = 1
    """vLLM's sleep level (`engine.sleep_level`): 1 keeps a host copy of the engine's weights."""
    vision_frozen: bool = False
    image_tokens_per_micro_batch: int = 4096
    loss_chunk_tokens: int | None = None
    reserved_gib: float = 4.0
    gpu_memory_gib: float = 79.6
    colocated: bool = True
    rollout_tp: int = 1
    engine_expert_parallel: bool = False
    """`engine.enable_expert_parallel`: an engine's experts spread whole over its GPUs instead of
    split in width."""
    rollout_gpu_memory_utilization: float = 0.4
    max_model_len: int = 8192
    rollout_batch: int = 256
    """Sequences vLLM runs at once (max_num_seqs); reported against the KV capacity."""
    rollout_sleep: bool = True
    rollout_overhead_gib: float = 2.0
    engine_dtype_bytes: int = 2
    """Bytes per element of the engine's weights and KV cache (bf16: 2)."""
    reference_model: bool = False
    """A frozen copy of the weights in the learner's layout, the KL anchor (`algo.kl_coef > 0`):
    one more weights row, without gradients or optimizer state."""

    @property
    def expert_etp(self) -> int:
        """The expert-TP size in effect (`etp`, else tp)."""
        return self.tp if self.etp is None else self.etp

    @property
    def expert_dp(self) -> int:
        """Expert data parallel: the ranks of a pipeline stage holding the same experts, over
        which the distributed optimizer shards their state (tp * dp / (ep * etp))."""
        return self.tp * self.dp // (self.ep * self.expert_etp)

    def validate(self) -> None:
        """Refuse layouts the model cannot be split into (`check_layout`) and settings the plan
        cannot hold, naming the numbers."""
        check_layout(layout_dims(self.model), self.tp * self.pp * self.dp, self.tp, self.pp,
                     None if self.vpp == 1 else self.vpp, engine_tp=self.rollout_tp, ep=self.ep,
                     etp=self.etp)
        self.recompute.check_chunk(self.model.layers // (self.pp * self.vpp))
        if self.micro_batch_tokens < self.max_model_len:
            raise ValueError(f"learner micro_batch_tokens ({self.micro_batch_tokens}) must be >= "
                             f"engine.max_model_len ({self.max_model_len}): a trajectory is "
                             "never split across micro-batches")
        if not 0 < self.rollout_gpu_memory_utilization < 1:
            raise ValueError(f"engine.gpu_memory_utilization "
                             f"({self.rollout_gpu_memory_utilization}) must be in (0, 1)")


def layout_dims(m: ModelDims) -> LayoutDims:
    """The sizes of `m` that the layout rules read."""
    return LayoutDims(m.layers, m.heads, m.kv_heads, m.vocab, m.hidden, m.intermediate,
                      m.vision.deepstack if m.vision is not None else 0, m.num_experts,
                      m.moe_intermediate if m.num_experts else 0)


def _check_data_parallel(layout: Layout, expected_dp: int | None) -> None:
    """The DP a config states must be the one its world and layout leave."""
    if expected_dp is not None and layout.tp * layout.pp * expected_dp != layout.world_size:
        raise ValueError(f"tensor_parallel ({layout.tp}) x pipeline_parallel ({layout.pp}) x "
                         f"data_parallel ({expected_dp}) = {layout.tp * layout.pp * expected_dp} "
                         f"!= world size ({layout.world_size})")


def _sections(data: dict):
    return (from_dict(ClusterSection, data.get("cluster"), "cluster"),
            from_dict(LearnerConfig, data.get("learner"), "learner"),
            from_dict(EngineConfig, data.get("engine"), "engine"),
            from_dict(KernelsSection, data.get("kernels"), "kernels"),
            from_dict(AlgoSection, data.get("algo"), "algo"))


def plan_inputs_from_config(data: dict) -> tuple[PlanInputs, ClusterSection]:
    """PlanInputs (validated) and the cluster section from a whole run-config mapping."""
    cluster, learner, engine, kernels, algo = _sections(data)
    par, mem = learner.parallel, cluster.memory
    model, rtp = model_dims(cluster.model), engine.tensor_parallel_size
    if rtp > cluster.gpus_per_node or cluster.gpus_per_node % rtp:
        raise ValueError(f"engine.tensor_parallel_size ({rtp}) must divide gpus_per_node "
                         f"({cluster.gpus_per_node}): an engine stays inside one node")
    layout = check_layout(layout_dims(model), cluster.world_size, par.tensor_parallel,
                          par.pipeline_parallel, par.virtual_pipeline_parallel, engine_tp=rtp,
                          ep=par.expert_parallel, etp=par.expert_tensor_parallel)
    _check_data_parallel(layout, cluster.data_parallel)
    precision = "fp32" if learner.precision == "fp32" else "bf16"  # "auto" is bf16 on GPUs
    learner.optim.check_offload(precision, cuda_available=True)  # a cluster's ranks have GPUs
    optim = learner.optim
    inputs = PlanInputs(
        model=model, tp=par.tensor_parallel, pp=par.pipeline_parallel, dp=layout.dp,
        vpp=par.virtual_pipeline_parallel or 1, ep=layout.ep, etp=layout.etp,
        sequence_parallel=par.sequence_parallel,
        micro_batch_tokens=learner.batching.micro_batch_tokens, recompute=learner.recompute,
        flash_attention=mem.flash_attention, fused_loss_head=kernels.impl == "triton",
        param_bytes=4 if precision == "fp32" else 2,
        grad_bytes=4 if precision == "fp32" or mem.grad_dtype == "fp32" else 2,
        distributed_optimizer=optim.distributed_optimizer,
        offload_fraction=optim.offload_fraction if optim.cpu_offload else 0.0,
        offload_master=optim.precision_aware, gpus_per_node=cluster.gpus_per_node,
        host_memory_gib=cluster.host_memory_gib, engine_sleep_level=engine.sleep_level,
        vision_frozen=mem.vision_frozen,
        image_tokens_per_micro_batch=mem.image_tokens_per_micro_batch,
        loss_chunk_tokens=mem.loss_chunk_tokens, reserved_gib=mem.reserved_gib,
        gpu_memory_gib=cluster.gpu_memory_gib,
        colocated=cluster.rollout_placement == "colocated",
        rollout_tp=rtp, engine_expert_parallel=engine.enable_expert_parallel,
        rollout_gpu_memory_utilization=engine.gpu_memory_utilization,
        max_model_len=engine.max_model_len, rollout_batch=engine.max_num_seqs,
        rollout_sleep=engine.enable_sleep_mode, rollout_overhead_gib=mem.rollout_overhead_gib,
        engine_dtype_bytes=4 if engine.dtype == "float32" else 2,
        reference_model=algo.kl_coef != 0)
    inputs.validate()
    return inputs, cluster

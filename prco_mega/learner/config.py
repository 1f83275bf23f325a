"""Typed configs of the learner section: parallel layout (experts included), micro-batching,
optimizer, LR schedule, precision, activation recompute, router losses (MoE) and checkpoints.
Plain dataclasses (no heavy imports) so that the run config can be built and validated before any
process group starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ParallelConfig:
    tensor_parallel: int = 1
    """TP degree: splits attention heads, MLP and the vocabulary across this many ranks."""
    pipeline_parallel: int = 1
    """PP degree: splits the transformer layers into this many stages."""
    virtual_pipeline_parallel: int | None = None
    """Model chunks per pipeline stage (interleaved 1F1B); None = plain 1F1B."""
    sequence_parallel: bool = False
    """Shard activations outside attention/MLP along the sequence over the TP group. Megatron
    trains mixture-of-experts layers under TP > 1 only with it (without it every TP rank's copy of
    a token reaches the experts, whose gradients would count it TP times)."""
    expert_parallel: int = 1
    """EP degree (mixture-of-experts models): each MoE layer's experts are split over this many
    ranks, taken from the TP x DP ranks of a pipeline stage (EP x expert_tensor_parallel must
    divide them; `learner.layout.check_layout`); tokens travel to their experts by all-to-all."""
    expert_tensor_parallel: int | None = None
    """Expert-TP degree: each expert's MLP is split over this many ranks; None = tensor_parallel
    (Megatron's default). 1 keeps experts whole, the usual choice for many narrow experts
    (Qwen3-VL-30B-A3B's are 768 wide), with EP spanning the TP ranks."""

    def validate(self) -> None:
        for name in ("tensor_parallel", "pipeline_parallel", "expert_parallel"):
            if getattr(self, name) < 1:
                raise ValueError(f"learner.parallel.{name} ({getattr(self, name)}) must be >= 1")
        etp = self.expert_tensor_parallel
        if etp is not None and etp < 1:
            raise ValueError(f"learner.parallel.expert_tensor_parallel ({etp}) must be >= 1")
        vpp = self.virtual_pipeline_parallel
        if vpp is not None and (vpp < 2 or self.pipeline_parallel < 2):
            raise ValueError(
                f"learner.parallel.virtual_pipeline_parallel ({vpp}) needs >= 2 chunks and "
                f"pipeline_parallel ({self.pipeline_parallel}) >= 2"
            )


@dataclass
class BatchingConfig:
    micro_batch_tokens: int = 4096
    """Token budget of one packed micro-batch (prompt + response tokens, padding included)."""
    pad_to_multiple: int = 1
    """Pad each packed micro-batch to a multiple of this (TP size with sequence parallelism)."""
    mini_batches: int = 1
    """Optimizer updates per RL step (verl's ppo_mini_batch_size, as a count): the step's
    trajectories are dealt into this many mini-batches, one update each. The PPO ratio of every
    mini-batch is taken against the rollout's log-probs, so the later ones are off-policy by the
    earlier updates and the clip bounds how far they go."""

    def validate(self) -> None:
        if self.micro_batch_tokens < 1 or self.pad_to_multiple < 1 or self.mini_batches < 1:
            raise ValueError(
                f"learner.batching.micro_batch_tokens ({self.micro_batch_tokens}), "
                f"pad_to_multiple ({self.pad_to_multiple}) and mini_batches "
                f"({self.mini_batches}) must be >= 1"
            )
        if self.micro_batch_tokens % self.pad_to_multiple:
            raise ValueError(
                f"learner.batching.pad_to_multiple ({self.pad_to_multiple}) must divide "
                f"micro_batch_tokens ({self.micro_batch_tokens})"
            )


@dataclass
class OptimizerConfig:
    lr: float = 1e-6
    """Peak learning rate (reached at the end of the warm-up)."""
    min_lr: float = 0.0
    """Learning rate at the end of the decay (and after it)."""
    adam_beta1: float = 0.9
    """Adam first-moment decay."""
    adam_beta2: float = 0.999
    """Adam second-moment decay."""
    adam_eps: float = 1e-8
    """Adam denominator epsilon."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW); biases and norm weights are never decayed."""
    clip_grad: float = 1.0
    """Clip the global gradient L2 norm (all TP/PP/DP shards) to this; 0 = no clipping."""
    distributed_optimizer: bool = True
    """Shard optimizer state and the fp32 master weights over the data-parallel group."""
    cpu_offload: bool = False
    """Keep Adam's state in host memory and step it on the CPU (Megatron's
    `optimizer_cpu_offload`, its HybridDeviceOptimizer): each step copies this rank's gradient
    shard to the host and the updated weights back. Frees the GPU of m and v (8 B per parameter
    of this rank's shard) at the cost of those copies and a CPU Adam per step. GPU and bf16
    only (`check_offload`)."""
    offload_fraction: float = 1.0
    """With `cpu_offload`: the share (0, 1] of this rank's optimizer shard (by parameter count, in
    parameter order) kept and stepped on the host; the rest stays on the GPU."""
    precision_aware: bool = False
    """Megatron's `use_precision_aware_optimizer`, here only with `cpu_offload`: the distributed
    optimizer then keeps no fp32 master copy on the GPU and the host holds the only one, so the
    offloaded share costs the GPU nothing beyond the bf16 weights and the gradient buffer. Needs
    Transformer Engine (Megatron 0.16.1 reads its version when this is on) and
    `distributed_optimizer` (Megatron asserts it)."""

    def validate(self) -> None:
        if self.lr <= 0 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"learner.optim: need lr ({self.lr}) > 0 and 0 <= min_lr "
                             f"({self.min_lr}) <= lr")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise ValueError(f"learner.optim: adam betas ({self.adam_beta1}, {self.adam_beta2}) "
                             "must be in [0, 1)")
        if self.clip_grad < 0 or self.weight_decay < 0:
            raise ValueError(f"learner.optim: clip_grad ({self.clip_grad}) and weight_decay "
                             f"({self.weight_decay}) must be >= 0")
        if not 0 < self.offload_fraction <= 1:
            raise ValueError(f"learner.optim.offload_fraction ({self.offload_fraction}) must be "
                             "in (0, 1]")
        if self.precision_aware and not (self.cpu_offload and self.distributed_optimizer):
            raise ValueError(f"learner.optim.precision_aware (True) needs cpu_offload "
                             f"({self.cpu_offload}) and distributed_optimizer "
                             f"({self.distributed_optimizer}): without offload it would only "
                             "hand Transformer Engine's Adam the same fp32 state")

    def check_offload(self, precision: str, cuda_available: bool) -> None:
        """Refuse `cpu_offload` where Megatron 0.16.1's HybridDeviceOptimizer cannot run, rather
        than fail inside Megatron: it takes the distributed optimizer's fp32 master shards of
        bf16 weights (fp32 weights' shards are views of them, which torch optimizers refuse:
        "can't optimize a non-leaf Tensor"), and it moves only CUDA tensors to the host, then
        looks every host tensor up among those it moved (a KeyError on the CPU learner)."""
        if not self.cpu_offload:
            return
        if precision != "bf16":
            raise ValueError(f"learner.optim.cpu_offload (True) needs learner.precision bf16 (got "
                             f"{precision}): Megatron's offloading optimizer steps fp32 master "
                             "copies of bf16 weights and cannot take fp32 weights' shards")
        if not cuda_available:
            raise ValueError("learner.optim.cpu_offload (True) needs CUDA: Megatron's "
                             "HybridDeviceOptimizer offloads GPU tensors and fails on a learner "
                             "whose weights already live on the host; turn it off on CPU")


@dataclass
class ScheduleConfig:
    warmup_steps: int = 0
    """Optimizer steps of linear warm-up from 0 to `lr`."""
    decay_steps: int | None = None
    """Optimizer steps (warm-up included) after which the LR stays at `min_lr`; None = constant."""
    decay_style: Literal["constant", "linear", "cosine"] = "constant"
    """Shape of the decay from `lr` to `min_lr` after the warm-up."""

    def validate(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"learner.schedule.warmup_steps ({self.warmup_steps}) must be >= 0")
        if self.decay_steps is not None and self.decay_steps < self.warmup_steps:
            raise ValueError(f"learner.schedule.decay_steps ({self.decay_steps}) must be >= "
                             f"warmup_steps ({self.warmup_steps})")


RECOMPUTE_MODULES = ("core_attn", "mlp")
"""Megatron 0.16.1's `recompute_modules` that a dense decoder on the local or TE spec can use. Its
others are for MoE layers (`moe`, `moe_act`, `shared_experts`) or MLA (`mla_up_proj`), and
`layernorm` fails without Transformer Engine (0.16.1's `CheckpointWithoutOutput` always takes the
fp8 path, which imports TE)."""


@dataclass
class RecomputeConfig:
    granularity: Literal["none", "selective", "full"] = "none"
    """Activation recompute of the decoder layers (Megatron's `recompute_granularity`): none keeps
    every activation; selective re-runs `modules` of every layer in the backward; full keeps only
    the input of each checkpointed group of layers and re-runs the group. Full also checkpoints
    each ViT block (Hugging Face's non-reentrant checkpoint) when the ViT trains; selective leaves
    the ViT as it is. The memory planner reads this same setting."""
    method: Literal["uniform", "block"] = "uniform"
    """Full only (Megatron's `recompute_method`): uniform checkpoints every group of `num_layers`
    consecutive layers; block checkpoints the first `num_layers` layers of each pipeline chunk and
    lets the rest keep their activations."""
    num_layers: int = 1
    """Full only (Megatron's `recompute_num_layers`): layers per group (uniform) or checkpointed
    layers per pipeline chunk (block)."""
    modules: list[Literal["core_attn", "mlp"]] = field(default_factory=lambda: ["core_attn"])
    """Selective only (Megatron's `recompute_modules`): core_attn drops the [heads, s, s] scores of
    unfused attention (nothing to drop with fused/flash attention, which keeps no scores); mlp
    drops the MLP's inner activations (gate, up, their product) and keeps its input."""

    def validate(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"learner.recompute.num_layers ({self.num_layers}) must be >= 1")
        if self.granularity == "selective" and not self.modules:
            raise ValueError(f"learner.recompute.modules ({self.modules}) must name at least one "
                             f"of {list(RECOMPUTE_MODULES)} for selective recompute")

    def megatron_fields(self) -> dict:
        """The `TransformerConfig` fields of this setting (Megatron refuses a method or layer count
        with selective recompute, and needs both with full)."""
        if self.granularity == "none":
            return {"recompute_granularity": None}
        if self.granularity == "selective":
            return {"recompute_granularity": "selective", "recompute_modules": list(self.modules)}
        return {"recompute_granularity": "full", "recompute_method": self.method,
                "recompute_num_layers": self.num_layers}

    def check_chunk(self, chunk_layers: int) -> None:
        """Refuse a uniform group size that does not divide a pipeline chunk's `chunk_layers`
        decoder layers (Megatron's last group would index past the chunk's layers)."""
        if (self.granularity == "full" and self.method == "uniform"
                and chunk_layers % self.num_layers):
            raise ValueError(f"learner.recompute.num_layers ({self.num_layers}) must divide the "
                             f"decoder layers of each pipeline chunk ({chunk_layers}) with "
                             "method uniform")


@dataclass
class MoEConfig:
    load_balancing: Literal["none", "aux_loss", "seq_aux_loss", "global_aux_loss"] = "none"
    """Router load balancing (Megatron's `moe_router_load_balancing_type`): none for RL, where a
    balancing loss would move the policy by something other than its reward (the checkpoint
    arrives balanced); aux_loss per micro-batch (GShard, Switch), seq_aux_loss per sequence,
    global_aux_loss over the global batch."""
    aux_loss_coeff: float = 0.0
    """Weight of the load-balancing loss (`moe_aux_loss_coeff`; Qwen3-VL-MoE pre-trained with
    0.001); must be > 0 when load_balancing is set and 0 when it is none."""
    z_loss_coeff: float | None = None
    """Weight of the router z-loss (`moe_z_loss_coeff`: mean squared log-sum-exp of the router
    logits, keeps them small); None = off."""

    def validate(self) -> None:
        if self.aux_loss_coeff < 0 or (self.z_loss_coeff is not None and self.z_loss_coeff < 0):
            raise ValueError(f"learner.moe: aux_loss_coeff ({self.aux_loss_coeff}) and "
                             f"z_loss_coeff ({self.z_loss_coeff}) must be >= 0")
        if (self.load_balancing == "none") != (self.aux_loss_coeff == 0):
            raise ValueError(f"learner.moe.aux_loss_coeff ({self.aux_loss_coeff}) and "
                             f"load_balancing ({self.load_balancing!r}) disagree: a coefficient "
                             "needs a balancing type and a balancing type a coefficient > 0")

    def megatron_fields(self) -> dict:
        """The `TransformerConfig` fields of these settings (for a mixture-of-experts model)."""
        return {"moe_router_load_balancing_type": self.load_balancing,
                "moe_aux_loss_coeff": self.aux_loss_coeff, "moe_z_loss_coeff": self.z_loss_coeff}


@dataclass
class CheckpointConfig:
    dir: str | None = None
    """Directory of `step_XXXXXXXX/` checkpoints; None = no checkpoints."""
    interval: int = 0
    """Save every N optimizer steps; 0 = only when asked."""
    keep_last: int | None = None
    """Delete complete checkpoints older than the newest N; None = keep all."""

    def validate(self) -> None:
        if self.interval < 0 or (self.keep_last is not None and self.keep_last < 1):
            raise ValueError(f"learner.checkpoint: interval ({self.interval}) must be >= 0 and "
                             f"keep_last ({self.keep_last}) >= 1")


@dataclass
class LearnerConfig:
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Tensor/pipeline layout; data parallel is world_size / (TP * PP)."""
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    """Packing and the token-budget micro-batch planner."""
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Megatron optimizer (Adam) and gradient clipping."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """LR warm-up and decay."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Parameter/compute dtype: auto = bf16 with CUDA, fp32 on CPU (fp32 master weights always)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Distributed checkpoints."""
    seed: int = 1234
    """Base seed of the learner's RNGs (per-rank offsets are added by the parallel setup)."""
    logprob_temperature: float = 1.0
    """Divide logits by this before log-softmax; must match how the rollout engine's log-probs
    were computed (1.0 with vLLM's default raw log-probs)."""
    recompute: RecomputeConfig = field(default_factory=RecomputeConfig)
    """Activation recompute (decoder layers; the ViT under full), as Megatron takes it."""
    moe: MoEConfig = field(default_factory=MoEConfig)
    """Router losses of mixture-of-experts models (ignored by dense ones); off for RL."""

    def validate(self) -> None:
        for section in (self.parallel, self.batching, self.optim, self.schedule, self.checkpoint,
                        self.recompute, self.moe):
            section.validate()
        if self.logprob_temperature <= 0:
            raise ValueError(
                f"learner.logprob_temperature ({self.logprob_temperature}) must be > 0")


def resolve_precision(precision: str, cuda_available: bool) -> str:
    """`"auto"` -> `"bf16"` with CUDA, else `"fp32"`; an explicit bf16 request without CUDA is
    honoured (slow on CPU, but never a silent change of what the config asked)."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision {precision!r} is not one of ['auto', 'fp32', 'bf16']")
    if precision == "auto":
        return "bf16" if cuda_available else "fp32"
    return precision

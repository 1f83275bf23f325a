"""The rollout engine's config section (`engine:` in a run config)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class EngineConfig:
    """vLLM engine settings. CPU-only fields are ignored on GPU and vice versa."""

    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Weights and activations in the engine; float32 on CPU makes log-probs match the learner."""
    max_model_len: int = 2048
    """Longest prompt + response in tokens (image pads included)."""
    max_num_seqs: int = 256
    """Most sequences decoded together (vLLM's batch)."""
    max_num_batched_tokens: int | None = None
    """Token budget of one engine step; None = max(max_model_len, 8192)."""
    enable_chunked_prefill: bool | None = None
    """Split long prefills across steps. None = off on CPU (vLLM 0.32's CPU runner crashes with
    "CPU Generator does not use offset" when a seeded request's prefill is chunked), on on GPU."""
    max_images_per_prompt: int = 1
    """Image placeholders allowed per prompt (sizes vLLM's encoder budget)."""
    gpu_memory_utilization: float = 0.5
    """GPU only: fraction of GPU memory vLLM may take (weights + KV), leaving room for a colocated
    learner."""
    enable_sleep_mode: bool = False
    """GPU only: let `sleep()` release weights and KV memory while the learner trains."""
    sync_bucket_mib: int = 256
    """Weight sync: the most MiB one push into the engine carries (a fused layer larger than that
    goes alone); the extra memory of a sync is about one layer plus one bucket."""
    sleep_level: Literal[1, 2] = 1
    """With sleep mode: 1 keeps a host copy of the weights while asleep, 2 drops them (every
    sync pushes the whole model, so both work; 2 frees host memory too)."""
    cpu_kv_cache_gib: int = 1
    """CPU only: KV cache size in whole GiB (VLLM_CPU_KVCACHE_SPACE; vLLM's default is ~20 GiB)."""
    enforce_eager: bool = True
    """No CUDA graphs / torch.compile: fast start, and the only mode that is cheap on CPU."""
    seed: int = 0
    """Engine seed (sampling RNG when a request gives none)."""
    tensor_parallel_size: int = 1
    """Engine tensor parallelism (GPU; 1 on CPU)."""
    enable_prefix_caching: bool = True
    """Share KV blocks of common prompt prefixes (reset after every weight push)."""
    logprobs_mode: Literal["processed_logprobs", "raw_logprobs"] = "processed_logprobs"
    """Which log-probs `Generation.logprobs` holds. "processed_logprobs" = log_softmax(logits / T)
    (after top-k/top-p masking when those are on): the distribution the tokens were sampled from,
    and the learner's definition of the behaviour policy at temperature T. "raw_logprobs" =
    log_softmax(logits), temperature ignored."""
    return_routed_experts: bool = False
    """Fill `Generation.routed_experts` (the experts the engine's routers picked for every token,
    which the learner replays: `algo.routing_replay: rollout`). MoE models only. On CUDA, vLLM's
    Model Runner V2 returns them with the samples (`enable_return_routed_experts`). On CPU (V1
    runner) it costs one extra prefill of prompt + response per sample after generation, one
    sample at a time (`rollout.vllm_routing`; `VllmEngine.last_routing_seconds`), and needs
    `enforce_eager` (captured graphs would skip the capture)."""
    enable_expert_parallel: bool = False
    """Mixture-of-experts models: split each MoE layer's experts over the engine's ranks instead
    of splitting every expert's width (vLLM's expert parallel, linear placement: rank r of n holds
    experts [r E / n, (r + 1) E / n), whole); attention and the rest stay tensor-parallel. Each
    rank then receives only its experts in a weight sync. Needs tensor_parallel_size > 1 and
    colocated placement."""

    def validate(self) -> None:
        if self.max_model_len < 16 or self.max_num_seqs < 1 or self.max_images_per_prompt < 0:
            raise ValueError(f"engine.max_model_len ({self.max_model_len}) must be >= 16, "
                             f"max_num_seqs ({self.max_num_seqs}) >= 1 and max_images_per_prompt "
                             f"({self.max_images_per_prompt}) >= 0")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise ValueError(f"engine.max_num_batched_tokens ({self.max_num_batched_tokens}) "
                             "must be >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"engine.gpu_memory_utilization ({self.gpu_memory_utilization}) "
                             "must be in (0, 1]")
        if self.sync_bucket_mib < 1:
            raise ValueError(f"engine.sync_bucket_mib ({self.sync_bucket_mib}) must be >= 1")
        if self.cpu_kv_cache_gib <= 0 or self.tensor_parallel_size < 1:
            raise ValueError(f"engine.cpu_kv_cache_gib ({self.cpu_kv_cache_gib}) must be > 0 and "
                             f"tensor_parallel_size ({self.tensor_parallel_size}) >= 1")
        if self.enable_expert_parallel and self.tensor_parallel_size < 2:
            raise ValueError(f"engine.enable_expert_parallel needs engine.tensor_parallel_size > 1 "
                             f"(got {self.tensor_parallel_size}): the experts are split over the "
                             "engine's ranks")

    def __post_init__(self) -> None:
        self.validate()


@dataclass
class RolloutSection:
    """How the rollout is scheduled against the learner (the `rollout:` section)."""

    max_staleness: int = 0
    """Bounded staleness k: a step may be sampled with weights at most k updates older than the
    update that trains on it. 0: synchronous (every step is sampled with the weights of all
    updates before it). k > 0 needs separate placement: the engines sample up to k steps ahead
    while the learner trains (`runtime.engine_worker`); trajectories record the policy version
    that drew them, so `train/policy_lag` shows the lag and an off-policy correction can use it."""

    partial_rollouts: bool = False
    """Generate in chunks of `chunk_tokens` and take the learner's new weights between chunks:
    a sequence in flight continues from its prefix under the new weights, each token keeping the
    version and log-prob that drew it (`rollout.partial`). Needs `max_staleness` >= 1 (the
    engines generate while the learner trains). Off: new weights wait for the step in flight."""
    chunk_tokens: int = 16
    """New tokens per sequence between two looks for new weights (partial rollouts): smaller
    takes weights sooner, at one more engine call per chunk."""

    def __post_init__(self) -> None:
        if self.max_staleness < 0:
            raise ValueError(f"rollout.max_staleness must be >= 0, got {self.max_staleness}")
        if self.partial_rollouts and self.max_staleness < 1:
            raise ValueError("rollout.partial_rollouts needs rollout.max_staleness >= 1 (the "
                             "engines must be generating while the learner trains)")
        if self.chunk_tokens < 1:
            raise ValueError(f"rollout.chunk_tokens must be >= 1, got {self.chunk_tokens}")

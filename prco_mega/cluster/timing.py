"""Phase times of one RL step on a cluster: an estimate from stated rates (`cluster.timing`), none
measured. It prices the work the memory plan's layout does; its simplifications, first:

- every response is as long as its cap (`max_new_tokens`): the most tokens a step can train, and
  the decode batch stays full to the end (no long tail of a few sequences);
- prompts are `image_tokens` + `text_tokens`; the Solver's prompt also holds the caption;
- decoding is memory-bound: an iteration reads the engine GPU's weights (a MoE layer only the
  experts its batch routes to) and the batch's KV cache at a share of HBM bandwidth; prefill and
  the learner are compute-bound at a share of peak (MFU), which is meant to cover everything they
  wait for (all-to-all, pipeline bubbles, kernel launches);
- the weight sync is its wire time (a floor: docs/cluster.md lists published figures 10-100x
  above the wire); vLLM's sleep (level 1) and wake copy the engine's weights over PCIe;
- an offloaded optimizer copies its gradient shard to the host and the weights back over PCIe
  and runs Adam at the node's host-memory bandwidth; the copies and the Adam are summed
  (Megatron overlaps them per parameter, so the true figure lies between their max and sum);
- colocated phases run one after another; separate placement with `rollout.max_staleness` >= 1
  overlaps sampling with learning (the longer of the two sets the step).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from prco_mega.cluster.config import TimingAssumptions
from prco_mega.cluster.dims import active_params, expert_params, total_params, vision_params
from prco_mega.cluster.memory import kv_bytes_per_token, stage_trained_params
from prco_mega.cluster.plan_inputs import PlanInputs
from prco_mega.cluster.sizes import ModelDims

ADAM_BYTES_PER_PARAM = 28
"""Host-memory traffic of one fp32 Adam update: read weight, gradient, m, v; write weight, m, v."""


@dataclass(frozen=True)
class Stage:
    """One sampling call of the step: `requests` prompts, `n` responses each."""

    name: str
    requests: int
    n: int
    prompt: int
    """Tokens per prompt (image included)."""
    response: int
    """Tokens per response (its cap)."""

    @property
    def sequences(self) -> int:
        return self.requests * self.n


@dataclass(frozen=True)
class Workload:
    """What one step samples and trains, and how the learner's passes and the engines run it."""

    stages: tuple[Stage, ...]
    image_tokens: int
    """Image tokens in every prompt (each prompt runs the ViT once per forward)."""
    engines: int
    total_gpus: int
    """Learner GPUs plus separate rollout GPUs: the denominator of tokens/s/GPU."""
    extra_forwards: int = 0
    """Learner forwards besides the training pass: 1 for a reference model (KL), 1 for the
    pre-update log-probs of several mini-batches."""
    overlapped: bool = False
    """Separate placement with bounded staleness >= 1: sampling runs beside learning."""

    @property
    def tokens(self) -> int:
        """Tokens trained per step: prompt + response of every sequence."""
        return sum(s.sequences * (s.prompt + s.response) for s in self.stages)


def prco_stages(prompts: int, g_o: int, g_s: int, caption_cap: int, answer_cap: int,
                prompt_tokens: int, two_roles: bool) -> tuple[Stage, ...]:
    """PRCO: the Observer writes G_O captions per task, the Solver G_S answers per caption (its
    prompt holds the caption); a single-role baseline samples G_S answers per task."""
    if not two_roles:
        return (Stage("Solver", prompts, g_s, prompt_tokens, answer_cap),)
    return (Stage("Observer", prompts, g_o, prompt_tokens, caption_cap),
            Stage("Solver", prompts * g_o, g_s, prompt_tokens + caption_cap, answer_cap))


# ----------------------------------------------------------------------------- pure formulas
def lm_matmul_params(m: ModelDims) -> int:
    """Parameters one token multiplies through in the language model: the active decoder and the
    LM head (the input embedding is a lookup)."""
    untied_embedding = 0 if m.tie_embeddings else m.vocab * m.hidden
    return active_params(m) - vision_params(m.vision) - untied_embedding


def forward_flops(m: ModelDims, seq: int, image_tokens: int) -> float:
    """FLOPs of one forward over a sequence of `seq` tokens holding one image of `image_tokens`.

    2 per multiply-add: 2 x matmul parameters x seq; causal attention 2 x layers x q_hidden x
    seq^2 (QK^T and AV over half the square); the ViT over image_tokens x merge^2 patches,
    2 x its parameters per patch plus full attention 4 x depth x width x patches^2."""
    flops = 2 * lm_matmul_params(m) * seq + 2 * m.layers * m.q_hidden * seq**2
    if m.vision is not None and image_tokens:
        v = m.vision
        patches = image_tokens * v.spatial_merge_size**2
        flops += 2 * vision_params(v) * patches + 4 * v.depth * v.hidden * patches**2
    return float(flops)


def experts_touched(m: ModelDims, tokens: int) -> float:
    """Expected share of a MoE layer's experts that `tokens` routed tokens reach (uniform routing,
    top-k without replacement): 1 - (1 - k/E)^tokens."""
    if not m.num_experts:
        return 1.0
    return 1 - (1 - m.experts_per_token / m.num_experts) ** tokens


def decode_iteration_s(m: ModelDims, tp: int, batch: int, context: float, dtype_bytes: int,
                       r: TimingAssumptions) -> float:
    """One decode iteration of an engine GPU: its weights (the experts its batch reaches) plus
    the batch's KV cache at `context` tokens each, read at the decode share of HBM bandwidth."""
    experts = m.moe_layers * m.num_experts * expert_params(m)
    weights = (total_params(m) - experts + experts * experts_touched(m, batch)) * dtype_bytes
    kv = batch * context * kv_bytes_per_token(m, tp, dtype_bytes)
    return (weights / tp + kv) / (r.hbm_gb_s * 1e9 * r.decode_bandwidth_share)


def sampling_s(x: PlanInputs, s: Stage, engines: int, kv_tokens: int, image_tokens: int,
               r: TimingAssumptions) -> tuple[float, int]:
    """(seconds, concurrent sequences) of one stage on the slowest engine: prefill of its
    requests (one per prompt; the n responses share it) and decode in waves of as many sequences
    as its KV cache holds at full length (at most `max_num_seqs`), each wave `response`
    iterations long."""
    requests = math.ceil(s.requests / engines)
    slots = max(1, min(x.rollout_batch, kv_tokens // (s.prompt + s.response)))
    waves = math.ceil(math.ceil(s.sequences / engines) / slots)
    prefill = requests * forward_flops(x.model, s.prompt, image_tokens) / (
        x.rollout_tp * r.peak_tflops * 1e12 * r.prefill_mfu)
    per_iter = decode_iteration_s(x.model, x.rollout_tp, slots, s.prompt + s.response / 2,
                                  x.engine_dtype_bytes, r)
    return prefill + waves * s.response * per_iter, slots


def learner_flops(x: PlanInputs, w: Workload) -> tuple[float, float]:
    """(FLOPs the learner runs, model FLOPs of forward + backward only) for the step's sequences:
    forward 1, backward 2, the forward again under full recompute, plus `w.extra_forwards`; a
    frozen ViT runs forwards only."""
    passes = 3 + (1 if x.recompute.granularity == "full" else 0) + w.extra_forwards
    lm, vit = 0.0, 0.0
    for s in w.stages:
        seq = s.prompt + s.response
        whole = forward_flops(x.model, seq, w.image_tokens)
        text = forward_flops(x.model, seq, 0)
        lm += s.sequences * text
        vit += s.sequences * (whole - text)
    vit_passes = 1 + w.extra_forwards if x.vision_frozen else passes
    model = 3 * lm + (1 if x.vision_frozen else 3) * vit
    return passes * lm + vit_passes * vit, model


def offload_s(x: PlanInputs, r: TimingAssumptions) -> tuple[float, float]:
    """(host <-> GPU copy seconds, CPU Adam seconds) of an offloaded optimizer per step: each GPU
    sends its offloaded gradient shard down (fp32, 4 B) and takes the weights back (at most
    4 B); one node's ranks run Adam over all their offloaded parameters."""
    if not x.offload_fraction:
        return 0.0, 0.0
    stage = "only" if x.pp == 1 else "first"
    dense, ex = stage_trained_params(x, stage)
    d = x.dp if x.distributed_optimizer else 1
    shard = x.offload_fraction * (dense / d + ex / (x.expert_dp if x.distributed_optimizer else 1))
    copies = shard * 8 / (r.pcie_gb_s * 1e9)
    adam = x.gpus_per_node * shard * ADAM_BYTES_PER_PARAM / (r.host_adam_gb_s * 1e9)
    return copies, adam


def sync_s(x: PlanInputs, r: TimingAssumptions) -> float:
    """Wire time of the weight sync: each engine rank takes its TP slice of the bf16 model, over
    NVLink when the engines sit on the learner's GPUs, else over InfiniBand."""
    rate = r.nvlink_gb_s if x.colocated else r.infiniband_gb_s
    return total_params(x.model) * x.engine_dtype_bytes / x.rollout_tp / (rate * 1e9)


def sleep_wake_s(x: PlanInputs, r: TimingAssumptions) -> float:
    """Colocated vLLM at sleep level 1 copies its weights to the host before the learner runs and
    back when it wakes: twice the engine GPU's weights over PCIe (level 2 drops them instead)."""
    if not (x.colocated and x.rollout_sleep and x.engine_sleep_level == 1):
        return 0.0
    return 2 * total_params(x.model) * x.engine_dtype_bytes / x.rollout_tp / (r.pcie_gb_s * 1e9)


# ----------------------------------------------------------------------------- the estimate
@dataclass
class PhaseTimes:
    workload: Workload
    rates: TimingAssumptions
    rows: list[tuple[str, float, str]]
    """(phase, seconds, how it was priced)."""
    sample: float
    learn: float
    step: float
    model_flops: float
    """Forward + backward FLOPs of the step's tokens (no recompute, no extra forwards)."""

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.workload.tokens / self.step / self.workload.total_gpus

    @property
    def mfu(self) -> float:
        """Model FLOPs of the step over the step time and every GPU's peak."""
        return self.model_flops / (self.step * self.workload.total_gpus
                                   * self.rates.peak_tflops * 1e12)

    def table(self) -> str:
        w = self.workload
        roles = ", ".join(f"{s.name} {s.requests} x {s.n} = {s.sequences} sequences of "
                          f"{s.prompt} + {s.response} tokens" for s in w.stages)
        lines = [f"Phase times per step (estimate from cluster.timing's rates; simplifications "
                 f"in prco_mega/cluster/timing.py):",
                 f"  workload: {roles}; {w.tokens} tokens trained; {w.engines} engines"]
        lines += [f"  {name:<48} {secs:9.1f} s    {note}".rstrip()
                  for name, secs, note in self.rows]
        how = "max(sampling, learning) + sync" if w.overlapped else "sum"
        lines.append(f"  {'= step (' + how + ')':<48} {self.step:9.1f} s")
        lines.append(f"  tokens/s/GPU: {w.tokens} / {self.step:.1f} s / {w.total_gpus} GPUs = "
                     f"{self.tokens_per_s_per_gpu:.0f}; model FLOPs utilisation over the step "
                     f"{100 * self.mfu:.1f}% (forward + backward, {self.model_flops:.3g} FLOPs)")
        return "\n".join(lines)


def phase_times(x: PlanInputs, kv_tokens: int, w: Workload, r: TimingAssumptions) -> PhaseTimes:
    """The step's phases priced at `r` (see the module's simplifications). `kv_tokens`: what one
    engine GPU's KV cache holds (`MemoryPlan.kv_tokens`)."""
    rows, sample = [], 0.0
    for s in w.stages:
        secs, slots = sampling_s(x, s, w.engines, kv_tokens, w.image_tokens, r)
        rows.append((f"sampling, {s.name}", secs,
                     f"{math.ceil(s.sequences / w.engines)} sequences per engine, {slots} at once"))
        sample += secs
    flops, model = learner_flops(x, w)
    world = x.tp * x.pp * x.dp
    learn = flops / (world * r.peak_tflops * 1e12 * r.learner_mfu)
    rows.append(("learner passes", learn,
                 f"{flops:.3g} FLOPs on {world} GPUs at MFU {r.learner_mfu:.2f}"))
    copies, adam = offload_s(x, r)
    if copies:
        rows += [("optimizer on host: gradients down, weights up", copies,
                  f"8 B per offloaded parameter per GPU at {r.pcie_gb_s:.0f} GB/s"),
                 ("optimizer on host: CPU Adam", adam,
                  f"{ADAM_BYTES_PER_PARAM} B per parameter at {r.host_adam_gb_s:.0f} GB/s "
                  "per node")]
    learn += copies + adam
    sync, sleep = sync_s(x, r), sleep_wake_s(x, r)
    rows.append(("weight sync (wire time)", sync,
                 f"TP-{x.rollout_tp} slice per engine rank at "
                 f"{r.nvlink_gb_s if x.colocated else r.infiniband_gb_s:.0f} GB/s"))
    if sleep:
        rows.append(("vLLM sleep + wake (weights over PCIe)", sleep, "level 1"))
    step = (max(sample, learn) if w.overlapped else sample + learn) + sync + sleep
    return PhaseTimes(w, r, rows, sample, learn, step, model)

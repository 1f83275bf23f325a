"""Per-GPU memory of one PRCO step on a cluster: the Megatron learner and the vLLM engines.

The estimates are formulas, each with its source, evaluated for the heavier pipeline stage:
- weights, gradients, optimizer states: Megatron-Core's distributed-optimizer accounting
  (docs "Distributed Optimizer": bytes/param = 6 + 12/d for bf16 params with fp32 grads,
  4 + 16/d for 16-bit grads, 8 + 8/d for fp32), the ZeRO stage-1 scheme (Rajbhandari et al. 2020,
  arXiv 1910.02054);
- activations: Korthikanti et al. 2022 (arXiv 2205.05198), "Reducing Activation Recomputation in
  Large Transformer Models", per-layer bytes sbh(34 + 5as/h), generalised to GQA and SwiGLU,
  under the learner's own recompute setting (`learner.recompute`: what the forward keeps plus what
  the backward re-runs at once); pipeline in-flight micro-batches from Megatron's 1F1B /
  interleaved warm-up counts;
- loss head: logits [T, V/tp] in the unfused path, a chunked working set in the fused one;
- mixture of experts: each rank holds num_experts / EP experts of each MoE layer, each split over
  expert-TP; their optimizer state is sharded over the expert-data-parallel ranks (TP x DP / (EP x
  expert-TP)), as Megatron's distributed optimizer does; routed tokens keep top-k copies of their
  expert inputs and SwiGLU activations, and the all-to-all dispatcher holds send and receive
  buffers of tokens x top-k x hidden for the layer it runs (an estimate: balanced routing);
- vLLM: weights / TP (vLLM's TP splits every expert's width too), or with engine expert parallel
  (`engine.enable_expert_parallel`) the dense part / TP plus whole experts, ceil(E / TP) per MoE
  layer on the fullest GPU (vLLM's linear placement), and KV cache = 2 (K, V) * layers *
  kv_heads/TP * head_dim * bytes per token.
Peak memory is the larger of the training phase and the colocated rollout phase.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from prco_mega.cluster.plan_inputs import GiB, PlanInputs
from prco_mega.cluster.dims import (ModelDims, decoder_layer_params, expert_params, total_params,
                                    vision_params)
from prco_mega.learner.config import RecomputeConfig


# ----------------------------------------------------------------------------- pure formulas
def stage_params(m: ModelDims, tp: int, pp: int, stage: str) -> tuple[int, int]:
    """(language-model, vision) parameters held by one rank of pipeline stage `stage`.

    Decoder layers: layers/pp, each with its matrices and biases split over TP and its norms
    (and a MoE layer's router) replicated; experts apart (`stage_expert_params`). First stage: + word embeddings [V/tp, h] (the learner shards the vocab unpadded)
    + the whole ViT (replicated over TP).
    Last stage: + final norm + output layer [V/tp, h] (a copy of the embeddings when tied and
    pp > 1, as Megatron keeps one for the tied gradient). pp = 1 holds both ends.
    """
    dense, moe = (m.layers - m.moe_layers) // pp, m.moe_layers // pp
    split, repl = decoder_layer_params(m)
    moe_split, moe_repl = decoder_layer_params(m, moe=True)
    lm = dense * (split // tp + repl) + moe * (moe_split // tp + moe_repl)
    emb = math.ceil(m.vocab / tp) * m.hidden
    first, last = stage in ("first", "only"), stage in ("last", "only")
    vision = vision_params(m.vision) if first else 0
    if first:
        lm += emb
    if last:
        lm += m.hidden + (0 if (m.tie_embeddings and pp == 1) else emb)
    return lm, vision


def stage_expert_params(m: ModelDims, pp: int, ep: int, etp: int) -> int:
    """Expert parameters one rank holds: (MoE layers / pp) x (num_experts / ep) experts, each
    split over expert-TP (`etp`)."""
    return (m.moe_layers // pp) * (m.num_experts // ep) * expert_params(m) // etp


def moe_layer_activation_bytes(tokens: int, m: ModelDims, etp: int) -> float:
    """Bytes one MoE layer keeps beyond its attention part, per rank, for the `tokens` that rank
    routes (with SP: its sequence slice): router logits and probabilities in fp32 (8E per token),
    then per routed copy (top-k per token, each received by etp ranks) the permuted expert input
    (2h) and SwiGLU's gate, up and product over the expert's etp slice (6I / etp)."""
    k, h, i = m.experts_per_token, m.hidden, m.moe_intermediate
    return tokens * (8 * m.num_experts + k * etp * (2 * h + 6 * i / etp))


def dispatcher_buffer_bytes(tokens: int, m: ModelDims, dtype_bytes: int = 2) -> float:
    """The alltoall dispatcher's send and receive buffers for one MoE layer: 2 x tokens x top-k x
    hidden in 16-bit (balanced routing: a rank receives as many routed copies as it sends)."""
    return 2 * tokens * m.experts_per_token * m.hidden * dtype_bytes


def optimizer_bytes_per_param(param_bytes: int, grad_bytes: int, distributed: bool,
                              dp: int) -> float:
    """Adam state per parameter: fp32 master weights (unless params are fp32) + m + v (4 + 4), plus
    an fp32 main-grad copy when grads are 16-bit; divided by DP with the distributed optimizer.

    bf16/fp32 grads: 12/d; fp16/bf16 grads: 16/d; fp32/fp32: 8/d (Megatron-Core's table).
    """
    state = (4 if param_bytes < 4 else 0) + 8 + (4 if grad_bytes < 4 else 0)
    return state / dp if distributed else float(state)


def offloaded_optimizer_bytes(param_bytes: int, grad_bytes: int, distributed: bool, dp: int,
                              fraction: float, master_on_host: bool) -> tuple[float, float]:
    """(GPU, host) bytes of Adam state per parameter when Megatron's HybridDeviceOptimizer keeps
    the share `fraction` of each rank's optimizer shard on the host (`learner.optim.cpu_offload`).

    host: fraction x 16 / d: the fp32 master copy it steps (4), m and v (8) and the fp32
          gradient it copies down each step (4), pinned;
    GPU, `master_on_host` (precision-aware): (1 - fraction) x state / d, the distributed
          optimizer keeps no fp32 master and the hybrid one makes it only for the GPU share;
    GPU, otherwise: state / d - fraction x 8 / d: only m and v leave, the distributed
          optimizer's fp32 master shard (and main-grad copy) stays beside its host copy.
    state = `optimizer_bytes_per_param` x d; fraction 0 gives (that, 0).
    """
    d = dp if distributed else 1
    state = optimizer_bytes_per_param(param_bytes, grad_bytes, False, 1)
    host = fraction * 16 / d
    if master_on_host:
        return (1 - fraction) * state / d, host
    return (state - fraction * 8) / d, host


def layer_activation_bytes(tokens: int, hidden: int, kv_hidden: int, ffn: int, heads: int,
                           seq: int, tp: int = 1, sp: bool = False, flash: bool = True,
                           gated_mlp: bool = True, dropout: bool = False,
                           q_hidden: int | None = None) -> float:
    """Bytes one transformer layer keeps for backward, 16-bit activations, `tokens` = s * b.

    Korthikanti et al. 2022, section 4.1, itemised per token:
      not split by TP (split only with SP): 2 norm inputs 4h + QKV input 2h + fc1 input 2h
                                            (+ 2h of 1-byte dropout masks);
      split by TP: Q 2h + K, V 4*kv_hidden + out-proj input 2h
                   + MLP inner: SwiGLU 6f (gate, up, product) or GeLU 4f (input, output);
      attention scores without fused attention: 5*a*s (softmax 2as, mask as, dropout 2as) / tp.
    GPT (kv_hidden = h, f = 4h, GeLU, dropout): 34h + 5as per token, i.e. sbh(34 + 5as/h); with TP
    and SP every term is divided by t: sbh(34/t + 5as/(ht)). `q_hidden` (default h): the width of
    Q and of the out-proj input when heads * head_dim != h (Qwen3-32B: 64 * 128 = 8192 vs 5120).
    """
    repl = 8 * hidden + (2 * hidden if dropout else 0)
    split = 4 * (q_hidden or hidden) + 4 * kv_hidden + (6 if gated_mlp else 4) * ffn
    scores = 0 if flash else 5 * heads * seq
    per_token = (repl / tp if sp else repl) + (split + scores) / tp
    return tokens * per_token


def recompute_input_bytes(tokens: int, hidden: int, tp: int = 1, sp: bool = False) -> float:
    """Full recompute keeps only each layer's input: 2sbh bytes (divided by t with SP)."""
    return tokens * 2 * hidden / (tp if sp else 1)


def mlp_inner_bytes(tokens: int, ffn: int, tp: int = 1, gated_mlp: bool = True) -> float:
    """What selective recompute of the MLP drops: SwiGLU's gate, up and product (6f per token;
    GeLU: input and output, 4f), split by TP. The MLP's input (the fc1 input, 2h) stays."""
    return tokens * (6 if gated_mlp else 4) * ffn / tp


def recompute_activation_bytes(rc: RecomputeConfig, chunk_layers: int, microbatches: int,
                               layer: float, selective_layer: float,
                               layer_input: float) -> tuple[float, float]:
    """(bytes kept through the forward, bytes the backward re-materialises at once) of
    `microbatches` model-chunk micro-batches of `chunk_layers` layers in flight.

    `layer`: one layer's activations without recompute; `selective_layer`: with `rc.modules`
    recomputed; `layer_input`: the 2sbh a checkpoint keeps. With L = chunk_layers, m =
    microbatches:
      none:             m L layer                                       + 0
      selective:        m L selective_layer                             + (layer - selective_layer)
      full, uniform n:  m (L / n) layer_input                           + n layer (one group re-run)
      full, block n:    m (k layer_input + (L - k) layer), k = min(n, L) + (layer if k = L else 0)
    Under block the first k layers re-run after the later layers of their micro-batch have freed
    their activations, so they add to the peak only when every layer is checkpointed.
    """
    if rc.granularity == "none":
        return microbatches * chunk_layers * layer, 0.0
    if rc.granularity == "selective":
        return microbatches * chunk_layers * selective_layer, layer - selective_layer
    if rc.method == "uniform":
        groups = math.ceil(chunk_layers / rc.num_layers)
        return microbatches * groups * layer_input, min(rc.num_layers, chunk_layers) * layer
    k = min(rc.num_layers, chunk_layers)
    held = microbatches * (k * layer_input + (chunk_layers - k) * layer)
    return held, layer if k == chunk_layers else 0.0


def recompute_label(rc: RecomputeConfig) -> str:
    """`full (uniform, 1 layer per group)`, `selective (core_attn)`, `none`."""
    if rc.granularity == "selective":
        return f"selective ({', '.join(rc.modules)})"
    if rc.granularity == "full":
        if rc.method == "uniform":
            return f"full (uniform, {rc.num_layers} layer{'s' * (rc.num_layers > 1)} per group)"
        return f"full (block, first {rc.num_layers} layer{'s' * (rc.num_layers > 1)} per chunk)"
    return "none"


def inflight_chunks(pp: int, vpp: int, rank: int) -> int:
    """Model-chunk micro-batches whose activations pipeline rank `rank` holds at its peak.

    Megatron's warm-up: 1F1B runs pp - rank - 1 forwards before the first backward;
    interleaved runs (pp - rank - 1) * 2 + (vpp - 1) * pp. Peak in flight = warm-up + 1.
    Rank 0 then holds L * (1 + (pp - 1) / (pp * vpp)) layers' worth (Korthikanti eq. 5).
    """
    warmup = pp - rank - 1 if vpp == 1 else (pp - rank - 1) * 2 + (vpp - 1) * pp
    return warmup + 1


def unfused_loss_head_bytes(tokens: int, vocab_local: int) -> float:
    """Logits path of a plain LM head: bf16 logits (2) + fp32 log-softmax kept for backward (4)
    + fp32 logit gradient in backward (4) = 10 bytes per [T, V/tp] element."""
    return tokens * vocab_local * 10.0


def fused_loss_head_bytes(tokens: int, vocab_local: int, hidden: int,
                          chunk: int | None = None) -> float:
    """Fused linear + log-prob + loss with the gradient computed per token chunk: fp32 logits and
    their gradient for one chunk [chunk, V/tp] (8 bytes) + fp32 per-token statistics (target
    logit, log-sum-exp, entropy, dloss/dlogp: 16 bytes).

    chunk = None picks T / ceil(V_local / H), so the chunk's logits are never larger than the
    hidden states [T, H]: the working set is bounded by 8*T*H, whatever the vocabulary.
    """
    if chunk is None:
        chunk = math.ceil(tokens / math.ceil(vocab_local / hidden))
    return min(chunk, tokens) * vocab_local * 8.0 + tokens * 16.0


def kv_bytes_per_token(m: ModelDims, tp: int, dtype_bytes: int = 2) -> int:
    """KV cache per token on one GPU: 2 (K and V) * layers * kv_heads/tp * head_dim * bytes.
    With tp > kv_heads vLLM replicates KV heads, so each GPU keeps at least one."""
    return 2 * m.layers * max(1, m.kv_heads // tp) * m.head_dim * dtype_bytes


# ----------------------------------------------------------------------------- the plan
@dataclass
class Row:
    name: str
    bytes: float
    counted: bool = True
    """False: shown for comparison (the option not chosen) or as a part of the row above."""
    note: str = ""
    part: bool = False
    """A component of the row above (already inside its bytes)."""


@dataclass
class MemoryPlan:
    inputs: PlanInputs
    stage: str
    """Pipeline stage the rows describe ("only" when pp = 1, else the heavier of first/last)."""
    train: list[Row]
    rollout: list[Row]
    rollout_title: str
    kv_tokens: int
    """Tokens the vLLM KV cache of one engine's GPU holds."""
    other_stage: str | None = None
    """The other end of the pipeline (pp > 1): its training rows are shown too."""
    other_train: list[Row] = field(default_factory=list)
    host: list[Row] = field(default_factory=list)
    """Host memory of one node (`host_rows`)."""
    problems: list[str] = field(default_factory=list)
    times: object | None = None
    """The step's phase times (`cluster.timing.PhaseTimes`), when the whole run config is known
    (`plan_config`); printed after the memory."""

    @property
    def gpu_bytes(self) -> float:
        return self.inputs.gpu_memory_gib * GiB

    @property
    def train_total(self) -> float:
        return sum(r.bytes for r in self.train if r.counted)

    @property
    def rollout_total(self) -> float:
        return sum(r.bytes for r in self.rollout if r.counted)

    @property
    def host_total(self) -> float:
        return sum(r.bytes for r in self.host if r.counted)

    @property
    def peak(self) -> float:
        return max(self.train_total, self.rollout_total)

    @property
    def fits(self) -> bool:
        return not self.problems

    def table(self) -> str:
        return render_table(self)


def optimizer_split(x: PlanInputs, dp: int) -> tuple[float, float]:
    """(GPU, host) optimizer bytes per parameter sharded over `dp` ranks under `x`'s offload."""
    return offloaded_optimizer_bytes(x.param_bytes, x.grad_bytes, x.distributed_optimizer, dp,
                                     x.offload_fraction, x.offload_master)


def stage_trained_params(x: PlanInputs, stage: str) -> tuple[int, int]:
    """(trained non-expert, expert) parameters one rank of `stage` holds optimizer state for."""
    lm, vis = stage_params(x.model, x.tp, x.pp, stage)
    ex = stage_expert_params(x.model, x.pp, x.ep, x.expert_etp)
    return lm + (0 if x.vision_frozen else vis), ex


def _learner_static(x: PlanInputs, stage: str) -> tuple[list[Row], float]:
    lm, vis = stage_params(x.model, x.tp, x.pp, stage)
    ex = stage_expert_params(x.model, x.pp, x.ep, x.expert_etp)
    trained = lm + ex + (0 if x.vision_frozen else vis)
    opt, opt_ex = optimizer_split(x, x.dp)[0], optimizer_split(x, x.expert_dp)[0]
    where = "distributed over DP" if x.distributed_optimizer else "replicated"
    offload = (f"; on the GPU: {1 - x.offload_fraction:.0%} of it"
               + ("" if x.offload_master else " + the fp32 master of the host share")
               if x.offload_fraction else "")
    experts = (f" + experts {ex / 1e9:.2f}B ({x.model.num_experts // x.ep} per layer: "
               f"EP{x.ep}, expert-TP{x.expert_etp})" if ex else "")
    rows = [
        Row(f"weights ({8 * x.param_bytes}-bit)", (lm + ex + vis) * x.param_bytes,
            note=f"{(lm + ex + vis) / 1e9:.2f}B params: LM/TP{x.tp}/PP{x.pp}" + experts
                 + (f" + ViT {vis / 1e9:.2f}B (not split)" if vis else "")),
        Row(f"gradients ({8 * x.grad_bytes}-bit buffer)", trained * x.grad_bytes,
            note="frozen ViT has none" if x.vision_frozen and vis else ""),
        Row("optimizer: fp32 master + Adam m, v", (trained - ex) * opt + ex * opt_ex,
            note=f"{opt:.2f} B/param, {where} (DP={x.dp})"
                 + (f"; experts {opt_ex:.2f} B/param over expert-DP {x.expert_dp}" if ex else "")
                 + offload),
    ]
    if x.reference_model:
        rows.append(Row("reference weights (KL anchor, frozen)",
                        (lm + ex + vis) * x.param_bytes,
                        note="algo.kl_coef > 0: no gradients, no optimizer state"))
    return rows, sum(r.bytes for r in rows)


def decoder_activation_bytes(x: PlanInputs, rc: RecomputeConfig,
                             chunks: int) -> tuple[float, float]:
    """`recompute_activation_bytes` for the decoder of `x` with `chunks` model-chunk micro-batches
    in flight: Korthikanti's per-layer bytes, without the score term under fused attention or
    with core_attn recomputed, and without the MLP's inner activations with mlp recomputed. A MoE
    model's layers are its heaviest (`moe_layer_activation_bytes` in place of the dense MLP's
    inner; mlp recompute re-runs the whole MoE block, keeping its input)."""
    m, t = x.model, x.micro_batch_tokens
    seq, moe = min(t, x.max_model_len), m.moe_layers > 0
    ffn = 0 if moe else m.intermediate
    experts = moe_layer_activation_bytes(t // x.tp if x.sequence_parallel else t, m,
                                         x.expert_etp) if moe else 0.0

    def layer(flash: bool) -> float:
        return experts + layer_activation_bytes(t, m.hidden, m.kv_hidden, ffn, m.heads, seq,
                                                x.tp, x.sequence_parallel, flash=flash,
                                                q_hidden=m.q_hidden)

    selective = layer(x.flash_attention or "core_attn" in rc.modules)
    if "mlp" in rc.modules:
        selective -= experts if moe else mlp_inner_bytes(t, m.intermediate, x.tp)
    return recompute_activation_bytes(
        rc, m.layers // (x.pp * x.vpp), chunks, layer(x.flash_attention), selective,
        recompute_input_bytes(t, m.hidden, x.tp, x.sequence_parallel))


def _activation_rows(x: PlanInputs, stage: str) -> list[Row]:
    m, t = x.model, x.micro_batch_tokens
    rank = 0 if stage in ("first", "only") else x.pp - 1
    chunks = inflight_chunks(x.pp, x.vpp, rank)
    what = f"{chunks * (m.layers // (x.pp * x.vpp))} layer-micro-batches in flight x {t} tokens"
    rows = []
    for mode in ("none", "selective", "full"):
        rc = dataclasses.replace(x.recompute, granularity=mode)
        held, working = decoder_activation_bytes(x, rc, chunks)
        again = f" + {working / GiB:.2f} GiB re-run in the backward" if working else ""
        rows.append(Row(f"activations, recompute={mode}", held + working,
                        counted=mode == x.recompute.granularity,
                        note=f"{recompute_label(rc)}: {what}{again}"))
    if m.moe_layers:
        tokens = t // x.tp if x.sequence_parallel else t
        rows.append(Row("MoE all-to-all dispatcher buffers (one layer)",
                        dispatcher_buffer_bytes(tokens, m),
                        note=f"send + receive: 2 x {tokens} tokens x top-{m.experts_per_token} x "
                             f"h {m.hidden} x 2 B (estimate: balanced routing)"))
    if stage in ("first", "only") and m.vision is not None and x.image_tokens_per_micro_batch:
        rows.append(_vision_row(x, math.ceil(chunks / x.vpp)))
    return rows


def _vision_row(x: PlanInputs, microbatches: int) -> Row:
    v = x.model.vision
    patches = x.image_tokens_per_micro_batch * v.spatial_merge_size**2
    block = layer_activation_bytes(patches, v.hidden, v.hidden, v.intermediate, v.heads,
                                   seq=patches, flash=True, gated_mlp=v.family != "qwen3_vl")
    if x.vision_frozen:
        return Row("ViT activations (frozen: one block's working set)", block,
                   note=f"{patches} patches, no grad")
    # the ViT is checkpointed block by block under full recompute only (`learner.model`)
    if x.recompute.granularity == "full":
        held = microbatches * v.depth * recompute_input_bytes(patches, v.hidden) + block
    else:
        held = microbatches * v.depth * block
    return Row(f"ViT activations, recompute={x.recompute.granularity}", held,
               note=f"{microbatches} micro-batch(es) x {patches} patches, replicated over TP")


def _loss_rows(x: PlanInputs) -> list[Row]:
    vl = math.ceil(x.model.vocab / x.tp)
    t = x.micro_batch_tokens
    return [
        Row("loss head, fused (chunked)",
            fused_loss_head_bytes(t, vl, x.model.hidden, x.loss_chunk_tokens),
            counted=x.fused_loss_head, note=f"chunk x V/tp fp32 + 16 B/token, V/tp={vl}"),
        Row("loss head, unfused logits", unfused_loss_head_bytes(t, vl),
            counted=not x.fused_loss_head, note=f"T x V/tp x (2+4+4) B = {t} x {vl} x 10"),
    ]


def engine_gpu_params(x: PlanInputs) -> float:
    """Parameters of one engine GPU: the model / engine TP; with engine expert parallel the
    experts are not split in width but spread whole over the engine's GPUs, ceil(E / TP) of each
    MoE layer on the fullest one, and the rest / TP."""
    m = x.model
    if not (x.engine_expert_parallel and m.num_experts):
        return total_params(m) / x.rollout_tp
    per_expert = m.moe_layers * expert_params(m)
    dense = total_params(m) - m.num_experts * per_expert
    return dense / x.rollout_tp + math.ceil(m.num_experts / x.rollout_tp) * per_expert


def _vllm_rows(x: PlanInputs) -> tuple[list[Row], int]:
    budget = x.rollout_gpu_memory_utilization * x.gpu_memory_gib * GiB
    weights = engine_gpu_params(x) * x.engine_dtype_bytes
    overhead = x.rollout_overhead_gib * GiB
    kv = max(0.0, budget - weights - overhead)
    per_tok = kv_bytes_per_token(x.model, x.rollout_tp, x.engine_dtype_bytes)
    tokens = int(kv // per_tok)
    rows = [Row(f"vLLM budget (gpu_memory_utilization={x.rollout_gpu_memory_utilization})",
                budget, note=f"engine TP={x.rollout_tp}; split below"),
            Row("  vLLM weights (/TP)", weights, counted=False, part=True,
                note=_engine_experts_note(x)),
            Row("  vLLM activations, CUDA graphs", overhead, counted=False, part=True),
            Row("  vLLM KV cache", kv, counted=False, part=True,
                note=f"{per_tok} B/token -> {tokens} tokens = "
                     f"{tokens / x.max_model_len:.1f} x max_model_len {x.max_model_len}")]
    return rows, tokens


def _engine_experts_note(x: PlanInputs) -> str:
    m, tp = x.model, x.rollout_tp
    if not m.num_experts:
        return ""
    if x.engine_expert_parallel:
        return (f"engine expert parallel: {math.ceil(m.num_experts / tp)} of {m.num_experts} "
                f"experts per layer whole, the rest /TP{tp}")
    return f"every expert's width split over TP{tp} (no engine expert parallel)"


def _stage_plan(x: PlanInputs, stage: str) -> tuple[list[Row], list[Row], str, int]:
    static, static_total = _learner_static(x, stage)
    reserved = Row("reserved: CUDA context, NCCL, fragmentation", x.reserved_gib * GiB)
    train = static + _activation_rows(x, stage)
    if stage in ("last", "only"):
        train += _loss_rows(x)
    train.append(reserved)
    vllm, tokens = _vllm_rows(x)
    if not x.colocated:
        return train, vllm, "rollout node GPU (separate placement)", tokens
    if x.rollout_sleep:
        train.append(Row("vLLM asleep (weights offloaded, KV freed)",
                         x.rollout_overhead_gib * GiB, note="CUDA graphs stay"))
    else:
        train.append(Row("vLLM awake (no sleep mode)", vllm[0].bytes))
    resident = Row("learner resident: weights + grads + optimizer", static_total,
                   note="activations freed between phases")
    return train, [resident, reserved] + vllm, "rollout phase (colocated vLLM)", tokens


def host_rows(x: PlanInputs, stage: str) -> list[Row]:
    """Host memory of one learner node: the Adam state its GPUs offload (the ranks of `stage`)
    and, colocated with sleep level 1, the host copy of each engine GPU's weights while vLLM
    sleeps. Data loading, the processes and the page cache are not counted."""
    rows = []
    if x.offload_fraction:
        dense, ex = stage_trained_params(x, stage)
        per_gpu = dense * optimizer_split(x, x.dp)[1] + ex * optimizer_split(x, x.expert_dp)[1]
        rows.append(Row("learner Adam state on the host", x.gpus_per_node * per_gpu,
                        note=f"{x.gpus_per_node} GPUs x {per_gpu / GiB:.2f} GiB: fp32 master, m, "
                             "v and gradient of the offloaded share"))
    if x.colocated and x.rollout_sleep and x.engine_sleep_level == 1:
        weights = engine_gpu_params(x) * x.engine_dtype_bytes
        rows.append(Row("vLLM weights while asleep (sleep level 1)", x.gpus_per_node * weights,
                        note=f"{x.gpus_per_node} GPUs x {weights / GiB:.2f} GiB"))
    return rows


def plan_memory(x: PlanInputs) -> MemoryPlan:
    """Per-GPU memory plan of the heavier pipeline stage, with the reasons it would not fit."""
    x.validate()
    stages = ["only"] if x.pp == 1 else ["first", "last"]
    plans = [MemoryPlan(x, s, *_stage_plan(x, s)) for s in stages]
    plans.sort(key=lambda p: p.train_total, reverse=True)
    plan = plans[0]
    if len(plans) > 1:
        plan.other_stage, plan.other_train = plans[1].stage, plans[1].train
    plan.host = host_rows(x, plan.stage)
    plan.problems = _problems(plan)
    return plan


def _problems(p: MemoryPlan) -> list[str]:
    gpu, out = p.gpu_bytes, []
    if p.train_total > gpu:
        out.append(f"training phase needs {p.train_total / GiB:.2f} GiB > GPU "
                   f"{p.inputs.gpu_memory_gib:.2f} GiB")
    if p.rollout_total > gpu:
        out.append(f"rollout phase needs {p.rollout_total / GiB:.2f} GiB > GPU "
                   f"{p.inputs.gpu_memory_gib:.2f} GiB")
    if p.host_total > p.inputs.host_memory_gib * GiB:
        out.append(f"host memory needs {p.host_total / GiB:.1f} GiB per node > "
                   f"cluster.host_memory_gib {p.inputs.host_memory_gib:.1f} GiB")
    if p.kv_tokens < p.inputs.max_model_len:
        out.append(f"vLLM KV cache holds {p.kv_tokens} tokens < max_model_len "
                   f"({p.inputs.max_model_len}): raise gpu_memory_utilization or rollout TP")
    return out


def check_fits(plan: MemoryPlan) -> MemoryPlan:
    """Return the plan if it fits, else raise ValueError carrying the whole breakdown."""
    if not plan.fits:
        raise ValueError("the config does not fit in GPU memory: " + "; ".join(plan.problems)
                         + "\n" + plan.table())
    return plan


# ----------------------------------------------------------------------------- rendering
def _line(r: Row) -> str:
    mark = "" if r.counted or r.part else "  (not counted)"
    return f"  {r.name:<48} {r.bytes / GiB:9.2f} GiB  {r.note}{mark}".rstrip()


def render_table(p: MemoryPlan) -> str:
    x, gib = p.inputs, p.inputs.gpu_memory_gib
    experts = f" EP={x.ep} expert-TP={x.expert_etp}" if x.model.num_experts else ""
    head = (f"Memory plan per GPU: {x.model.name}, TP={x.tp} PP={x.pp} VPP={x.vpp} DP={x.dp}"
            f"{experts}, "
            f"SP={'on' if x.sequence_parallel else 'off'}, micro-batch {x.micro_batch_tokens} "
            f"tokens, recompute={recompute_label(x.recompute)}, "
            f"loss head {'fused' if x.fused_loss_head else 'unfused'}"
            f"\nGPU memory {gib:.2f} GiB")
    lines = [head, f"training phase ({p.stage} stage):"] + [_line(r) for r in p.train]
    lines.append(f"  {'= training total':<48} {p.train_total / GiB:9.2f} GiB")
    if p.other_stage:
        lines += [f"training phase ({p.other_stage} stage):"] + [_line(r) for r in p.other_train]
        other = sum(r.bytes for r in p.other_train if r.counted)
        lines.append(f"  {'= training total':<48} {other / GiB:9.2f} GiB")
    lines += [f"{p.rollout_title}:"] + [_line(r) for r in p.rollout]
    lines.append(f"  {'= rollout total':<48} {p.rollout_total / GiB:9.2f} GiB")
    if p.host:
        lines += [f"host memory per learner node (of {x.host_memory_gib:.0f} GiB):"]
        lines += [_line(r) for r in p.host]
        lines.append(f"  {'= host total':<48} {p.host_total / GiB:9.2f} GiB")
    verdict = (f"FITS: peak {p.peak / GiB:.2f} GiB of {gib:.2f} GiB "
               f"({100 * p.peak / p.gpu_bytes:.0f}%)" if p.fits
               else "DOES NOT FIT: " + "; ".join(p.problems))
    times = [] if p.times is None else [p.times.table()]
    return "\n".join(lines + [verdict] + times)

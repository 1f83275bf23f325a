"""The rollout engine on vLLM: CPU build in-process here, CUDA build on clusters.

vLLM is imported only in this module (inside `VllmEngine.__init__`). Behaviour-policy log-probs:
`EngineConfig.logprobs_mode` defaults to vLLM's "processed_logprobs", i.e. for a sampled token y
at temperature T, log p(y) = log_softmax(logits / T)[y] (renormalised over the kept set when
top-k/top-p are on; exactly the learner's log_softmax(logits / T) when they are off). Greedy
requests (T = 0) report log_softmax(logits).

Weight pushes go through `collective_rpc("reload_weights")` with Hugging Face checkpoint names.
vLLM finalises a layer (fused q/k/v, fused gate/up, weight + bias) from the tensors of one call
only, so every call must carry all checkpoint tensors of each engine layer it touches; the engine
checks this, the names, shapes and finiteness before anything reaches vLLM.

Mixture-of-experts models are pushed per expert (`...mlp.experts.E.gate_proj.weight` [I, H],
`up_proj` [I, H], `down_proj` [H, I]), names vLLM's Qwen3-MoE loader maps onto its fused expert
parameters one expert at a time: the learner holds experts one by one, so nothing is stacked or
transposed on the way, and vLLM's TP split of an expert is the dense MLP's (gate/up rows, down
columns). The engine lists those names in place of the file's fused hub-layout tensors, and all
experts of a layer (gate, up and down) form one fused group: vLLM sets up the layer's expert
kernel once per reload, from the tensors of that call. With expert parallel
(`EngineConfig.enable_expert_parallel`) a rank holds whole experts, only its own (`held_experts`,
read from vLLM's expert map), and a push carries exactly those: the group of a layer is its
experts on this rank, and an expert held elsewhere is refused.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open

from prco_mega.data.images import require_normalized
from prco_mega.rollout import vllm_cpu_moe, vllm_routing
from prco_mega.rollout.config import EngineConfig
from prco_mega.rollout.engine import (Generation, GenerationRequest, PushStats, RolloutEngine,
                                      SamplingSettings)

if TYPE_CHECKING:
    import torch

# torch, and the torchvision shim that imports it, are imported in the functions that use them:
# `prco_mega.rollout` imports this module, and loading a config or `prco-mega plan` needs no torch.

# vLLM inspects model classes in a fresh interpreter; that interpreter needs the torchvision shim
# too, so it runs the shim first and then vLLM's own registry entry point.
_REGISTRY_BOOTSTRAP = (
    "from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable as shim; shim(); "
    "import runpy; runpy.run_module('vllm.model_executor.models.registry', run_name='__main__')"
)
_DEFAULT_PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"],
                   "gate_up_proj": ["gate_proj", "up_proj"]}


def _prepare_environment(config: EngineConfig, on_cpu: bool) -> None:
    """Engine env vars, set before vLLM is imported; values the user exported win."""
    # In-process engine: weights travel to the worker as Python objects (the multiprocess engine
    # cannot receive tensors through collective_rpc), and it starts in seconds.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if on_cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.cpu_kv_cache_gib))


def _import_vllm():
    from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable  # (see imports)

    ensure_torchvision_importable()
    import vllm
    import vllm.model_executor.models.registry as registry

    if registry._SUBPROCESS_COMMAND[1:] == ["-m", "vllm.model_executor.models.registry"]:
        registry._SUBPROCESS_COMMAND = [sys.executable, "-c", _REGISTRY_BOOTSTRAP]
    return vllm


def checkpoint_shapes(model_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors Hugging Face checkpoint (metadata only)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors files in model dir {str(model_dir)!r}")
    shapes = {}
    for f in files:
        with safe_open(f, framework="pt") as h:
            for name in h.keys():
                shapes[name] = tuple(h.get_slice(name).get_shape())
    return shapes


_FUSED_EXPERTS = re.compile(r"^(?P<layer>.*\.mlp\.experts)\.(?P<kind>gate_up_proj|down_proj)$")
_PER_EXPERT = re.compile(r"^(?P<layer>.*\.layers\.(?P<i>\d+)\.mlp\.experts)\.(?P<e>\d+)\."
                         r"(gate_proj|up_proj|down_proj)\.weight$")


def per_expert_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """`shapes` with each fused hub-layout expert tensor (`...mlp.experts.gate_up_proj`
    [E, H, 2I], `down_proj` [E, I, H]) replaced by the per-expert tensors it holds
    (`...mlp.experts.{e}.gate_proj.weight` [I, H], `up_proj` [I, H], `down_proj` [H, I]): the
    names a weight push uses."""
    out = {}
    for name, shape in shapes.items():
        m = _FUSED_EXPERTS.match(name)
        if m is None or len(shape) != 3:
            out[name] = shape
            continue
        experts, a, b = shape
        for e in range(experts):
            prefix = f"{m['layer']}.{e}."
            if m["kind"] == "gate_up_proj":
                out[prefix + "gate_proj.weight"] = out[prefix + "up_proj.weight"] = (b // 2, a)
            else:
                out[prefix + "down_proj.weight"] = (b, a)
    return out


def fused_layer_key(name: str, packed: dict[str, list[str]]) -> str:
    """The engine layer a checkpoint tensor lands in: its module path with fused members renamed
    to the fused layer ("...self_attn.k_proj.bias" -> "...self_attn.qkv_proj"; every expert
    tensor of a layer -> "...mlp.experts")."""
    expert = _PER_EXPERT.match(name)
    if expert is not None:
        return expert["layer"]
    module = name.rpartition(".")[0]
    parent, _, leaf = module.rpartition(".")
    for fused, members in packed.items():
        if leaf in members:
            leaf = fused
            break
    return f"{parent}.{leaf}" if parent else leaf


def held_by_rank(name: str, held_experts: Sequence[int] | None) -> bool:
    """Whether an engine rank holding `held_experts` (None: every expert) loads tensor `name`:
    every tensor but the per-expert ones of experts held elsewhere."""
    expert = _PER_EXPERT.match(name)
    return held_experts is None or expert is None or int(expert["e"]) in held_experts


def fused_groups(names: Iterable[str], packed: dict[str, list[str]]) -> dict[str, list[str]]:
    """Engine layer -> the checkpoint tensor names that must travel in the same push."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name in names:
        groups[fused_layer_key(name, packed)].append(name)
    return dict(groups)


def _zero_kv_caches(worker) -> int:
    """Runs on each worker: zero every KV block; returns bytes zeroed."""
    total = 0
    for kv in worker.model_runner.kv_caches:
        kv.zero_()
        total += kv.numel() * kv.element_size()
    return total


def _kv_summary(worker) -> dict[str, int]:
    """Runs on each worker: KV cache bytes and counts of its non-zero and non-finite values."""
    import torch  # (see the note at the imports)

    out = {"bytes": 0, "nonzero": 0, "nonfinite": 0}
    for kv in worker.model_runner.kv_caches:
        out["bytes"] += kv.numel() * kv.element_size()
        out["nonzero"] += int(torch.count_nonzero(kv))
        out["nonfinite"] += int((~torch.isfinite(kv)).sum())
    return out


def _held_experts(worker) -> list[int] | None:
    """Runs on each worker: global ids of the experts this rank holds (its MoE layers' expert map,
    vLLM's placement); None without expert parallel."""
    for module in worker.model_runner.get_model().modules():
        expert_map = getattr(module, "expert_map", None)
        if expert_map is not None and hasattr(module, "global_num_experts"):
            return [e for e, local in enumerate(expert_map.tolist()) if local >= 0]
    return None


def _packed_mapping(worker) -> dict[str, list[str]]:
    model = worker.model_runner.get_model()
    return dict(getattr(model, "packed_modules_mapping", None) or {})


def _routed_experts_of(model_dir: Path, config: EngineConfig) -> int:
    """Routed experts per MoE layer of the model (0: dense); a dense model can neither report
    them nor split them over ranks."""
    cfg = json.loads((model_dir / "config.json").read_text())
    experts = vllm_routing.num_routed_experts(cfg)
    for setting, what in (("return_routed_experts", "no routed experts to report"),
                          ("enable_expert_parallel", "no experts to split over the ranks")):
        if getattr(config, setting) and experts == 0:
            raise ValueError(f"engine.{setting} is on but {str(model_dir)!r} (model_type "
                             f"{cfg.get('model_type')!r}) is not a mixture-of-experts model: it "
                             f"has {what}")
    return experts


def _check_cpu_head_dim(model_dir: Path) -> None:
    """vLLM's CPU attention kernels exist for a fixed set of head sizes; fail early and clearly."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    cfg = json.loads((model_dir / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in supported:
        raise ValueError(f"head_dim ({head_dim}) of {str(model_dir)!r} is not supported by vLLM's "
                         f"CPU attention (supported: {supported}); e.g. hidden_size 128 with 4 "
                         "heads")


class VllmEngine(RolloutEngine):
    """A vLLM `LLM` over a Hugging Face model directory (weights, tokenizer, processor)."""

    def __init__(self, model_dir: str | Path, config: EngineConfig | None = None):
        import torch  # (see the note at the imports)

        self.config = config or EngineConfig()
        self.model_dir = Path(model_dir)
        self.on_cpu = not torch.cuda.is_available()
        if self.on_cpu and self.config.return_routed_experts and not self.config.enforce_eager:
            raise ValueError("engine.return_routed_experts on CPU needs engine.enforce_eager: true "
                             "(the expert ids are captured in Python, which graph replay skips)")
        t0 = time.perf_counter()
        _prepare_environment(self.config, self.on_cpu)
        vllm = _import_vllm()
        if self.on_cpu:
            _check_cpu_head_dim(self.model_dir)
        self.num_experts = _routed_experts_of(self.model_dir, self.config)
        self.shapes = per_expert_shapes(checkpoint_shapes(self.model_dir))
        if self.config.enable_expert_parallel and vllm_cpu_moe.needs_cpu_expert_map(
                vllm.__version__, self.on_cpu):
            vllm_cpu_moe.install_expert_map()  # before the engine's first forward
        self._llm = vllm.LLM(**self._engine_kwargs())
        self._vllm = vllm
        self.tokenizer = self._llm.get_tokenizer()
        packed = self._llm.collective_rpc(_packed_mapping)[0] or _DEFAULT_PACKED
        self.held_experts = (self._llm.collective_rpc(_held_experts)[0]
                             if self.config.enable_expert_parallel else None)
        """Global ids of the experts this engine rank holds (expert parallel), None: all."""
        self.groups = fused_groups([n for n in self.shapes if held_by_rank(n, self.held_experts)],
                                   packed)
        self._group_of = {n: k for k, names in self.groups.items() for n in names}
        self._asleep = False
        self.repack_experts = vllm_cpu_moe.needs_cpu_expert_repack(vllm.__version__, self.on_cpu)
        """Run the CPU MoE kernel's prepack on expert updates (`rollout.vllm_cpu_moe`; off only to
        show vLLM's stock behaviour)."""
        if self.repack_experts:
            vllm_cpu_moe.install()
        self.return_routed_experts = self.config.return_routed_experts
        """Fill `Generation.routed_experts` (`rollout.vllm_routing`)."""
        self.last_routing_seconds = 0.0
        """Wall time of the last `generate`'s routing re-score (0 when off)."""
        self.start_seconds = time.perf_counter() - t0
        """Wall time of the constructor (import + engine start)."""

    def _engine_kwargs(self) -> dict[str, Any]:
        c = self.config
        kwargs = dict(**_launcher_kwargs(),
            model=str(self.model_dir), dtype=c.dtype, max_model_len=c.max_model_len,
            max_num_seqs=c.max_num_seqs, enforce_eager=c.enforce_eager, seed=c.seed,
            tensor_parallel_size=c.tensor_parallel_size, logprobs_mode=c.logprobs_mode,
            enable_prefix_caching=c.enable_prefix_caching,
            enable_expert_parallel=c.enable_expert_parallel,
            limit_mm_per_prompt={"image": c.max_images_per_prompt, "video": 0},
            max_num_batched_tokens=c.max_num_batched_tokens or max(c.max_model_len, 8192),
            enable_chunked_prefill=(not self.on_cpu if c.enable_chunked_prefill is None
                                    else c.enable_chunked_prefill),
        )
        if not self.on_cpu:
            kwargs.update(gpu_memory_utilization=c.gpu_memory_utilization,
                          enable_sleep_mode=c.enable_sleep_mode)
            if c.return_routed_experts:
                # Model Runner V2 (CUDA's default where Triton runs) returns each sample's
                # routed experts itself: no re-score (not yet run here: no GPU lent so far)
                kwargs.update(enable_return_routed_experts=True)
        return kwargs

    # ------------------------------------------------------------------ generation
    def generate(self, requests: list[GenerationRequest],
                 sampling: SamplingSettings) -> list[list[Generation]]:
        if not requests:
            return []
        prompts = [self._vllm_prompt(r) for r in requests]
        params = [self._sampling_params(sampling, i if r.key is None else r.key)
                  for i, r in enumerate(requests)]
        outputs = self._llm.generate(prompts, params, use_tqdm=False)
        results = [[_to_generation(o, out.prompt_token_ids, self.placeholder_ids)
                    for o in out.outputs] for out in outputs]
        self.last_routing_seconds = 0.0
        if self.return_routed_experts and not self.on_cpu:
            for out, gens in zip(outputs, results):
                for o, gen in zip(out.outputs, gens):
                    gen.routed_experts = vllm_routing.from_runner_v2(
                        o.routed_experts, len(gen.prompt_ids) + len(gen.token_ids),
                        self.num_experts)
        elif self.return_routed_experts:
            self._add_routed_experts(requests, results)
        return results

    def _add_routed_experts(self, requests: list[GenerationRequest],
                            results: list[list[Generation]]) -> None:
        """Re-score every sample alone to capture its routed experts (`rollout.vllm_routing`);
        every rank of an engine runs the same re-scores in the same order."""
        t0 = time.perf_counter()
        for request, gens in zip(requests, results, strict=True):
            sent = (list(request.prompt_ids) if request.prompt_ids is not None
                    else self.tokenizer.encode(request.prompt, add_special_tokens=False))
            for gen in gens:
                again = dataclasses.replace(request, prompt_ids=sent + gen.token_ids, prompt=None)
                gen.routed_experts = vllm_routing.rescore_routing(
                    self._llm, self._vllm.SamplingParams, self._vllm_prompt(again),
                    gen.prompt_ids + gen.token_ids, self.num_experts, self.config.max_model_len)
        self.last_routing_seconds = time.perf_counter() - t0

    @property
    def placeholder_ids(self) -> tuple[int, ...]:
        """Vision placeholder tokens (`<|vision_start|>`, `<|image_pad|>`, ...): a response that
        samples one stops there and the token is dropped, because in a learner sequence the model
        would read it as an image slot (and no image backs it)."""
        if not hasattr(self, "_placeholder_ids"):
            names = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
            ids = self.tokenizer.convert_tokens_to_ids(list(names))
            unk = self.tokenizer.unk_token_id
            self._placeholder_ids = tuple(i for i in ids if i is not None and i != unk)
        return self._placeholder_ids

    @staticmethod
    def _vllm_prompt(request: GenerationRequest) -> dict[str, Any]:
        # vLLM flattens a raw image its own way; the learner must see the engine's pixels.
        require_normalized(request.images or (), "vLLM engine request")
        if request.prompt_ids is not None:
            prompt: dict[str, Any] = {"prompt_token_ids": list(request.prompt_ids)}
        else:
            prompt = {"prompt": request.prompt}
        if request.images:
            images = list(request.images)
            prompt["multi_modal_data"] = {"image": images[0] if len(images) == 1 else images}
        return prompt

    def _sampling_params(self, s: SamplingSettings, index: int):
        # vLLM seeds sample j of a request with (request seed + j).
        seed = None if s.seed is None else s.seed + index * s.n
        return self._vllm.SamplingParams(
            n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
            max_tokens=s.max_new_tokens, stop=list(s.stop) or None,
            stop_token_ids=list(s.stop_token_ids) + list(self.placeholder_ids) or None, seed=seed,
            logprobs=0 if s.logprobs else None, skip_special_tokens=True,
        )

    # ------------------------------------------------------------------ weights
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], *,
                       checked_finite: bool = False) -> PushStats:
        t0 = time.perf_counter()
        tensors = list(named_tensors)
        try:
            self._validate_push(tensors, checked_finite)
            with vllm_cpu_moe.repack_on_update(self.repack_experts):
                self._llm.collective_rpc("reload_weights",
                                         kwargs={"weights_iterator": tensors})
        except BaseException:
            # vLLM may have run part of the reload; NaN written into KV blocks would survive a
            # prefix-cache reset (masked attention still multiplies stale values by zero).
            self.reset_caches(zero_kv=True)
            raise
        self.reset_caches()
        nbytes = sum(t.numel() * t.element_size() for _, t in tensors)
        return PushStats(len(tensors), nbytes, time.perf_counter() - t0)

    def _validate_push(self, tensors: list[tuple[str, torch.Tensor]], checked_finite: bool) -> None:
        """Refuse unknown names, wrong shapes, non-finite values (unless the caller checked them)
        and incomplete fused layers."""
        import torch  # (see the note at the imports)

        names = [n for n, _ in tensors]
        unknown = [n for n in names if n not in self.shapes]
        if unknown:
            raise ValueError(f"weight push has names not in the checkpoint of "
                             f"{str(self.model_dir)!r}: {unknown[:5]} (of {len(unknown)})")
        for name, t in tensors:
            if tuple(t.shape) != self.shapes[name]:
                raise ValueError(f"weight push: {name} has shape {tuple(t.shape)}, the engine "
                                 f"expects {self.shapes[name]}")
            if not checked_finite and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise ValueError(f"weight push refused: {name} has {bad} non-finite values "
                                 f"(of {t.numel()}); the engine keeps its previous weights")
        elsewhere = [n for n in names if n not in self._group_of]
        if elsewhere:
            raise ValueError(f"weight push has experts this engine rank does not hold "
                             f"(engine.enable_expert_parallel: it holds experts "
                             f"{self.held_experts}): {elsewhere[:5]} (of {len(elsewhere)})")
        present = set(names)
        for key in {self._group_of[n] for n in names}:
            missing = [m for m in self.groups[key] if m not in present]
            if missing:
                raise ValueError(f"weight push splits fused engine layer {key}: missing "
                                 f"{missing}; push all of {self.groups[key]} together")

    def weight_groups(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.groups.items()}

    # ------------------------------------------------------------------ caches and memory
    def reset_caches(self, zero_kv: bool = False) -> None:
        if zero_kv:
            self._llm.collective_rpc(_zero_kv_caches)
        self._llm.reset_prefix_cache()
        self._llm.llm_engine.reset_encoder_cache()

    def kv_cache_summary(self) -> dict[str, int]:
        """KV cache bytes, non-zero and non-finite value counts, summed over workers (scans it)."""
        parts = self._llm.collective_rpc(_kv_summary)
        return {k: sum(p[k] for p in parts) for k in parts[0]}

    def sleep(self, level: int = 1) -> None:
        # vLLM's CPU build has no sleep mode (enable_sleep_mode raises there): a no-op
        if self.config.enable_sleep_mode and not self.on_cpu and not self._asleep:
            self._llm.sleep(level=level)
            self._asleep = {"weights", "kv_cache"}

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        if not self._asleep:
            return
        waking = set(self._asleep if tags is None else tags) & self._asleep
        self._llm.wake_up(tags=sorted(waking))
        self._asleep -= waking
        if not self._asleep:
            self._asleep = False
            self.reset_caches()

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()


def _launcher_kwargs() -> dict[str, Any]:
    """Inside a torchrun world of several ranks, vLLM runs one worker in each rank
    (`external_launcher`): it adopts the learner's default group, makes its own subgroups on
    every rank (so every rank must build its engine at the same moment) and splits the world
    into engines of `tensor_parallel_size` consecutive ranks. A world of one keeps vLLM's own
    in-process executor."""
    import torch.distributed as dist  # (see the note at the imports)

    if dist.is_initialized() and dist.get_world_size() > 1:
        return {"distributed_executor_backend": "external_launcher"}
    return {}


def _to_generation(completion, prompt_ids, drop_last: tuple[int, ...] = ()) -> Generation:
    token_ids = list(completion.token_ids)
    logprobs = None
    if completion.logprobs is not None:
        logprobs = [step[tok].logprob for step, tok in zip(completion.logprobs, token_ids)]
    if token_ids and token_ids[-1] in drop_last:  # stopped on a placeholder: not part of the text
        token_ids = token_ids[:-1]
        logprobs = None if logprobs is None else logprobs[:-1]
    return Generation(token_ids=token_ids, text=completion.text,
                      logprobs=logprobs, finish_reason=str(completion.finish_reason),
                      prompt_ids=list(prompt_ids or []))

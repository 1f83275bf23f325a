"""Where imports live: at the top of their file, so the import graph is what a reader sees.

Only the heavy packages (vLLM, Megatron, transformers, Transformer Engine, flash-attn, DALI) are
imported inside functions, together with the package's own modules that import one of them at
their top (importing such a module is importing Megatron). The light commands (`prco-mega --help`,
`plan`, loading a config) must not load a heavy package or torch at all, so the modules they load
(`light_modules`: what `prco_mega.cli`, `prco_mega.config` and `prco_mega.cluster.plan` import at
their top, transitively) also import torch, and the package's modules that import torch at their
top, inside the functions that need them. A few other function-level imports are kept on purpose;
each is in `ALLOWED` with its reason.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from test_import_graph import _modules, _runtime_nodes, _targets

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("vllm", "megatron", "transformers", "transformer_engine", "flash_attn", "nvidia.dali")
LIGHT_ROOTS = ("prco_mega.cli", "prco_mega.config", "prco_mega.cluster.plan")
SOURCES = (ROOT / "prco_mega", ROOT / "kernels" / "prco_kernels", ROOT / "tools")

ALLOWED: dict[tuple[str, str], str] = {
    # (file relative to the checkout, imported module or its package): why it stays in a function
    ("prco_mega/tracking/loggers.py", "tensorboard"): "optional (`tracking` extra)",
    ("prco_mega/tracking/loggers.py", "wandb"): "optional; WANDB_DISABLE_WEAVE is set before it loads",
    ("prco_mega/tracking/metrics.py", "matplotlib"): "optional; the backend is chosen before pyplot",
    ("prco_mega/eval/benchmarks/report.py", "matplotlib"):
        "optional; the backend is chosen before pyplot",
    ("prco_mega/data/reader.py", "pyarrow"): "parquet only; a missing pyarrow is named when read",
    ("tools/bench_kernels.py", "liger_kernel"): "optional (`bench` extra), GPU rows only",
    ("tools/bench_verifier.py", "math_verify"): "optional (`bench` extra)",
    ("kernels/prco_kernels/logprob.py", "prco_kernels._logprob_triton"):
        "@triton.jit reads TRITON_INTERPRET when it decorates: the kernels load on first use",
}


def _is_under(name: str, packages) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _module_name(path: Path) -> str:
    """`prco_mega.a.b` for prco_mega/a/b.py, `prco_kernels.x` for kernels/prco_kernels/x.py."""
    base = ROOT / "kernels" if path.is_relative_to(ROOT / "kernels") else ROOT
    parts = path.relative_to(base).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files() -> list[Path]:
    return sorted(p for src in SOURCES for p in (src.glob("*.py") if src.name == "tools"
                                                 else src.rglob("*.py")))


def _imports(path: Path) -> tuple[list[ast.AST], list[ast.AST]]:
    """(top-level, function-level) import statements of a file, those under `if TYPE_CHECKING:`
    left out (they never run)."""
    tree = ast.parse(path.read_text())
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if n is not f}
    runtime = [n for n in _runtime_nodes(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return ([n for n in runtime if id(n) not in inner], [n for n in runtime if id(n) in inner])


def _imported(node: ast.AST, path: Path) -> list[str]:
    """The modules an import statement names: `import a.b` -> a.b; `from a import b` -> a (and
    a.b, which may be a module)."""
    if path.is_relative_to(ROOT / "tools"):
        return _targets(node, path.stem, False)
    return _targets(node, _module_name(path), path.name == "__init__.py")


def _named(node: ast.AST, path: Path) -> list[str]:
    """The modules an import statement loads by name: `import a.b` -> a.b; `from a import b` -> a."""
    names = _imported(node, path)
    return names if isinstance(node, ast.Import) else names[:1]


def _top_level_graph() -> dict[str, set[str]]:
    """module -> what it imports at its top: the names as written, and the package's modules
    (with the packages whose `__init__` such an import runs first)."""
    modules = {**_modules(), **{_module_name(p): p for p in (ROOT / "kernels").rglob("*.py")}}
    graph = {}
    for name, path in modules.items():
        targets = {t for n in _imports(path)[0] for t in _imported(n, path)}
        for target in list(targets):
            while "." in target:
                target = target.rpartition(".")[0]
                if target in modules and not name.startswith(target + "."):
                    targets.add(target)
        graph[name] = targets
    return graph


def _importers_of(packages: tuple[str, ...]) -> set[str]:
    """The package's modules that import one of `packages` while they are imported (directly, or
    through the top-level imports of other package modules)."""
    top = _top_level_graph()
    found = {m for m, targets in top.items() if any(_is_under(t, packages) for t in targets)}
    while True:
        more = {m for m, targets in top.items() if m not in found and targets & found}
        if not more:
            return found
        found |= more


def heavy_modules() -> set[str]:
    """The package's modules that import a heavy package at import."""
    return _importers_of(HEAVY)


def torch_modules() -> set[str]:
    """The package's modules that import torch (or a heavy package, which imports torch) at
    import."""
    return _importers_of(HEAVY + ("torch",))


def light_modules() -> set[str]:
    """The modules the light commands load: `LIGHT_ROOTS` and what they import at their top."""
    top = _top_level_graph()
    seen, stack = set(), list(LIGHT_ROOTS)
    while stack:
        m = stack.pop()
        if m in seen or m not in top:
            continue
        seen.add(m)
        stack.extend(top[m])
    return seen


def function_level_imports_outside_the_policy() -> list[str]:
    heavy, torchy, light = heavy_modules(), torch_modules(), light_modules()
    bad = []
    for path in _files():
        rel = str(path.relative_to(ROOT))
        for node in _imports(path)[1]:
            names = _imported(node, path)
            if any(_is_under(n, HEAVY) or n in heavy for n in names):
                continue
            if _module_name(path) in light and any(_is_under(n, ("torch",)) or n in torchy
                                                   for n in names):
                continue
            if any(_is_under(n, (mod,)) for n in names for f, mod in ALLOWED if f == rel):
                continue
            bad.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    return bad


def function_level_reimports() -> list[str]:
    bad = []
    for path in _files():
        top, inner = _imports(path)
        at_top = {name for n in top for name in _named(n, path)}
        bad += [f"{path.relative_to(ROOT)}:{n.lineno}: {ast.unparse(n)}" for n in inner
                if set(_named(n, path)) & at_top]
    return bad


def test_heavy_modules_are_found_through_top_level_imports():
    heavy = heavy_modules()
    assert "prco_mega.learner.model" in heavy  # imports megatron.core at its top
    assert "prco_mega.config" not in heavy and "prco_mega.learner.provider" not in heavy
    assert "prco_mega.learner.train_step" in torch_modules()
    assert {"prco_mega.cli", "prco_mega.config", "prco_mega.families"} <= light_modules()
    assert not light_modules() & torch_modules()


def test_allowed_entries_are_still_needed():
    """An entry whose import moved to the top (or went away) leaves the list."""
    used = set()
    for path in _files():
        rel = str(path.relative_to(ROOT))
        for node in _imports(path)[1]:
            used |= {(f, mod) for n in _imported(node, path) for f, mod in ALLOWED
                     if f == rel and _is_under(n, (mod,))}
    assert set(ALLOWED) == used, sorted(set(ALLOWED) - used)


def test_only_heavy_packages_are_imported_inside_functions():
    bad = function_level_imports_outside_the_policy()
    assert not bad, "move to the top of the file (or explain it in ALLOWED):\n" + "\n".join(bad)


def test_no_function_imports_what_its_file_imports_at_the_top():
    bad = function_level_reimports()
    assert not bad, "already imported at the top of the file:\n" + "\n".join(bad)


LIGHT_COMMANDS = """
import sys
from prco_mega.cli import main
from prco_mega.config import load_config

load_config("configs/tiny_cpu.yaml")
main(["plan", "configs/qwen25vl_7b_h100x8.yaml"])
try:
    main(["--help"])
except SystemExit:
    pass
print(sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in HEAVY)))
"""


def test_light_commands_load_no_heavy_package():
    """`prco-mega --help`, `plan` and loading a config start in a fraction of a second because
    they import neither torch nor a heavy package (an import at the top of the wrong module would
    pull one in)."""
    heavy = HEAVY + ("torch",)
    out = subprocess.run([sys.executable, "-c", f"HEAVY = {heavy!r}\n{LIGHT_COMMANDS}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-2000:]

"""Every package is the folder of its import name, and the install finds them all."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_prco_kernels_imports_from_its_folder_under_kernels():
    out = subprocess.run([sys.executable, "-c", "import prco_kernels; print(prco_kernels.__file__)"],
                         capture_output=True, text=True, cwd="/", check=True)
    assert Path(out.stdout.strip()).parent == ROOT / "kernels" / "prco_kernels"


def test_every_subpackage_of_prco_mega_is_installed_from_its_folder():
    found = sorted(".".join(p.parent.relative_to(ROOT).parts)
                   for p in (ROOT / "prco_mega").rglob("__init__.py"))
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    print(importlib.import_module(name).__file__)\n")
    out = subprocess.run([sys.executable, "-c", code, *found], capture_output=True, text=True,
                         cwd="/", check=True)
    files = [Path(line) for line in out.stdout.split()]
    assert [f.parent for f in files] == [ROOT.joinpath(*name.split(".")) for name in found]

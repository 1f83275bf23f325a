"""The install maps kernels/ to `prco_kernels` and ships every subpackage of prco_mega."""
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "prco_mega").rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert "prco_kernels" in listed


def test_prco_kernels_imports_from_the_kernels_folder():
    out = subprocess.run([sys.executable, "-c", "import prco_kernels; print(prco_kernels.__file__)"],
                         capture_output=True, text=True, cwd="/", check=True)
    assert Path(out.stdout.strip()).parent == ROOT / "kernels"

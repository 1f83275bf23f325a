"""tools/gpu_check.sh, the prepared GPU check, on a machine without a GPU: its dry run parses the
arguments, checks the wheel folder, prints the commands within the 8-minute budget and the table
with the planner's figures, and never a measured figure."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.sh"
WHEELS = ["megatron_core-0.16.1-cp311-cp311-manylinux_2_28_x86_64.whl",
          "psutil-7.2.2-cp36-abi3-manylinux2010_x86_64.whl",
          "pillow-12.0.0-cp311-cp311-manylinux_2_28_x86_64.whl"]
SETTINGS = ["none", "selective core_attn", "selective core_attn+mlp", "full uniform 1",
            "full uniform 2", "full block 4"]
MEASURED = [2, 3, 5, 6, 7]  # table columns only a GPU run fills: saved, ratios, CUDA peak, ms


def wheel_dir(tmp_path: Path, names=WHEELS) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    for name in names:
        (folder / name).touch()
    return folder


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})},
                          timeout=300, check=False)


def table_rows(out: str) -> list[list[str]]:
    """The learner table's data rows, split on runs of 2+ spaces."""
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("setting "))
    return [re.split(r"\s{2,}", line.strip()) for line in lines[head + 1:] if line.strip()]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    folder = wheel_dir(tmp_path_factory.mktemp("gpu_check"))
    return folder, run("--dry-run", "--wheels", str(folder))


def test_dry_run_lists_the_wheels_commands_and_planner_figures_but_measures_nothing(dry_run):
    _, proc = dry_run
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for name in WHEELS:
        assert name in out
    assert "pip install --quiet --no-index --no-deps --find-links" in out
    assert "bench_kernels.py --device cuda --quick" in out
    assert "# dry run: nothing measured" in out
    rows = table_rows(out)
    assert [r[0] for r in rows] == SETTINGS
    for r in rows:
        assert len(r) == 8, r
        assert all(r[i] == "-" for i in MEASURED), r
        assert float(r[1]) > 0 and float(r[4]) > float(r[1])  # + the fused loss head
    plan = {r[0]: float(r[1]) for r in rows}
    assert plan["none"] > plan["selective core_attn+mlp"] > plan["full uniform 1"]


def test_the_commands_fit_the_eight_minute_budget(dry_run):
    limits = [int(s) for s in re.findall(r"^\+ timeout (\d+) ", dry_run[1].stdout,
                                         flags=re.MULTILINE)]
    assert len(limits) == 3 and sum(limits) <= 8 * 60


def test_the_environment_variables_do_what_the_flags_do(dry_run):
    folder, by_flag = dry_run
    by_env = run(env={"GPU_CHECK_DRY_RUN": "1", "GPU_CHECK_WHEELS": str(folder)})
    assert by_env.returncode == 0 and by_env.stdout == by_flag.stdout


@pytest.mark.parametrize("args,message", [
    (["--frobnicate"], "unknown argument '--frobnicate'"),
    (["--dry-run", "--wheels"], "--wheels needs a folder")])
def test_bad_arguments_are_refused_with_the_usage(args, message):
    proc = run(*args)
    assert proc.returncode == 2 and message in proc.stderr


def test_a_missing_wheel_is_refused_before_anything_runs(tmp_path):
    proc = run("--dry-run", "--wheels", str(wheel_dir(tmp_path, WHEELS[:1] + WHEELS[2:])))
    assert proc.returncode == 2
    assert "no psutil wheel" in proc.stderr and "bench_kernels" not in proc.stdout


def test_without_a_gpu_the_measuring_run_refuses_instead_of_printing_figures():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
    assert "setting " not in proc.stdout

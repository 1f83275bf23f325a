"""Every kernel compiles ahead of time for Hopper (sm_90), in its own process, without a GPU."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "compile_kernels.py"


def test_all_kernels_compile_for_sm90_without_spilling_production_configs():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(TOOL)], env=env, capture_output=True, text=True,
                          timeout=600)
    print(proc.stdout)  # the register/spill table, visible with pytest -s
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:] if "[" in line or
            line.startswith(("ppo", "segment", "traj", "token"))}
    assert "fused_fwd_kernel[bf16]" in rows and "token_broadcast_kernel" in rows
    # the bf16 production path of the LM-head kernel must use Hopper's wgmma and never spill
    bf16 = rows["fused_fwd_kernel[bf16]"]
    assert bf16[-1] == "yes" and bf16[2] == "0" and bf16[3] == "0", proc.stdout

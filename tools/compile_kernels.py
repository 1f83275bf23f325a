"""Compile every prco_kernels Triton kernel ahead of time for Hopper (sm_90) and report resources.

Needs no GPU. Run it in its own process without TRITON_INTERPRET (interpreted kernels cannot be
compiled). Exits non-zero if any kernel fails to compile or spills registers beyond
--max-spill-bytes. Registers and spills come from ptxas's own -v report of the compiled cubin.

    python tools/compile_kernels.py [--max-spill-bytes N]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

# A bare checkout (a GPU machine given only the repo, no `pip install -e .`) imports the kernels
# from their folder: kernels/prco_kernels/ is the package `prco_kernels`.
sys.path.append(str(Path(__file__).resolve().parents[1] / "kernels"))

from prco_kernels import _logprob_triton as lt  # noqa: E402
from prco_kernels import advantage, ppo_loss  # noqa: E402


def kernel_specs():
    """(label, jit fn, signature, constexprs, options) for every kernel, at its production config."""
    i32, f32 = "i32", "fp32"
    specs = []
    for dt, ieee in (("bf16", False), ("fp32", True)):
        sig = dict(h_ptr=f"*{dt}", w_ptr=f"*{dt}", tgt_ptr="*i64", stats_ptr="*fp32", T=i32, V=i32,
                   H=i32, vocab_start=i32, inv_temp=f32, stride_h=i32, stride_w=i32,
                   tiles_per_split=i32)
        consts = dict(BLOCK_T=64, BLOCK_V=128, BLOCK_H=64, UPCAST=False, IEEE=ieee)
        specs.append((f"fused_fwd_kernel[{dt}]", lt.fused_fwd_kernel, sig, consts,
                      dict(num_warps=8, num_stages=3)))
        sig = dict(z_ptr=f"*{dt}", tgt_ptr="*i64", stats_ptr="*fp32", C=i32, V=i32, stride=i32,
                   vocab_start=i32, inv_temp=f32)
        specs.append((f"chunk_stats_kernel[{dt}]", lt.chunk_stats_kernel, sig, dict(BLOCK_V=2048),
                      dict(num_warps=4)))
        sig = dict(z_ptr=f"*{dt}", tgt_ptr="*i64", lse_ptr="*fp32", mu_ptr="*fp32", glp_ptr="*fp32",
                   gent_ptr="*fp32", V=i32, stride=i32, vocab_start=i32, inv_temp=f32)
        specs.append((f"chunk_grad_kernel[{dt}]", lt.chunk_grad_kernel, sig,
                      dict(HAS_ENT=True, BLOCK_V=2048), dict(num_warps=4)))
    sig = dict(lp_ptr="*fp32", old_ptr="*fp32", adv_ptr="*fp32", w_ptr="*fp32", ref_ptr="*fp32",
               dlp_ptr="*fp32", stats_ptr="*fp32", T=i32, clip_low=f32, clip_high=f32,
               dual_clip=f32, kl_coef=f32)
    specs.append(("ppo_kl_fwd_kernel", ppo_loss.kernels()["ppo_kl_fwd_kernel"], sig,
                  dict(HAS_DUAL=True, HAS_REF=True, KL_TYPE=3, BLOCK=1024), dict(num_warps=4)))
    adv = advantage.kernels()
    specs.append(("segment_sum_kernel", adv["segment_sum_kernel"],
                  dict(x_ptr="*fp32", seg_ptr="*i32", mean_ptr="*fp32", out_ptr="*fp32", N=i32),
                  dict(CENTRED_SQUARES=True, BLOCK=1024), dict(num_warps=4)))
    specs.append(("traj_adv_kernel", adv["traj_adv_kernel"],
                  dict(r_ptr="*fp32", seg_ptr="*i32", mean_ptr="*fp32", sq_ptr="*fp32",
                       count_ptr="*fp32", adv_ptr="*fp32", N=i32, eps=f32),
                  dict(SCALE=True, BLOCK=1024), dict(num_warps=4)))
    specs.append(("token_broadcast_kernel", adv["token_broadcast_kernel"],
                  dict(adv_ptr="*fp32", cu_ptr="*i32", mask_ptr="*fp32", out_ptr="*fp32", T=i32, N=i32),
                  dict(SEARCH_STEPS=14, BLOCK=1024), dict(num_warps=4)))
    return specs


def compile_one(fn, signature, constexprs, options, capability=90):
    """Compile for sm_`capability`; returns (ptxas -v log, compiled kernel)."""
    sig = dict(signature)
    sig.update({k: "constexpr" for k in constexprs})
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(src, target=GPUTarget("cuda", capability, 32), options=options)
    return log.getvalue(), compiled


def parse_ptxas(log):
    """(registers, spill store bytes, spill load bytes, shared bytes) from a ptxas -v log."""
    def grab(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else -1
    return (grab(r"Used (\d+) registers"), grab(r"(\d+) bytes spill stores"),
            grab(r"(\d+) bytes spill loads"), grab(r"(\d+) bytes smem"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-spill-bytes", type=int, default=None,
                    help="fail if any kernel spills more than this many bytes (default: report only)")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("error: unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    # a fresh cache makes ptxas run (and report) for every kernel instead of reusing old cubins
    # (triton reads its knobs' environment variables when it compiles, not when it is imported)
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="prco_kernels_aot_")
    triton.knobs.nvidia.dump_ptxas_log = True  # ptxas -v report goes to stdout, captured per kernel
    failures = []
    print(f"{'kernel':32s} {'regs':>5s} {'spill st':>9s} {'spill ld':>9s} {'smem B':>8s}  wgmma")
    for label, fn, sig, consts, opts in kernel_specs():
        try:
            log, compiled = compile_one(fn, sig, consts, opts)
        except Exception as exc:  # noqa: BLE001  (report every kernel, then fail)
            failures.append(label)
            print(f"{label:32s} COMPILE ERROR: {str(exc).splitlines()[0][:200]}")
            continue
        regs, st, ld, smem = parse_ptxas(log)
        if regs < 0:
            failures.append(f"{label} (no ptxas report)")
        smem = compiled.metadata.shared if smem < 0 else smem
        wgmma = "yes" if "wgmma" in compiled.asm["ptx"] else "-"
        print(f"{label:32s} {regs:5d} {st:9d} {ld:9d} {smem:8d}  {wgmma}")
        if args.max_spill_bytes is not None and max(st, ld) > args.max_spill_bytes:
            failures.append(f"{label} (spills {max(st, ld)} B)")
    if failures:
        print(f"FAILED: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("all kernels compiled for sm_90")
    return 0


if __name__ == "__main__":
    sys.exit(main())

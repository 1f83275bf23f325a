"""Microbenchmarks of prco_kernels against the torch references (and Liger-Kernel on GPU).

    python tools/bench_kernels.py --device cuda [--quick]   # time, peak memory, roofline fraction
    python tools/bench_kernels.py --device cpu  [--quick]   # reduced shapes: peak extra memory

Designs measured for the LM head (bf16 on GPU, fp32 on CPU; FLOPs count the LM-head GEMMs):
  ref        torch: full [T, V_local] fp32 logits, log_softmax, autograd          6THV + [T,V] buffers
  recompute  linear_logprob_entropy: fused Triton forward (logits on chip), backward recomputes
             logits per token chunk (cuBLAS) + Triton gradient kernel                8THV
  loss_head  fused_logprob_loss_head + fused PPO kernel: gradient in the forward pass  6THV
  liger_ce   Liger LigerFusedLinearCrossEntropyLoss (logprob-only analogue, chunked)   6THV
  liger_grpo Liger LigerFusedLinearGRPOLoss (chunked torch, torch.compile)             6THV
GPU roofline: FLOPs / (measured bf16 GEMM rate), bytes / (measured device copy bandwidth).
CPU memory: each measurement runs in a fresh subprocess; peak = ru_maxrss after the call minus the
resident set just before it (inputs already allocated), so it counts every transient buffer torch
allocates; 'beyond grads' subtracts the gradients themselves ([T,H] + [V,H]), which any method
must hold.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch


# A bare checkout (a GPU machine given only the repo, no `pip install -e .`) imports the kernels
# from their folder: kernels/prco_kernels/ is the package `prco_kernels`.
sys.path.append(str(Path(__file__).resolve().parents[1] / "kernels"))

import prco_kernels as pk  # noqa: E402

VOCAB = 152064


# ---------------------------------------------------------------- the measured callables
def head_inputs(T, H, V, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    hidden = (torch.randn(T, H, generator=g) * 0.5).to(device, dtype).requires_grad_(True)
    weight = (torch.randn(V, H, generator=g) * 0.02).to(device, dtype).requires_grad_(True)
    targets = torch.randint(0, V, (T,), generator=g).to(device)
    old = (-3.0 + torch.randn(T, generator=g)).to(device)
    adv = torch.randn(T, generator=g).to(device)
    w = torch.full((T,), 1.0 / T, device=device)
    return hidden, weight, targets, old, adv, w


def head_step(design, inputs, chunk_tokens=None, impl="triton"):
    """One forward+backward of the LM head + PPO loss in the given design; returns a closure."""
    hidden, weight, targets, old, adv, w = inputs

    def ref():
        lp, _ = pk.linear_logprob_entropy_reference(hidden, weight, targets)
        pk.ppo_kl_loss_reference(lp, old, adv, w)[0].backward()

    def recompute():
        lp, _ = pk.linear_logprob_entropy(hidden, weight, targets, chunk_tokens=chunk_tokens, impl=impl)
        pk.ppo_kl_loss(lp, old, adv, w, impl=impl)[0].backward()

    def loss_head():
        fn = pk.ppo_kl_loss_fn(old, adv, w, impl=impl)
        pk.fused_logprob_loss_head(hidden, weight, targets, fn, chunk_tokens=chunk_tokens,
                                   impl=impl)[0].backward()

    def forward_only():
        with torch.no_grad():
            pk.linear_logprob_entropy(hidden, weight, targets, impl=impl)

    def ref_forward_only():
        with torch.no_grad():
            pk.linear_logprob_entropy_reference(hidden, weight, targets)

    return {"ref": ref, "recompute": recompute, "loss_head": loss_head, "fwd": forward_only,
            "ref_fwd": ref_forward_only}[design]


def liger_step(kind, inputs):
    hidden, weight, targets, old, adv, w = inputs
    # Liger-Kernel is optional (the `bench` extra, GPU rows only): imported when its rows run
    if kind == "liger_ce":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        loss_mod = LigerFusedLinearCrossEntropyLoss()
        return lambda: loss_mod(weight, hidden, targets).backward()
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
    seqs = 8
    L = hidden.shape[0] // seqs
    loss_mod = LigerFusedLinearGRPOLoss(beta=0.0, use_ref_model=False, chunk_size=1)
    mask = torch.ones(seqs, L, device=hidden.device, dtype=torch.long)
    adv_seq = adv[:seqs].float()
    old_lp = old[:seqs * L].view(seqs, L)

    def step():
        out = loss_mod(hidden[:seqs * L].view(seqs, L, -1), weight, targets[:seqs * L].view(seqs, L),
                       mask, adv_seq, old_per_token_logps=old_lp)
        (out[0] if isinstance(out, tuple) else out).backward()
    return step


# ---------------------------------------------------------------- GPU
def gpu_ceilings():
    """(bf16 GEMM TFLOP/s, device copy GB/s counting read + write), measured here."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t_mm = cuda_time(lambda: a @ b, reps=10)
    x = torch.empty(2 ** 30 // 2, device="cuda", dtype=torch.bfloat16).normal_()
    y = torch.empty_like(x)
    t_cp = cuda_time(lambda: y.copy_(x), reps=10)
    return 2 * 8192 ** 3 / t_mm / 1e12, 2 * x.numel() * 2 / t_cp / 1e9


def cuda_time(fn, reps=3, warmup=1):
    """Median seconds of fn over `reps` runs after `warmup` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def gpu_measure(make_fn, reps):
    """(median seconds, peak extra GiB) of one callable; ('OOM', None) when it does not fit."""
    try:
        fn = make_fn()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
        return cuda_time(fn, reps=reps, warmup=0), peak
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return "OOM", None
    except Exception as exc:  # noqa: BLE001  (a comparison library failing must not end the table)
        return f"ERR {type(exc).__name__}: {str(exc).splitlines()[0][:60]}", None


HEAD_FLOPS = {"ref": 6, "recompute": 8, "loss_head": 6, "liger_ce": 6, "liger_grpo": 6, "fwd": 2,
              "ref_fwd": 2}


def bench_gpu(quick):
    tflops, gbps = gpu_ceilings()
    print(f"# {torch.cuda.get_device_name()}  torch {torch.__version__}  bf16 GEMM {tflops:.0f} "
          f"TFLOP/s  copy {gbps:.0f} GB/s (measured)")
    shapes = [(4096, 3584, 1), (16384, 5120, 4)] if quick else [
        (4096, 3584, 1), (16384, 3584, 1), (8192, 5120, 2), (16384, 5120, 4), (16384, 8192, 8)]
    designs = ["ref", "recompute", "loss_head", "liger_ce", "liger_grpo", "ref_fwd", "fwd"]
    print(f"{'T':>6s} {'H':>5s} {'tp':>2s} {'V_local':>7s} {'design':10s} {'ms':>9s} "
          f"{'peak GiB':>9s} {'TFLOP/s':>8s} {'roofline':>8s}")
    for T, H, tp in shapes:
        V = VOCAB // tp
        inputs = head_inputs(T, H, V, torch.bfloat16, "cuda")
        for d in designs:
            if d == "liger_grpo" and (T, H, tp) != shapes[0]:
                continue  # its torch.compile per shape costs minutes of the lease
            reps = 2 if d.startswith("ref") else 3
            maker = (lambda d=d, x=inputs: liger_step(d, x)) if d.startswith("liger") else \
                (lambda d=d, x=inputs: head_step(d, x))
            t, peak = gpu_measure(maker, reps)
            for p in inputs[:2]:
                p.grad = None
            flops = HEAD_FLOPS[d] * T * H * V
            if isinstance(t, str):
                print(f"{T:6d} {H:5d} {tp:2d} {V:7d} {d:10s} {t}")
                continue
            roof = flops / (tflops * 1e12) / t
            print(f"{T:6d} {H:5d} {tp:2d} {V:7d} {d:10s} {t * 1e3:9.2f} {peak:9.2f} "
                  f"{flops / t / 1e12:8.0f} {roof:8.2f}")
        del inputs
        torch.cuda.empty_cache()
    bench_gpu_elementwise(gbps, quick)


def bench_gpu_elementwise(gbps, quick):
    print(f"\n{'kernel':26s} {'size':>10s} {'impl':7s} {'ms':>8s} {'GB/s':>7s} {'roofline':>8s}")
    for T in ([1 << 20] if quick else [1 << 16, 1 << 20, 1 << 24]):
        lp, old, adv, ref = (torch.randn(T, device="cuda") for _ in range(4))
        w = torch.full((T,), 1.0 / T, device="cuda")
        lp.requires_grad_(True)
        nbytes = 6 * 4 * T  # read lp, old, adv, w, ref; write dlp (fp32)
        for impl in ("torch", "triton"):
            def step(impl=impl):
                pk.ppo_kl_loss(lp, old, adv, w, ref_logprobs=ref, kl_coef=0.1, dual_clip=3.0,
                               impl=impl)[0].backward()
            t = cuda_time(step, reps=20, warmup=3)
            print(f"{'ppo_kl_loss fwd+bwd':26s} {T:10d} {impl:7s} {t * 1e3:8.3f} "
                  f"{nbytes / t / 1e9:7.0f} {nbytes / (gbps * 1e9) / t:8.2f}")
    for N in ([4096] if quick else [1024, 4096, 32768]):
        lengths = torch.randint(256, 2048, (N,))
        cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).cuda()
        T = int(cu[-1])
        args = (torch.rand(N, device="cuda"), torch.randint(0, N // 8, (N,), device="cuda"),
                torch.randint(0, 2, (N,), device="cuda"), cu, torch.ones(T, device="cuda"))
        nbytes = 8 * T  # read mask, write token advantages (fp32)
        for impl in ("torch", "triton"):
            t = cuda_time(lambda impl=impl: pk.token_advantages(*args, scale_by_std=True, impl=impl),
                          reps=20, warmup=3)
            print(f"{'token_advantages':26s} {f'N={N}':>10s} {impl:7s} {t * 1e3:8.3f} "
                  f"{nbytes / t / 1e9:7.0f} {nbytes / (gbps * 1e9) / t:8.2f}")


# ---------------------------------------------------------------- CPU (memory)
def cpu_probe(spec):
    """Run one measurement in this (fresh) process; print a JSON line."""
    design, T, H, V, chunk = spec.split(",")
    T, H, V, chunk = int(T), int(H), int(V), int(chunk)
    impl = "triton" if os.environ.get("TRITON_INTERPRET") == "1" else "torch"
    # warm up on tiny inputs: one-off allocations (thread pools, kernel caches) stay out of the peak
    head_step(design, head_inputs(8, 16, 64, torch.float32, "cpu"), chunk_tokens=4, impl=impl)()
    inputs = head_inputs(T, H, V, torch.float32, "cpu")
    fn = head_step(design, inputs, chunk_tokens=chunk, impl=impl)
    rss = psutil.Process().memory_info().rss
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - max(rss, hwm)
    grads = 4 * (T * H + V * H)
    print(json.dumps({"peak": peak, "grads": grads, "slack": hwm - rss, "seconds": dt, "impl": impl}))


def bench_cpu(quick):
    T, H = 512, 256
    budget = 1 << 21  # logits-chunk elements: chunk_tokens = budget // V keeps the buffer at 8 MiB
    vocabs = [8192, 32768] if quick else [8192, 32768, 131072]
    rows = [("ref", False), ("recompute", False), ("loss_head", False)]
    print(f"# CPU, fp32, T={T} H={H}, chunk budget {budget} logits elements; torch {torch.__version__}")
    print(f"{'V':>7s} {'design':10s} {'impl':7s} {'chunk':>5s} {'peak MiB':>9s} "
          f"{'beyond grads MiB':>16s} {'[T,V] fp32 MiB':>14s} {'s':>7s}")
    for V in vocabs:
        chunk = max(1, budget // V)
        for design, interp in rows:  # the interpreter takes minutes here; its buffers are the same
            env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET="1" if interp else "0")
            out = subprocess.run([sys.executable, __file__, "--_probe", f"{design},{T},{H},{V},{chunk}"],
                                 env=env, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            mib = 2 ** 20
            print(f"{V:7d} {design:10s} {r['impl']:7s} {chunk if design != 'ref' else T:5d} "
                  f"{r['peak'] / mib:9.1f} {(r['peak'] - r['grads']) / mib:16.1f} "
                  f"{T * V * 4 / mib:14.1f} {r['seconds']:7.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="fewer shapes")
    ap.add_argument("--_probe", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._probe:
        return cpu_probe(args._probe)
    if args.device == "cuda":
        return bench_gpu(args.quick)
    return bench_cpu(args.quick)


if __name__ == "__main__":
    main()

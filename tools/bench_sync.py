"""Weight-sync benchmark: Megatron learner -> `bridge.colocated` -> vLLM engine, on this machine.

For the tiny Qwen2.5-VL and a larger synthetic one (hidden 1024, 8 layers, vocab 32k, ~160M
parameters, fp32), measures the sync's wall time and bytes/s with its gather / convert / push
split (and the non-finite pre-check), beside a plain memory copy of the same bytes (`torch.clone` of every learner parameter)
measured in the same process, and prints a table. Each (model, engine) case runs in its own
process with a one-rank learner (TP=1, gloo world of 1):

- `inprocess`: `VllmEngine` in the learner's process (works with a world of 1);
- `process`: `EngineProcess` of tools/engine_host.py, the engine in a child process with its own
  world (tensors cross through shared memory): the cost of a process boundary.

    python tools/bench_sync.py [--models tiny,synthetic] [--engines inprocess,process]
                               [--repeats 3] [--bucket-mib 256] [--work DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from engine_host import EngineProcess  # beside this script (tools/)

from prco_mega.bridge.colocated import sync_weights
from prco_mega.bridge.hf_io import load_hf_config, load_hf_into_megatron
from prco_mega.families.qwen2_5_vl.tiny import (TinySizes, build_tiny_qwen25vl,
                                                save_qwen25vl_processor, tiny_qwen25vl_config)
from prco_mega.learner.parallel import init_parallel
from prco_mega.learner.provider import build_model
from prco_mega.rollout import EngineConfig, VllmEngine
from prco_mega.tiny.tokenizer import (CHAT_TEMPLATE, demo_corpus, special_token_ids,
                                      train_tokenizer)

MODELS = {
    "tiny": {},
    "synthetic": dict(vocab_size=32768, hidden_size=1024, intermediate_size=2816, num_layers=8,
                      num_heads=16, num_kv_heads=4, mrope_section=(8, 12, 12)),
}
"""TinySizes overrides per model (head_dim 64 for the synthetic one: a vLLM CPU kernel size)."""


def make_checkpoint(name: str, out: Path) -> Path:
    """HF checkpoint with the tiny tokenizer/processor; the model's vocab may exceed the
    tokenizer's (ids the tokenizer never produces are still rows the sync must move)."""
    if (out / "model.safetensors").exists():
        return out
    tokenizer = train_tokenizer(demo_corpus(3000, seed=0), vocab_size=505)
    sizes = dataclasses.replace(TinySizes(), **MODELS[name])
    if name == "tiny":
        sizes = dataclasses.replace(sizes, vocab_size=len(tokenizer))
    config = tiny_qwen25vl_config(sizes, special_token_ids(tokenizer))
    build_tiny_qwen25vl(config, seed=0).save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_qwen25vl_processor(out, tokenizer, CHAT_TEMPLATE)
    return out


def clone_bandwidth(params, repeats: int) -> float:
    """Best bytes/s of cloning every parameter once (a plain memory copy of the same bytes)."""
    total = sum(p.numel() * p.element_size() for p in params)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        copies = [p.detach().clone() for p in params]
        best = min(best, time.perf_counter() - t0)
        del copies
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return total / best


def run_case(model: str, engine_kind: str, work: Path, repeats: int, bucket_bytes: int) -> dict:
    """One (model, engine) case in this process; returns its measurements."""
    ckpt = make_checkpoint(model, work / model)
    config = EngineConfig(dtype="float32", max_model_len=512, seed=0)
    Engine = VllmEngine if engine_kind == "inprocess" else EngineProcess
    cfg = load_hf_config(ckpt)
    pg = init_parallel(tp=1, hf_config=cfg)
    engine = Engine(ckpt, config)
    chunks = build_model(cfg, pg)
    load_hf_into_megatron(chunks, ckpt, pg, cfg)
    sync_weights(chunks, pg, cfg, engine, bucket_bytes=bucket_bytes)  # warm-up
    runs = [sync_weights(chunks, pg, cfg, engine, bucket_bytes=bucket_bytes)
            for _ in range(repeats)]
    engine.close()
    best = min(runs, key=lambda s: s.seconds)
    params = [p for c in chunks for p in c.parameters()]
    return dict(model=model, engine=engine_kind, params=sum(p.numel() for p in params),
                bytes=best.bytes, tensors=best.tensors, buckets=best.buckets,
                sync_s=statistics.median(s.seconds for s in runs), best_s=best.seconds,
                gather_s=best.gather_seconds, convert_s=best.convert_seconds,
                push_s=best.push_seconds, check_s=best.check_seconds,
                clone_bps=clone_bandwidth(params, max(repeats, 10)),
                threads=torch.get_num_threads())


def print_table(rows: list[dict]) -> None:
    head = ("model", "engine", "params", "MB", "tensors", "buckets", "sync s (median)",
            "check/gather/convert/push s (best)", "sync GB/s", "clone GB/s", "sync/clone")
    lines = [head]
    for r in rows:
        sync_bps = r["bytes"] / r["best_s"]
        lines.append((r["model"], r["engine"], f"{r['params'] / 1e6:.1f}M",
                      f"{r['bytes'] / 1e6:.1f}", str(r["tensors"]), str(r["buckets"]),
                      f"{r['sync_s']:.3f}",
                      f"{r['check_s']:.3f}/{r['gather_s']:.3f}/{r['convert_s']:.3f}/"
                      f"{r['push_s']:.3f}",
                      f"{sync_bps / 1e9:.3f}", f"{r['clone_bps'] / 1e9:.2f}",
                      f"{sync_bps / r['clone_bps']:.3f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for n, line in enumerate(lines):
        print(" | ".join(c.ljust(w) for c, w in zip(line, widths)))
        if n == 0:
            print("-+-".join("-" * w for w in widths))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny,synthetic")
    p.add_argument("--engines", default="inprocess,process")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bucket-mib", type=float, default=256)
    p.add_argument("--work", default=None, help="checkpoint cache dir (default: a temp dir)")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # model:engine:json (child)
    args = p.parse_args()
    bucket_bytes = int(args.bucket_mib * 2**20)
    if args.case:
        model, engine, out = args.case.split(":", 2)
        result = run_case(model, engine, Path(args.work), args.repeats, bucket_bytes)
        Path(out).write_text(json.dumps(result))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_sync_"))
    rows = []
    for model in args.models.split(","):
        for engine in args.engines.split(","):
            out = work / f"{model}-{engine}.json"
            # a world of one under torchrun's standalone rendezvous: it binds the port it hands
            # the process group and keeps it, so no other job can take it in between
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc_per_node", "1", __file__, "--case", f"{model}:{engine}:{out}",
                            "--work", str(work), "--repeats", str(args.repeats),
                            "--bucket-mib", str(args.bucket_mib)], check=True)
            rows.append(json.loads(out.read_text()))
    print(f"\nbucket {args.bucket_mib:g} MiB, fp32, TP=1, best of {args.repeats} after a warm-up "
          f"(sync s: median); torch threads in the learner process: {rows[0]['threads']}")
    print_table(rows)


if __name__ == "__main__":
    main()

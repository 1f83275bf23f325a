"""`prco-mega eval` throughput at 1 and 2 engines on this machine: items answered per second.

    .venv/bin/python tools/bench_eval.py [--items 64] [--nproc 1 2] [key=value ...]
    .venv/bin/prco-mega bench eval [same arguments]

Simplifications: the tiny random Qwen2.5-VL (built here, no download) and one made-up benchmark
(MMStar's VLMEvalKit TSV layout, drawn 56 px images, `--items` rows) stand in for a checkpoint
and the eight benchmarks. For each world size N it runs `prco-mega eval` under
`torchrun --nproc_per_node N` (N engines of TP=1, each answering its block of the items; engine
settings as `key=value`, one thread each), Observer -> Solver with the image, and prints one row
per world size: items, engine seconds (the slowest engine's, engine start left out, the first
calls' warm-up in), items/s, and the speed-up over one engine. On 2 cores two engines can at
best double the rate; on a busy machine the figures move by 2x between runs.
"""
from __future__ import annotations

import argparse
import base64
import csv
import io
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from prco_mega.tiny.checkpoint import make_tiny_checkpoint
from prco_mega.tiny.tokenizer import demo_corpus

ROOT = Path(__file__).resolve().parents[1]
RATE = re.compile(r"answered (\d+) items in ([\d.]+) s on (\d+) engine\(s\): ([\d.]+) items/s")


def drawn_png(seed: int, size: int = 56) -> str:
    """Base64 PNG of random 14 px blocks (56 px: 4 image tokens)."""
    blocks = np.random.default_rng(seed).integers(0, 256, (size // 14, size // 14, 3), np.uint8)
    out = io.BytesIO()
    Image.fromarray(np.kron(blocks, np.ones((14, 14, 1), np.uint8))).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def write_benchmark(root: Path, items: int) -> Path:
    """`items` made-up MMStar rows in VLMEvalKit's flat folder (`root/LMUData/MMStar.tsv`)."""
    path = root / "LMUData" / "MMStar.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"index": k, "question": f"How many blocks of colour {k % 7} are there?",
             "A": "1", "B": "2", "C": "3", "D": "4", "answer": "ABCD"[k % 4],
             "category": "math", "l2_category": "numeric", "image": drawn_png(k)}
            for k in range(items)]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return root


def run_world(nproc: int, model: Path, data: Path, out: Path, overrides: list[str],
              max_tokens: int) -> dict:
    """One eval run in a world of `nproc` ranks; its throughput line, parsed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "-m", "prco_mega.cli", "eval", "--model", str(model), "--data-root", str(data),
           "--benchmarks", "mmstar", "--out", str(out), "--chunk-size", "16",
           "--observer-max-tokens", str(max_tokens), "--solver-max-tokens", str(max_tokens),
           "dtype=float32", "max_model_len=1024", *overrides]
    # One thread per engine: a lone engine given both cores ran ~8x slower here (the vLLM CPU
    # worker's threads contend with the rest of the machine), which would flatter two engines.
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "VLLM_LOGGING_LEVEL": "ERROR", "TOKENIZERS_PARALLELISM": "false"}
    text = subprocess.run(cmd, check=True, env=env, cwd=ROOT, capture_output=True,
                          text=True).stdout
    found = RATE.search(text)
    if found is None:
        raise RuntimeError(f"no throughput line in the output of {' '.join(cmd)}:\n{text[-2000:]}")
    return {"engines": int(found[3]), "items": int(found[1]), "seconds": float(found[2]),
            "items/s": float(found[4])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-tokens", type=int, default=32,
                        help="Observer and Solver token limits (the random model fills them)")
    parser.add_argument("overrides", nargs="*", help="engine settings key=value")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        model = make_tiny_checkpoint(base / "tiny", demo_corpus(3000, seed=0), seed=0,
                                     init_std=0.2)
        data = write_benchmark(base / "data", args.items)
        rows = [run_world(n, model, data, base / f"out{n}", args.overrides, args.max_tokens)
                for n in args.nproc]
    first = rows[0]["items/s"]
    print(f"prco-mega eval, tiny Qwen2.5-VL, {args.items} items, Observer -> Solver, "
          f"{args.max_tokens} tokens each (engine start left out)")
    print(f"{'engines':>8} {'items':>6} {'seconds':>8} {'items/s':>8} {'speed-up':>9}")
    for r in rows:
        print(f"{r['engines']:>8} {r['items']:>6} {r['seconds']:>8.2f} {r['items/s']:>8.2f} "
              f"{r['items/s'] / first:>8.2f}x")


if __name__ == "__main__":
    main()

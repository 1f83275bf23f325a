"""4 ranks: HF -> Megatron (TP=2, PP=2) -> HF, and the way back at other layouts.

Converts `--src` (fp32) and `--src-bf16` to Megatron distributed checkpoints at TP=2 x PP=2 (a
stale `.tmp` of an interrupted earlier conversion is in the way of the first), verifies the
fp32 one (transformers vs Megatron log-probs), and exports them back to Hugging Face at TP=2 x
PP=2 (small files: several shards per stage), and the fp32 one also at TP=1 x PP=2 x VPP=2
(DP=2). The test compares the outputs tensor by tensor.

Usage: torchrun --nproc_per_node 4 convert_roundtrip.py --src HF --src-bf16 HF --work DIR --out J
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch.distributed as dist

from prco_mega.bridge.convert import hf_to_megatron, megatron_to_hf
from prco_mega.bridge.convert_verify import verify_conversion

SHARD_BYTES = 400 * 1024  # the tiny model is ~3 MB: forces several files per pipeline stage


def timed(res: dict, key: str, fn, *args, **kwargs):
    t0 = time.time()
    out = fn(*args, **kwargs)
    res[f"{key}_s"] = round(time.time() - t0, 2)
    return out


def main(src: Path, src_bf16: Path, work: Path, out_path: str) -> None:
    dist.init_process_group("gloo")
    res: dict = {}
    stale = work / "mcore.tmp"
    if dist.get_rank() == 0:
        stale.mkdir(parents=True)
        (stale / "half_written.distcp").write_text("interrupted")
    dist.barrier()
    timed(res, "hf2mcore", hf_to_megatron, src, work / "mcore", tp=2, pp=2)
    res["verify_diff"] = timed(res, "verify", verify_conversion, src, work / "mcore", 2, 2)
    timed(res, "mcore2hf", megatron_to_hf, work / "mcore", work / "hf", 2, 2,
          shard_bytes=SHARD_BYTES)
    timed(res, "mcore2hf_vpp", megatron_to_hf, work / "mcore", work / "hf_tp1_pp2_vpp2", 1, 2,
          vpp=2)
    timed(res, "bf16", _bf16_round_trip, src_bf16, work)
    if dist.get_rank() == 0:
        Path(out_path).write_text(json.dumps(res, indent=1))


def _bf16_round_trip(src: Path, work: Path) -> None:
    hf_to_megatron(src, work / "mcore_bf16", tp=2, pp=2)
    megatron_to_hf(work / "mcore_bf16", work / "hf_bf16", 2, 2)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    for name in ("--src", "--src-bf16", "--work", "--out"):
        p.add_argument(name, required=True)
    a = p.parse_args()
    main(Path(a.src), Path(a.src_bf16), Path(a.work), a.out)

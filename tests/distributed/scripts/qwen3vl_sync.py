"""2 ranks hosting vLLM (`external_launcher`: `--engine-tp 1` an engine per rank, 2 one engine
over both) and a Megatron Qwen3-VL learner at TP=2 -> `bridge.colocated` -> every rank's engine.

The learner loads the tiny Qwen3-VL checkpoint and is perturbed (every parameter moves, QK-norm and
deepstack mergers included); the engines start on the original checkpoint. After the sync each
engine's greedy tokens and log-probs for an image+text prompt are recorded, with transformers'
greedy tokens from the learner's exported weights and the learner's own TP=2 log-probs of that
sequence. Rank 0 writes the JSON. Helpers are the Qwen2.5-VL sync script's (`bridge_sync_tp2`).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist

T0 = time.time()

import bridge_sync_tp2 as bs  # noqa: E402  (same directory)
from tiny_world import shared_checkpoint  # noqa: E402


def hf_greedy(model_dir: Path, processor, text: str, image) -> tuple[list[int], dict]:
    from transformers import Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=bs.MAX_NEW,
                             temperature=None, top_p=None, top_k=None)
    return out[0, inputs["input_ids"].shape[1]:].tolist(), inputs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--engine-tp", type=int, default=1,
                   help="1: an engine per rank; 2: one engine over both ranks")
    args = p.parse_args()
    dist.init_process_group("gloo")
    rank, work = dist.get_rank(), Path(args.out).parent
    from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable

    ensure_torchvision_importable()
    from transformers import AutoProcessor

    from prco_mega.bridge.hf_io import load_hf_config, load_hf_into_megatron
    from prco_mega.learner.parallel import init_parallel
    from prco_mega.learner.provider import build_model
    from prco_mega.rollout import EngineConfig, VllmEngine

    ckpt, res = work / "tiny-qwen3vl", {}
    shared_checkpoint(ckpt, 3000, init_std=bs.INIT_STD, family="qwen3_vl")
    cfg = load_hf_config(ckpt)
    pg = init_parallel(tp=2, hf_config=cfg)
    chunks = build_model(cfg, pg)
    engine = VllmEngine(ckpt, EngineConfig(dtype="float32", max_model_len=512, seed=0,
                                           tensor_parallel_size=args.engine_tp))
    res["engine_start_s"] = engine.start_seconds
    for c in chunks:
        c.eval()
    load_hf_into_megatron(chunks, ckpt, pg, cfg)
    bs.perturb(chunks, pg, cfg.model_type)
    processor, image = AutoProcessor.from_pretrained(ckpt), bs.make_image()
    bs.sync_and_compare(chunks, pg, cfg, ckpt, engine, processor, image, work, res,
                        hf_greedy=hf_greedy)
    if rank == 0:
        res["checkpoint_tensors"] = len(engine.shapes)
        res["total_s"] = time.time() - T0
        Path(args.out).write_text(json.dumps(res, indent=1))
    dist.barrier()  # no engine.close(): vLLM's shutdown destroys the shared default group


if __name__ == "__main__":
    main()

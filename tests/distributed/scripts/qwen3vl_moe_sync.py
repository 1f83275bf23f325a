"""2 ranks hosting vLLM (`external_launcher`: `--engine-tp 1` an engine per rank, 2 one engine
over both, `--engine-ep` that engine with expert parallel) and a Megatron Qwen3-VL-MoE learner
at expert parallel 2 (`--tp`, `--ep`) -> `bridge.colocated` -> every rank's engine.

The learner loads the tiny Qwen3-VL-MoE checkpoint and is perturbed (every parameter moves, each
expert its own way); the engines start on the original checkpoint. First (engine TP=1 only) a sync
with the CPU expert repack switched off (`VllmEngine.repack_experts`), its greedy tokens recorded;
then the same sync with it on: each engine's greedy tokens and log-probs for an image+text prompt, with
transformers' greedy tokens from the learner's exported weights and the learner's own log-probs
of that sequence, and every rank's sync statistics (with engine expert parallel: the experts each
engine rank holds and how often the CPU expert-map fix ran). At engine TP 2, last, the same at
learner TP 2 / expert-TP 2 / EP 1 (each rank holds half the rows of every expert), whose expert
placement is the engine's without expert parallel and not the one with it. Rank 0 writes the JSON.
"""
from __future__ import annotations

import argparse
import json
import time
import zlib
from pathlib import Path

import torch
import torch.distributed as dist

T0 = time.time()

import bridge_sync_tp2 as bs  # noqa: E402  (same directory)
from tiny_world import shared_checkpoint  # noqa: E402

from prco_mega.platform.megatron_cpu import install_megatron_cpu_compat  # noqa: E402


def hf_greedy(model_dir: Path, processor, text: str, image) -> tuple[list[int], dict]:
    from transformers import Qwen3VLMoeForConditionalGeneration

    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(model_dir,
                                                               dtype=torch.float32).eval()
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=bs.MAX_NEW,
                             temperature=None, top_p=None, top_k=None)
    return out[0, inputs["input_ids"].shape[1]:].tolist(), inputs


@torch.no_grad()
def perturb(chunks, pg, model_type: str) -> None:
    """p += PERTURB * std(p) * noise; the noise of a shard depends on the ranks holding other
    parts (TP, or for experts expert-TP and expert parallel), so replicas move alike and every
    expert moves its own way."""
    from prco_mega.bridge.hf_io import megatron_params
    from prco_mega.bridge.mapping import is_expert, tp_split_dim

    for chunk in chunks:
        for name, p in megatron_params(chunk):
            expert = is_expert(name, model_type)
            group = pg.expt_tp if expert else pg.tp
            split = tp_split_dim(name, model_type) is not None and group.size() > 1
            seed = (zlib.crc32(name.encode()) + (1000 * group.rank() if split else 0)
                    + (7919 * pg.ep.rank() if expert else 0))
            gen = torch.Generator().manual_seed(seed)
            spread = float(p.float().std()) if p.numel() > 1 else 0.0
            p.add_(bs.PERTURB * (spread or 1.0) * torch.randn(p.shape, generator=gen))


def etp2_phase(cfg, ckpt: Path, work: Path, engine, processor, image, res: dict) -> None:
    """Rebuild the learner at TP 2, expert-TP 2, EP 1, perturb, sync; the engine must then
    generate what transformers generates with that learner's export."""
    from prco_mega.bridge.colocated import sync_weights
    from prco_mega.bridge.hf_io import export_megatron_to_hf, load_hf_into_megatron
    from prco_mega.learner.parallel import destroy_parallel, init_parallel
    from prco_mega.learner.provider import build_model

    destroy_parallel()
    pg = init_parallel(tp=2, hf_config=cfg, ep=1, etp=2)
    chunks = build_model(cfg, pg, config_overrides={"sequence_parallel": True})
    for c in chunks:
        c.eval()
    load_hf_into_megatron(chunks, ckpt, pg, cfg)
    perturb(chunks, pg, cfg.model_type)
    stats = sync_weights(chunks, pg, cfg, engine, bucket_bytes=bs.BUCKET_BYTES)
    res["etp2_stats"] = bs.gathered(stats.__dict__)
    export_megatron_to_hf(chunks, work / "learner_hf_etp2", pg, cfg, copy_files_from=ckpt)
    gen = bs.host_generate(engine, processor, image)
    res["etp2_after"] = bs.gathered(gen["tokens"])
    if dist.get_rank() == 0:
        res["etp2_hf"], _ = hf_greedy(work / "learner_hf_etp2", processor, gen["text"], image)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--engine-tp", type=int, default=1,
                   help="1: an engine per rank; 2: one engine over both ranks")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--ep", type=int, default=2)
    p.add_argument("--engine-ep", action="store_true",
                   help="the engine over both ranks with expert parallel (engine TP 2)")
    args = p.parse_args()
    dist.init_process_group("gloo")
    install_megatron_cpu_compat()
    rank, work = dist.get_rank(), Path(args.out).parent
    from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable

    ensure_torchvision_importable()
    from transformers import AutoProcessor

    from prco_mega.bridge.colocated import sync_weights
    from prco_mega.bridge.hf_io import load_hf_config, load_hf_into_megatron
    from prco_mega.learner.parallel import init_parallel
    from prco_mega.learner.provider import build_model
    from prco_mega.rollout import EngineConfig, VllmEngine, vllm_cpu_moe

    ckpt, res = work / "tiny-qwen3vl-moe", {}
    shared_checkpoint(ckpt, 3000, init_std=bs.INIT_STD, family="qwen3_vl_moe")
    cfg = load_hf_config(ckpt)
    pg = init_parallel(tp=args.tp, hf_config=cfg, ep=args.ep, etp=1)
    chunks = build_model(cfg, pg, config_overrides={"sequence_parallel": args.tp > 1})
    engine = VllmEngine(ckpt, EngineConfig(dtype="float32", max_model_len=512, seed=0,
                                           tensor_parallel_size=args.engine_tp,
                                           enable_expert_parallel=args.engine_ep))
    res["engine_start_s"] = engine.start_seconds
    res["held_experts"] = bs.gathered(engine.held_experts)
    res["repack_default"] = bs.gathered(engine.repack_experts)
    for c in chunks:
        c.eval()
    load_hf_into_megatron(chunks, ckpt, pg, cfg)
    perturb(chunks, pg, cfg.model_type)
    processor, image = AutoProcessor.from_pretrained(ckpt), bs.make_image()
    if args.engine_tp == 1:
        # stock vLLM 0.32 CPU behaviour (at engine TP=2 the stock reload fails outright on the
        # padded expert width: `rollout.vllm_cpu_moe`)
        engine.repack_experts = False
        sync_weights(chunks, pg, cfg, engine, bucket_bytes=bs.BUCKET_BYTES)
        res["no_repack"] = bs.gathered(bs.host_generate(engine, processor, image)["tokens"])
        engine.repack_experts = True
    bs.sync_and_compare(chunks, pg, cfg, ckpt, engine, processor, image, work, res,
                        hf_greedy=hf_greedy)
    res["repacked_layers"] = bs.gathered(vllm_cpu_moe.repacked_layers())
    if args.engine_tp == 2:
        etp2_phase(cfg, ckpt, work, engine, processor, image, res)
    res["remapped_calls"] = bs.gathered(vllm_cpu_moe.remapped_calls())
    if rank == 0:
        res["checkpoint_tensors"] = len(engine.shapes)
        res["checkpoint_bytes"] = sum(int(torch.Size(s).numel()) * 4
                                      for s in engine.shapes.values())
        res["total_s"] = time.time() - T0
        Path(args.out).write_text(json.dumps(res, indent=1))
    dist.barrier()  # no engine.close(): vLLM's shutdown destroys the shared default group


if __name__ == "__main__":
    main()

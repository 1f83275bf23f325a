"""2 ranks, each hosting its own vLLM engine (`external_launcher`, TP=1: two engines) and one half
of a Megatron learner at TP=2 -> `bridge.colocated` -> every rank's engine.

The learner loads the tiny HF checkpoint and is then perturbed (every parameter moves); the
engines start on the ORIGINAL checkpoint. After the sync each engine's greedy tokens and log-probs
for an image+text prompt are recorded, with the tokens of Hugging Face transformers' greedy
generation from the learner's weights (exported with `hf_io`) and the learner's own TP=2 log-probs
of that sequence (`sequence_logprobs`), and what each rank received. Then a NaN in one TP shard on
rank 1 must make every rank refuse the next sync. Last, the same at PP=2 (greedy tokens): each
stage receives the other's layers. Rank 0 writes the JSON.
"""
from __future__ import annotations

import argparse
import json
import time
import zlib
from pathlib import Path

import torch
import torch.distributed as dist
from tiny_world import shared_checkpoint

T0 = time.time()
INIT_STD = 0.2  # clear argmax margins, as in tests/vllm (greedy tokens compare the engines)
PERTURB = 0.3
MAX_NEW = 8
BUCKET_BYTES = 96 * 1024  # far below one layer (~0.8 MB): forces many buckets and fused splits


def make_image():
    import numpy as np
    from PIL import Image

    from prco_mega.data.images import normalize_image

    rng = np.random.default_rng(7)
    return normalize_image(Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)))


def chat(processor, question: str) -> str:
    content = [{"type": "image"}, {"type": "text", "text": question}]
    return processor.apply_chat_template([{"role": "user", "content": content}],
                                         tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def perturb(chunks, pg, model_type: str) -> None:
    """p += PERTURB * std(p) * noise; replicated parameters get the same noise on every TP rank."""
    from prco_mega.bridge.hf_io import megatron_params
    from prco_mega.bridge.mapping import tp_split_dim

    for chunk in chunks:
        for name, p in megatron_params(chunk):
            split = tp_split_dim(name, model_type) is not None and pg.tp.size() > 1
            seed = zlib.crc32(name.encode()) + (1000 * pg.tp.rank() if split else 0)
            gen = torch.Generator().manual_seed(seed)
            spread = float(p.float().std()) if p.numel() > 1 else 0.0
            p.add_(PERTURB * (spread or 1.0) * torch.randn(p.shape, generator=gen))


def learner_logprobs(chunks, pg, cfg, seq: dict) -> list[float]:
    """Learner log-probs (TP=2 forward) of the response tokens of `seq`, on every rank."""
    from prco_mega.learner.train_step import sequence_logprobs

    ids = torch.tensor(seq["prompt_ids"] + seq["response"])
    lp = sequence_logprobs(chunks, ids, cfg, pg=pg,
                           pixel_values=torch.tensor(seq["pixel_values"]),
                           image_grid_thw=torch.tensor(seq["grid_thw"]))
    return lp[len(seq["prompt_ids"]):].tolist()


def host_generate(engine, processor, image) -> dict:
    from prco_mega.rollout import GenerationRequest, SamplingSettings

    text = chat(processor, "How many red circles are there?")
    greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=MAX_NEW)
    (gen,), = engine.generate([GenerationRequest(prompt=text, images=[image])], greedy)
    return {"text": text, "tokens": gen.token_ids, "logprobs": gen.logprobs,
            "prompt_ids": gen.prompt_ids}


def hf_greedy(model_dir: Path, processor, text: str, image) -> tuple[list[int], dict]:
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32).eval()
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW, temperature=None,
                             top_p=None, top_k=None)
    return out[0, inputs["input_ids"].shape[1]:].tolist(), inputs


def sync_and_compare(chunks, pg, cfg, ckpt: Path, engine, processor, image, work: Path,
                     res: dict, hf_greedy=hf_greedy) -> None:
    """The engine's greedy tokens before and after `sync_weights` (every rank), the sync's
    statistics, transformers' greedy tokens with the learner's exported weights (`hf_greedy` of
    the family) and the learner's own log-probs of the engine's sequence, into `res`."""
    from prco_mega.bridge.hf_io import export_megatron_to_hf
    from prco_mega.bridge.colocated import sync_weights

    res["before"] = gathered(host_generate(engine, processor, image)["tokens"])
    t = time.time()
    stats = sync_weights(chunks, pg, cfg, engine, bucket_bytes=BUCKET_BYTES)
    res["sync_s"] = time.time() - t
    res["stats"] = gathered({**stats.__dict__, "bytes_per_second": stats.bytes_per_second})
    export_megatron_to_hf(chunks, work / "learner_hf", pg, cfg, copy_files_from=ckpt)
    after = host_generate(engine, processor, image)
    res["after"], res["vllm_logprobs"] = gathered(after["tokens"]), gathered(after["logprobs"])
    seq = [None]
    if dist.get_rank() == 0:
        res["hf"], inputs = hf_greedy(work / "learner_hf", processor, after["text"], image)
        res["prompt_ids_equal_hf"] = inputs["input_ids"][0].tolist() == after["prompt_ids"]
        seq = [{"prompt_ids": after["prompt_ids"], "response": after["tokens"],
                "pixel_values": inputs["pixel_values"].tolist(),
                "grid_thw": inputs["image_grid_thw"].tolist()}]
    dist.broadcast_object_list(seq, src=0)
    res["learner_logprobs"] = learner_logprobs(chunks, pg, cfg, seq[0])


def nan_refusal(chunks, pg, cfg, engine) -> str:
    """Put one NaN into rank 1's shard of a fused QKV weight; the sync must refuse on every rank."""
    from prco_mega.bridge.colocated import sync_weights

    if dist.get_rank() == 1:
        qkv = chunks[0].language_model.decoder.layers[1].self_attention.linear_qkv.weight
        qkv.data[0, 0] = float("nan")
    try:
        sync_weights(chunks, pg, cfg, engine, bucket_bytes=BUCKET_BYTES)
    except ValueError as exc:
        return str(exc)
    return ""


def gathered(value):
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def pp2_phase(cfg, ckpt: Path, work: Path, engine, processor, image, res: dict) -> None:
    """Rebuild the learner at PP=2 (each stage sends its layers to the other), perturb, sync;
    each engine must then generate what transformers generates with that learner's export."""

    from prco_mega.bridge.hf_io import export_megatron_to_hf, load_hf_into_megatron
    from prco_mega.bridge.colocated import sync_weights
    from prco_mega.learner.provider import build_model
    from prco_mega.learner.parallel import destroy_parallel, init_parallel

    destroy_parallel()
    pg = init_parallel(pp=2, hf_config=cfg)
    chunks = build_model(cfg, pg)
    for c in chunks:
        c.eval()
    load_hf_into_megatron(chunks, ckpt, pg, cfg)
    perturb(chunks, pg, cfg.model_type)
    stats = sync_weights(chunks, pg, cfg, engine, bucket_bytes=BUCKET_BYTES)
    res["pp2_stats"] = gathered(stats.__dict__)
    export_megatron_to_hf(chunks, work / "learner_hf_pp2", pg, cfg, copy_files_from=ckpt)
    gen = host_generate(engine, processor, image)
    res["pp2_after"] = gathered(gen["tokens"])
    if dist.get_rank() == 0:
        res["pp2_hf"], _ = hf_greedy(work / "learner_hf_pp2", processor, gen["text"], image)


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
    from prco_mega.learner.mismatch import logprob_mismatch
    from prco_mega.learner.provider import build_model
    from prco_mega.learner.parallel import init_parallel

    from prco_mega.rollout import EngineConfig, VllmEngine

    ckpt, res = work / "tiny", {}
    shared_checkpoint(ckpt, 3000, init_std=INIT_STD)
    cfg = load_hf_config(ckpt)
    pg = init_parallel(tp=2, hf_config=cfg)
    chunks = build_model(cfg, pg)
    # every rank builds its engine at the same moment (vLLM's start-up is collective), after the
    # learner as a run does (vLLM traces its model under the CPU layer's torch function mode)
    engine = VllmEngine(ckpt, EngineConfig(dtype="float32", max_model_len=512, seed=0,
                                           tensor_parallel_size=args.engine_tp))
    res["engine_start_s"] = engine.start_seconds
    for c in chunks:
        c.eval()
    load_hf_into_megatron(chunks, ckpt, pg, cfg)
    perturb(chunks, pg, cfg.model_type)
    processor, image = AutoProcessor.from_pretrained(ckpt), make_image()
    sync_and_compare(chunks, pg, cfg, ckpt, engine, processor, image, work, res)
    if rank == 0:
        n = len(res["after"][0])
        m = logprob_mismatch(torch.tensor(res["learner_logprobs"]),
                             torch.tensor(res["vllm_logprobs"][0]), torch.ones(n),
                             torch.ones(n, dtype=torch.int8))
        res["mismatch"] = {k: float(v) for k, v in m.items()}
    res["nan_errors"] = gathered(nan_refusal(chunks, pg, cfg, engine))
    res["after_nan"] = gathered(host_generate(engine, processor, image)["tokens"])
    pp2_phase(cfg, ckpt, work, engine, processor, image, res)
    if rank == 0:
        res["checkpoint_tensors"] = len(engine.shapes)
        res["checkpoint_bytes"] = sum(int(torch.Size(s).numel()) * 4 for s in engine.shapes.values())
        res["total_s"] = time.time() - T0
        Path(args.out).write_text(json.dumps(res, indent=1))
    # no engine.close(): vLLM's shutdown destroys the default group the ranks still share
    dist.barrier()


if __name__ == "__main__":
    main()

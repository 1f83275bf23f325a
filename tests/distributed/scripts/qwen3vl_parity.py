"""2 ranks: Megatron Qwen3-VL vs Hugging Face on the same tiny checkpoint, at several layouts.

Writes (rank 0) a JSON with, per layout: max |log-prob difference| against HF for a right-padded
batch, the same sequences packed, and a text-only micro-batch; weight-gradient relative error
(TP=1 also with full activation recompute); whether HF -> Megatron -> HF export is bit-exact;
whether our positions equal HF's `get_rope_index`; the error a deepstack-splitting layout raises.
The batch: two images in one sequence (one of them 6 x 10 patches, 3 x 5 merged tokens), one
image in another, and a text-only sequence.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist

T0 = time.time()

import qwen_parity as qp  # noqa: E402  (the Qwen2.5-VL script's helpers, same directory)

from prco_mega.platform.megatron_cpu import install_megatron_cpu_compat  # noqa: E402

SEQUENCES = [
    [(5, None), (0, (1, 4, 4)), (7, None)],
    [(3, None), (0, (1, 6, 10)), (2, None), (0, (1, 4, 6)), (4, None)],
    [(9, None)],
]
RECOMPUTE = {"recompute_granularity": "full", "recompute_method": "uniform",
             "recompute_num_layers": 1}


def hf_grads(hf, batch) -> dict:
    """d(sum of token log-probs)/d(weight) of the HF model, by the mapping table's names."""
    from prco_mega.bridge.mapping import hub_name

    hf.zero_grad()
    with torch.enable_grad():
        sum(lp.sum() for lp in qp.hf_reference(hf, batch, keep_graph=True)).backward()
    return {hub_name(n, "qwen3_vl"): p.grad.detach().cpu() for n, p in hf.named_parameters()}


def grad_diff(chunks, pg, hf_cfg, batch, ref_grads) -> tuple[float, str]:
    """(max over parameters of max|grad - grad_HF| / max|grad_HF|, the worst one's name) for the
    padded batch's summed log-probs. QK-norm gradients are first summed over TP, as Megatron's
    `finalize_model_grads` does (each TP rank holds the part from its own heads)."""
    from prco_mega.bridge.hf_io import _gather_tp, layer_offset, mapping_args, megatron_params
    from prco_mega.bridge.mapping import megatron_shards_to_hf, tp_split_dim
    from prco_mega.learner.mrope import mrope_position_ids

    ids, mask = qp.padded(batch, pad_id=hf_cfg.text_config.pad_token_id)
    pos = mrope_position_ids(ids, batch["grid_thw"], hf_cfg.image_token_id,
                             hf_cfg.vision_config.spatial_merge_size, attention_mask=mask)
    logits = qp.run_pipeline(chunks, pg, ids, pos, batch)
    lp = qp.vocab_parallel_logprobs_of(logits[:, :-1], ids[:, 1:], pg.tp)
    (lp * mask[:, 1:]).sum().backward()
    args, worst = mapping_args(hf_cfg), (0.0, "")
    for chunk in chunks:
        for name, p in megatron_params(chunk):
            grad = p.grad
            if "q_layernorm" in name or "k_layernorm" in name:
                dist.all_reduce(grad, group=pg.tp)
            shards = _gather_tp(grad, tp_split_dim(name, args["model_type"]), pg.tp)
            for k, g in megatron_shards_to_hf(name, shards, layer_offset=layer_offset(chunk),
                                              **args).items():
                ref = ref_grads[k]
                worst = max(worst, (float((g - ref).abs().max() / ref.abs().max()), k))
    for chunk in chunks:
        chunk.zero_grad()
    return worst


def text_only_diff(chunks, pg, hf_cfg, batch, ref) -> float | None:
    """The text-only sequence as a micro-batch of its own (no pixels), with a backward pass."""
    ids = torch.tensor([batch["rows"][2]])
    pos = torch.arange(ids.shape[1]).expand(3, 1, -1)
    empty = {"pixel_values": torch.zeros(0, batch["pixel_values"].shape[1]),
             "grid_thw": torch.zeros(0, 3, dtype=torch.long)}
    logits = qp.run_pipeline(chunks, pg, ids, pos, empty)
    if logits is None:
        return None
    lp = qp.vocab_parallel_logprobs_of(logits[0, :-1], ids[0, 1:], pg.tp)
    lp.sum().backward()
    return float((lp.detach() - ref[2]).abs().max())


def build(hf_cfg, name: str, overrides: dict | None = None):
    from prco_mega.learner.parallel import init_parallel
    from prco_mega.learner.provider import build_model

    tp, pp = (2, 1) if name.startswith("tp2") else (1, 2) if name.startswith("pp2") else (1, 1)
    vpp = 2 if "-vpp2" in name else None
    pg = init_parallel(tp, pp, vpp, hf_config=hf_cfg)
    return pg, build_model(hf_cfg, pg, vpp=vpp, config_overrides=overrides)


def check_layout(name: str, ckpt: Path, hf, batch, ref, ref_grads, work: Path) -> dict:
    from prco_mega.bridge.hf_io import export_megatron_to_hf, load_hf_into_megatron
    from prco_mega.learner.parallel import destroy_parallel

    if name == "tp1-recompute":
        return merge_ranks(recompute_grads(ckpt, hf, batch, ref_grads))
    sp = name.endswith("-sp")
    pg, chunks = build(hf.config, name, {"sequence_parallel": sp})
    for c in chunks:
        c.eval()
    load_hf_into_megatron(chunks, ckpt, pg, hf.config)
    with torch.no_grad():
        result = {"diffs": qp.megatron_diffs(chunks, pg, hf.config, batch, ref,
                                             multiple=2 if sp else 1)}
    if not sp:
        if pg.pp.size() == 1:
            result["grad_rel_diff"], result["grad_worst"] = grad_diff(chunks, pg, hf.config,
                                                                       batch, ref_grads)
        result["text_only_diff"] = text_only_diff(chunks, pg, hf.config, batch, ref)
    if name in ("tp2", "pp2"):
        out = export_megatron_to_hf(chunks, work / f"export-{name}", pg, hf.config)
        if dist.get_rank() == 0:
            result["roundtrip_bit_exact"] = qp.exports_bit_exact(ckpt, out)
    destroy_parallel()
    return merge_ranks(result)


def recompute_grads(ckpt: Path, hf, batch, ref_grads) -> dict:
    """TP=1 with full activation recompute: the deepstack layers re-run in the backward."""
    from prco_mega.bridge.hf_io import load_hf_into_megatron
    from prco_mega.learner.parallel import destroy_parallel

    pg, chunks = build(hf.config, "tp1", RECOMPUTE)
    load_hf_into_megatron(chunks, ckpt, pg, hf.config)
    diff, worst = grad_diff(chunks, pg, hf.config, batch, ref_grads)
    result = {"diffs": {}, "grad_rel_diff": diff, "grad_worst": worst}
    destroy_parallel()
    return result


def merge_ranks(result: dict) -> dict:
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, result)
    merged = {"diffs": {}}
    for r in gathered:
        merged["diffs"].update(r["diffs"])
        merged.update({k: v for k, v in r.items() if k != "diffs" and v is not None})
    return merged


def placement_error(hf_cfg) -> str | None:
    """The message of building PP=2 x 2 virtual stages: 1 layer per chunk, 2 deepstack levels."""
    from prco_mega.learner.parallel import destroy_parallel

    try:
        build(hf_cfg, "pp2-vpp2")
    except ValueError as err:
        return str(err)
    finally:
        destroy_parallel()
    return None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layouts", default="tp1,tp2,pp2")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    dist.init_process_group("gloo")
    install_megatron_cpu_compat()
    from transformers import Qwen3VLForConditionalGeneration

    from prco_mega.tiny.checkpoint import save_tiny_model

    work = Path(args.out).parent
    ckpt = work / "tiny-qwen3vl"
    if dist.get_rank() == 0:
        save_tiny_model(ckpt, "qwen3_vl", seed=3)
    dist.barrier()
    hf = Qwen3VLForConditionalGeneration.from_pretrained(str(ckpt)).float().eval()
    batch = qp.make_batch(hf.config, sequences=SEQUENCES)
    ref, ref_grads = qp.hf_reference(hf, batch), hf_grads(hf, batch)
    results = {"import_s": time.time() - T0, "mrope_equals_hf": qp.mrope_matches_hf(hf, batch)}
    for layout in args.layouts.split(","):
        t = time.time()
        results[layout] = check_layout(layout, ckpt, hf, batch, ref, ref_grads, work)
        results[layout]["seconds"] = time.time() - t
    results["placement_error"] = placement_error(hf.config)
    results["total_s"] = time.time() - T0
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

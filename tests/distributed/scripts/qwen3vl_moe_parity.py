"""2 ranks: Megatron Qwen3-VL-MoE vs Hugging Face on the same tiny checkpoint, at several layouts.

Per layout (`LAYOUTS`: TP, PP, EP, expert-TP) each data-parallel rank takes its own batch (rank 0
the Qwen3-VL parity batch: two images in one sequence, one in another, a text-only sequence;
rank 1 another one with images), so under expert parallel every rank's tokens reach the other
rank's experts. Writes (rank 0) a JSON with, per layout: max |log-prob difference| against
transformers for the right-padded batch and the same sequences packed; the weight gradients of the
summed log-probs (reduced over data parallel, as DDP would) against transformers' single-process
gradients of the same batches (max relative error of every weight, of the experts, of the
routers); whether HF -> Megatron -> HF export is bit-exact. With --convert, the round trips
through the converter's Megatron distributed checkpoints (`converter_round_trip`).
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
from qwen3vl_parity import SEQUENCES  # noqa: E402

from prco_mega.platform.megatron_cpu import install_megatron_cpu_compat  # noqa: E402

SEQUENCES_B = [
    [(4, None), (0, (1, 6, 4)), (6, None)],
    [(11, None)],
    [(2, None), (0, (1, 4, 4)), (3, None)],
]
LAYOUTS = {  # name: (tp, pp, ep, expert tp or None = tp, sequence parallel)
    "ep1": (1, 1, 1, None, False), "ep2": (1, 1, 2, None, False), "tp2": (2, 1, 1, None, False),
    "tp2-sp": (2, 1, 1, None, True), "tp2-ep2-sp": (2, 1, 2, 1, True),
    "pp2": (1, 2, 1, None, False),
}
EXPORTED = ("ep2", "tp2", "tp2-ep2-sp", "pp2")
"""Layouts whose HF -> Megatron -> HF export is compared with the source."""
FORWARD_ONLY = ("tp2", "pp2")
"""No gradients: Megatron trains MoE under TP only with sequence parallel (without it each TP
rank's copy of a token reaches the experts, whose gradients then count it TP times), and the
pipeline layout has no backward schedule here."""


def per_expert(grads: dict, model_type: str, moe_ffn: int) -> dict:
    """`grads` with each fused expert tensor (transformers' layout) split into the mapping's
    per-expert names."""
    from prco_mega.bridge.mapping import expert_tensor, fused_row

    out = {}
    for name, g in grads.items():
        row = fused_row(name, model_type)
        if row is None:
            out[name] = g
            continue
        for e in range(g.shape[0]):
            for member, template in enumerate(row.hf):
                layer = int(name.split(".layers.")[1].split(".")[0])
                out[template.format(i=layer, e=e)] = expert_tensor(row, "transformers", g, e,
                                                                   member, moe_ffn)
    return out


def hf_grads(hf, batch) -> dict:
    """d(sum of the batch's token log-probs)/d(weight) of the HF model, by per-expert name."""
    hf.zero_grad()
    with torch.enable_grad():
        sum(lp.sum() for lp in qp.hf_reference(hf, batch, keep_graph=True)).backward()
    grads = {n: p.grad.detach().clone() for n, p in hf.named_parameters()}
    return per_expert(grads, "qwen3_vl_moe", hf.config.text_config.moe_intermediate_size)


def grad_diffs(chunks, pg, hf_cfg, batch, ref_grads) -> dict:
    """Max relative gradient error (max|g - g_HF| / max|g_HF|) of every weight, of the experts
    and of the routers, with the worst weight's name. Gradients are summed over data parallel
    (experts: the expert-data-parallel group) as DDP would, and over TP those of the weights
    each TP rank sees a part of: QK-norm (its heads) and, under sequence parallel, norms and
    routers (its tokens)."""
    from prco_mega.bridge.hf_io import (_gather_tp, layer_offset, local_experts, mapping_args,
                                        megatron_params, split_group)
    from prco_mega.bridge.mapping import is_expert, megatron_shards_to_hf, tp_split_dim
    from prco_mega.learner.mrope import mrope_position_ids

    multiple = pg.tp.size() if chunks[0].config.sequence_parallel else 1
    ids, mask = qp.padded(batch, pad_id=hf_cfg.text_config.pad_token_id, multiple=multiple)
    pos = mrope_position_ids(ids, batch["grid_thw"], hf_cfg.image_token_id,
                             hf_cfg.vision_config.spatial_merge_size, attention_mask=mask)
    logits = qp.run_pipeline(chunks, pg, ids, pos, batch)
    lp = qp.vocab_parallel_logprobs_of(logits[:, :-1], ids[:, 1:], pg.tp)
    (lp * mask[:, 1:]).sum().backward()
    args, mt = mapping_args(hf_cfg), hf_cfg.model_type
    worst = {"all": (0.0, ""), "experts": (0.0, ""), "routers": (0.0, "")}
    for chunk in chunks:
        first_expert = local_experts(chunk)[0]
        for name, p in megatron_params(chunk):
            grad = p.grad
            dist.all_reduce(grad, group=pg.expt_dp if is_expert(name, mt) else pg.dp)
            if "q_layernorm" in name or "k_layernorm" in name or getattr(
                    p, "sequence_parallel", False):
                dist.all_reduce(grad, group=pg.tp)
            shards = _gather_tp(grad, tp_split_dim(name, mt), split_group(name, mt, pg))
            for k, g in megatron_shards_to_hf(name, shards, layer_offset=layer_offset(chunk),
                                              expert_offset=first_expert, **args).items():
                diff = (float((g - ref_grads[k]).abs().max() / ref_grads[k].abs().max()), k)
                kinds = ["all"] + (["experts"] if ".mlp.experts." in k else []) + (
                    ["routers"] if ".mlp.gate." in k else [])
                for kind in kinds:
                    worst[kind] = max(worst[kind], diff)
    for chunk in chunks:
        chunk.zero_grad()
    return {f"grad_rel_diff_{kind}": d for kind, (d, _) in worst.items()} | {
        "grad_worst": worst["all"][1]}


def check_layout(name: str, ckpt: Path, hf, batches, refs, ref_grads, work: Path) -> dict:
    from prco_mega.bridge.hf_io import export_megatron_to_hf, load_hf_into_megatron
    from prco_mega.learner.parallel import destroy_parallel, init_parallel
    from prco_mega.learner.provider import build_model

    tp, pp, ep, etp, sp = LAYOUTS[name]
    pg = init_parallel(tp, pp, hf_config=hf.config, ep=ep, etp=etp)
    chunks = build_model(hf.config, pg, config_overrides={"sequence_parallel": sp})
    for c in chunks:
        c.eval()
    load_hf_into_megatron(chunks, ckpt, pg, hf.config)
    mine = pg.dp.rank()
    with torch.no_grad():
        result = {"diffs": qp.megatron_diffs(chunks, pg, hf.config, batches[mine], refs[mine],
                                             multiple=tp if sp else 1)}
    if name not in FORWARD_ONLY:
        dp_batches = range(pg.dp.size())
        reference = {k: sum(ref_grads[b][k] for b in dp_batches) for k in ref_grads[0]}
        result |= grad_diffs(chunks, pg, hf.config, batches[mine], reference)
    if name in EXPORTED:
        out = export_megatron_to_hf(chunks, work / f"export-{name}", pg, hf.config)
        if dist.get_rank() == 0:
            result["roundtrip_bit_exact"] = qp.exports_bit_exact(ckpt, out)
    destroy_parallel()
    return merge_ranks(result)


def merge_ranks(result: dict) -> dict:
    """Every rank's result in one: log-prob diffs by batch (max over ranks), gradient errors as
    the max over ranks (each rank holds its own experts)."""
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, result)
    merged = {"diffs": {}}
    for r in gathered:
        for k, v in r["diffs"].items():
            merged["diffs"][k] = max(v, merged["diffs"].get(k, 0.0))
        for k, v in r.items():
            if k.startswith("grad_rel_diff"):
                merged[k] = max(v, merged.get(k, 0.0))
            elif k != "diffs":
                merged.setdefault(k, v)
    return merged


def converter_round_trip(ckpt: Path, work: Path) -> dict:
    """The converter (Megatron distributed checkpoints): HF -> Megatron saved at EP=2 by the
    command line in this world (`prco-mega convert --ep 2 --verify`: its exit status) -> HF at
    TP=2 (expert TP 2) and at PP=2; and a source in transformers' expert layout (as
    `save_pretrained` writes it) -> Megatron at TP=2 x EP=2 -> HF, which must be the hub-layout
    source bit for bit."""
    from prco_mega.bridge import convert_cli
    from prco_mega.bridge.convert import hf_to_megatron, megatron_to_hf
    from prco_mega.families.qwen3_vl_moe.tiny import (build_tiny_qwen3vl_moe,
                                                      tiny_qwen3vl_moe_config)

    cli_status = convert_cli.main(["--direction", "hf2mcore", "--src", str(ckpt), "--dst",
                                   str(work / "mcore-ep2"), "--ep", "2", "--verify"])
    megatron_to_hf(work / "mcore-ep2", work / "hf-tp2", tp=2, pp=1)
    megatron_to_hf(work / "mcore-ep2", work / "hf-pp2", tp=1, pp=2)
    theirs = work / "tiny-transformers-layout"
    if dist.get_rank() == 0:
        build_tiny_qwen3vl_moe(tiny_qwen3vl_moe_config(), seed=3).save_pretrained(theirs)
    dist.barrier()
    hf_to_megatron(theirs, work / "mcore-tp2-ep2", tp=2, pp=1, ep=2, etp=1)
    megatron_to_hf(work / "mcore-tp2-ep2", work / "hf-from-transformers-layout", tp=1, pp=1,
                   ep=2)
    if dist.get_rank() != 0:
        return {}
    return {f"{n}_bit_exact": qp.exports_bit_exact(ckpt, work / f"hf-{n}")
            for n in ("tp2", "pp2", "from-transformers-layout")} | {"cli_ep2_status": cli_status}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    p.add_argument("--convert", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    dist.init_process_group("gloo")
    install_megatron_cpu_compat()
    from transformers import Qwen3VLMoeForConditionalGeneration

    from prco_mega.tiny.checkpoint import save_tiny_model

    work = Path(args.out).parent
    ckpt = work / "tiny-qwen3vl-moe"
    if dist.get_rank() == 0:
        save_tiny_model(ckpt, "qwen3_vl_moe", seed=3)
    dist.barrier()
    hf = Qwen3VLMoeForConditionalGeneration.from_pretrained(str(ckpt)).float().eval()
    batches = [qp.make_batch(hf.config, seed=0, sequences=SEQUENCES),
               qp.make_batch(hf.config, seed=1, sequences=SEQUENCES_B)]
    refs = [qp.hf_reference(hf, b) for b in batches]
    ref_grads = [hf_grads(hf, b) for b in batches]
    results = {"import_s": time.time() - T0}
    for layout in args.layouts.split(","):
        t = time.time()
        results[layout] = check_layout(layout, ckpt, hf, batches, refs, ref_grads, work)
        results[layout]["seconds"] = time.time() - t
    if args.convert:
        t = time.time()
        results["convert"] = converter_round_trip(ckpt, work) | {"seconds": time.time() - t}
    results["total_s"] = time.time() - T0
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""2 ranks: Megatron Qwen2.5-VL vs Hugging Face on the same tiny checkpoint, at several layouts.

Writes (rank 0) a JSON with, per layout and checkpoint: max |log-prob difference| against HF for a
right-padded batch and for the same sequences packed; whether HF -> Megatron -> HF export is
bit-exact; whether our mrope positions equal HF's `get_rope_index`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist

T0 = time.time()
DEV = torch.device("cpu")  # set in main(): the local GPU when CUDA is there

from prco_mega.platform.megatron_cpu import install_megatron_cpu_compat  # noqa: E402

TEXT_VOCAB = 500  # ids below the tiny model's special tokens
# (text length, image grid or None) segments per sequence; grids are (t, h, w) patches
SEQUENCES = [
    [(5, None), (0, (1, 4, 4)), (7, None)],
    [(3, None), (0, (1, 12, 8)), (2, None), (0, (1, 4, 6)), (4, None)],
    [(9, None)],
]


def make_batch(cfg, seed: int = 0, sequences: list | None = None) -> dict:
    """Token rows (lists), image grids [K, 3] and pixel_values [P, C*T*ps*ps] for `sequences`
    (default SEQUENCES)."""
    g = torch.Generator().manual_seed(seed)
    merge = cfg.vision_config.spatial_merge_size
    rows, grids, per_seq = [], [], []
    for spec in sequences or SEQUENCES:
        ids, n_img = [], 0
        for text_len, grid in spec:
            ids += torch.randint(0, TEXT_VOCAB, (text_len,), generator=g).tolist()
            if grid is not None:
                n_tok = grid[0] * grid[1] * grid[2] // merge ** 2
                ids += [cfg.vision_start_token_id] + [cfg.image_token_id] * n_tok + [cfg.vision_end_token_id]
                grids.append(grid)
                n_img += 1
        rows.append(ids)
        per_seq.append(n_img)
    grid_thw = torch.tensor(grids, dtype=torch.long)
    patch_dim = 3 * cfg.vision_config.temporal_patch_size * cfg.vision_config.patch_size ** 2
    pixels = torch.randn(int(grid_thw.prod(dim=1).sum()), patch_dim, generator=g)
    return dict(rows=rows, grid_thw=grid_thw, pixel_values=pixels, images_per_seq=per_seq)


def seq_images(batch: dict, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel_values, grid_thw) of sequence b's images."""
    k0 = sum(batch["images_per_seq"][:b])
    grids = batch["grid_thw"][k0:k0 + batch["images_per_seq"][b]]
    p0 = int(batch["grid_thw"][:k0].prod(dim=1).sum())
    return batch["pixel_values"][p0:p0 + int(grids.prod(dim=1).sum())], grids


def hf_reference(hf, batch: dict, keep_graph: bool = False) -> list[torch.Tensor]:
    """Per sequence (run alone, unpadded): log-probs [L-1] of tokens 1..L-1."""
    out = []
    for b, ids in enumerate(batch["rows"]):
        x = torch.tensor([ids], device=DEV)
        pixels, grids = seq_images(batch, b)
        pixels, grids = pixels.to(DEV), grids.to(DEV)
        kw = dict(pixel_values=pixels, image_grid_thw=grids) if len(grids) else {}
        pos, _ = hf.model.get_rope_index(x, (x == hf.config.image_token_id).int(),
                                         image_grid_thw=grids if len(grids) else None)
        with torch.set_grad_enabled(keep_graph):
            logits = hf(input_ids=x, position_ids=pos, **kw).logits[0]
        lp = torch.log_softmax(logits.float(), -1)[:-1].gather(-1, x[0, 1:, None])[:, 0]
        out.append(lp if keep_graph else lp.detach().cpu())
    return out


def mrope_matches_hf(hf, batch: dict) -> bool:
    """Our positions equal HF's get_rope_index on the right-padded batch (mask included)."""
    from prco_mega.learner.mrope import mrope_position_ids

    cfg = hf.config
    ids, mask = padded(batch, pad_id=cfg.text_config.pad_token_id)
    ours = mrope_position_ids(ids, batch["grid_thw"], cfg.image_token_id,
                              cfg.vision_config.spatial_merge_size, attention_mask=mask)
    theirs, _ = hf.model.get_rope_index(ids, (ids == cfg.image_token_id).int(),
                                        image_grid_thw=batch["grid_thw"], attention_mask=mask)
    return bool(torch.equal(ours, theirs))


def padded(batch: dict, pad_id: int, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, S] and mask [B, S], S rounded up to `multiple` (sequence parallel)."""
    n = -(-max(len(r) for r in batch["rows"]) // multiple) * multiple
    ids = torch.full((len(batch["rows"]), n), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(batch["rows"]):
        ids[b, :len(r)] = torch.tensor(r)
        mask[b, :len(r)] = 1
    return ids, mask


def run_pipeline(chunks, pg, tokens, pos, batch, **kw):
    """Forward through this rank's chunks in pipeline order, passing hidden states on by p2p.

    Virtual chunk v of pipeline rank r is global stage v * pp + r. Returns the logits on the
    last stage, None elsewhere.
    """
    from prco_mega.learner.model import forward

    pp_rank, pp_size = pg.pp.rank(), pg.pp.size()
    ranks = dist.get_process_group_ranks(pg.pp)
    last = len(chunks) * pp_size - 1
    out = None
    for v, chunk in enumerate(chunks):
        stage = v * pp_size + pp_rank
        if stage > 0:
            h = torch.empty(tokens.shape[1], tokens.shape[0], chunk.config.hidden_size, device=DEV)
            dist.recv(h, src=ranks[(pp_rank - 1) % pp_size], group=pg.pp)
            chunk.set_input_tensor(h)
        out = forward(chunk, tokens.to(DEV), pos.to(DEV), batch["pixel_values"].to(DEV),
                      batch["grid_thw"].to(DEV), **kw)
        if stage < last:
            dist.send(out.detach().contiguous(), dst=ranks[(pp_rank + 1) % pp_size], group=pg.pp)
            out = None
    return out


def hf_grads(hf, batch) -> dict:
    """d(sum of all sequences' token log-probs)/d(weight) of the HF model, by hub-layout name."""
    from prco_mega.bridge.mapping import hf_legacy_name

    hf.zero_grad()
    with torch.enable_grad():
        sum(lp.sum() for lp in hf_reference(hf, batch, keep_graph=True)).backward()
    return {hf_legacy_name(n): p.grad.detach().cpu() for n, p in hf.named_parameters()}


def vocab_parallel_logprobs_of(logits, target, tp_group):
    """log p(target) [...] from this rank's vocab shard of `logits` [..., V/tp] (Megatron's
    vocab-parallel cross-entropy over the TP group, differentiable; it writes into its input, so
    it gets an fp32 copy)."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    return -vocab_parallel_cross_entropy(logits.float().clone(), target)


def megatron_grad_diff(chunks, pg, hf_cfg, batch, ref_grads) -> float:
    """Max over parameters of max|grad - grad_HF| / max|grad_HF| (TP shards gathered)."""
    from prco_mega.bridge.hf_io import _gather_tp, layer_offset, mapping_args, megatron_params
    from prco_mega.bridge.mapping import megatron_shards_to_hf, tp_split_dim
    from prco_mega.learner.mrope import mrope_position_ids

    ids, mask = padded(batch, pad_id=hf_cfg.text_config.pad_token_id)
    pos = mrope_position_ids(ids, batch["grid_thw"], hf_cfg.image_token_id,
                             hf_cfg.vision_config.spatial_merge_size, attention_mask=mask)
    logits = run_pipeline(chunks, pg, ids, pos, batch)
    lp = vocab_parallel_logprobs_of(logits[:, :-1], ids[:, 1:].to(DEV), pg.tp)
    (lp * mask[:, 1:].to(DEV)).sum().backward()
    args, worst = mapping_args(hf_cfg), 0.0
    for chunk in chunks:
        for name, p in megatron_params(chunk):
            shards = _gather_tp(p.grad, tp_split_dim(name, args["model_type"]), pg.tp)
            for k, g in megatron_shards_to_hf(name, shards, layer_offset=layer_offset(chunk),
                                              **args).items():
                ref = ref_grads[k]
                worst = max(worst, float((g.cpu() - ref).abs().max() / ref.abs().max()))
    return worst


def megatron_diffs(chunks, pg, hf_cfg, batch, ref, multiple: int = 1) -> dict:
    """Max |logp - logp_HF| for the padded batch and for the packed batch (last stage; else None)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    from prco_mega.learner.mrope import mrope_position_ids, packed_mrope_position_ids

    image_id, merge = hf_cfg.image_token_id, hf_cfg.vision_config.spatial_merge_size
    ids, mask = padded(batch, pad_id=hf_cfg.text_config.pad_token_id, multiple=multiple)
    pos = mrope_position_ids(ids, batch["grid_thw"], image_id, merge, attention_mask=mask)
    logits = run_pipeline(chunks, pg, ids, pos, batch)
    diffs = {}
    if logits is not None:
        lp = vocab_parallel_logprobs_of(logits[:, :-1], ids[:, 1:].to(DEV), pg.tp).cpu()
        diffs["padded"] = max(float((lp[b, :len(r) - 1] - ref[b]).abs().max())
                              for b, r in enumerate(batch["rows"]))
    flat = torch.tensor([t for r in batch["rows"] for t in r])[None]
    lens = torch.tensor([0] + [len(r) for r in batch["rows"]])
    cu = lens.cumsum(0).to(torch.int32)
    packed_pos = packed_mrope_position_ids(flat[0], cu, batch["grid_thw"], image_id, merge)[:, None]
    tail = -flat.shape[1] % multiple  # padding after the last sequence, outside cu_seqlens
    flat = torch.nn.functional.pad(flat, (0, tail), value=hf_cfg.text_config.pad_token_id)
    packed_pos = torch.nn.functional.pad(packed_pos, (0, tail))
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu.to(DEV), cu_seqlens_kv=cu.to(DEV),
                             max_seqlen_q=int(lens.max()), max_seqlen_kv=int(lens.max()))
    logits = run_pipeline(chunks, pg, flat, packed_pos, batch, packed_seq_params=params)
    if logits is not None:
        lp = vocab_parallel_logprobs_of(logits[0, :-1], flat[0, 1:].to(DEV), pg.tp).cpu()
        diffs["packed"] = max(float((lp[a:b - 1] - ref[n]).abs().max())
                              for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())))
    return diffs


def exports_bit_exact(src: Path, dst: Path) -> bool:
    from prco_mega.bridge.hf_io import HFCheckpointReader

    a, b = HFCheckpointReader(src), HFCheckpointReader(dst)
    return a.names() == b.names() and all(torch.equal(a(n)[...], b(n)[...]) for n in a.names())


def check_layout(name: str, ckpt: Path, hf, batch, ref, ref_grads, work: Path) -> dict:
    from prco_mega.bridge.hf_io import export_megatron_to_hf, load_hf_into_megatron
    from prco_mega.learner.provider import build_model
    from prco_mega.learner.parallel import destroy_parallel, init_parallel

    tp, pp = (2, 1) if name.startswith("tp2") else (1, 2) if name.startswith("pp2") else (1, 1)
    sp, vpp = name.endswith("-sp"), (2 if "-vpp2" in name else None)
    pg = init_parallel(tp, pp, vpp, hf_config=hf.config)
    chunks = build_model(hf.config, pg, vpp=vpp, config_overrides={"sequence_parallel": sp})
    for c in chunks:
        c.eval()
    load_hf_into_megatron(chunks, ckpt, pg, hf.config)
    with torch.no_grad():
        result = {"diffs": megatron_diffs(chunks, pg, hf.config, batch, ref, multiple=tp if sp else 1)}
    if pp == 1 and not sp:
        result["grad_rel_diff"] = megatron_grad_diff(chunks, pg, hf.config, batch, ref_grads)
    if tp * pp > 1 and not sp:
        out = export_megatron_to_hf(chunks, work / f"export-{name}", pg, hf.config)
        if dist.get_rank() == 0:
            result["roundtrip_bit_exact"] = exports_bit_exact(ckpt, out)
    destroy_parallel()
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, result)
    merged = {"diffs": {}}
    for r in gathered:
        merged["diffs"].update(r["diffs"])
        merged.update({k: v for k, v in r.items() if k != "diffs"})
    return merged


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layouts", default="tp1,tp2,pp2,pp2-vpp2,tp2-sp,pp2-tied")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    global DEV
    if torch.cuda.is_available():
        import os

        DEV = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(DEV)
        torch.backends.cudnn.allow_tf32 = False  # fp32 parity: no TF32 in the patch conv
    dist.init_process_group("nccl" if DEV.type == "cuda" else "gloo")
    compat = [install_megatron_cpu_compat(), install_megatron_cpu_compat()]
    from prco_mega.families.qwen2_5_vl.tiny import TinySizes
    from prco_mega.tiny.checkpoint import save_tiny_model
    from transformers import Qwen2_5_VLForConditionalGeneration

    work = Path(args.out).parent
    results, hf_cache = {"import_s": time.time() - T0, "device": str(DEV)}, {}
    if DEV.type == "cpu":  # the compat layer is on, idempotent, and maps CUDA literals to the CPU
        results["compat_ok"] = compat == [True, True] and torch.zeros(
            2, device="cuda").device.type == "cpu" and torch.cuda.current_device() == 0
    else:
        results["compat_ok"] = compat == [False, False]
    for layout in args.layouts.split(","):
        tied = layout.endswith("-tied")
        ckpt = work / ("tiny-tied" if tied else "tiny")
        if tied not in hf_cache:
            if dist.get_rank() == 0:
                save_tiny_model(ckpt, "qwen2_5_vl", TinySizes(tie_word_embeddings=tied),
                                seed=1 + tied)
            dist.barrier()
            hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(ckpt)).float().eval().to(DEV)
            batch = make_batch(hf.config)
            hf_cache[tied] = (hf, batch, hf_reference(hf, batch), hf_grads(hf, batch))
            results[f"mrope_equals_hf{'_tied' if tied else ''}"] = mrope_matches_hf(hf, batch)
        results[layout] = check_layout(layout, ckpt, *hf_cache[tied], work)
    results["total_s"] = time.time() - T0
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

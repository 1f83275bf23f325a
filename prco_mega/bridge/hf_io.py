"""Load a Hugging Face safetensors checkpoint into Megatron model chunks at any TP/PP, and export
Megatron chunks back to a Hugging Face checkpoint (hub layout that transformers and vLLM load).

Load: every rank opens the checkpoint lazily and reads, tensor by tensor, only the slices of its
own parameters (its pipeline stage's layers, its TP shard of each); nothing is broadcast.
Export: TP shards are all-gathered over the explicit TP group; each pipeline stage's TP-rank-0,
DP-rank-0 process writes its own safetensors file (no tensors cross pipeline stages); the first
stage writes the index and `config.json`. Both directions are driven by `bridge.mapping`'s table.

Experts (mixture-of-experts families): each expert-parallel rank reads only its own experts, one
expert's bytes at a time out of the file's fused tensors (the hub's layout or transformers', told
apart by `mapping.fused_layout`, which refuses a file whose sizes make them read alike); an
expert's shards travel over the expert-TP group, its experts over the expert-parallel group, and
files are written in the hub's fused layout (`ExpertFuser`), the one vLLM loads.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from prco_mega.bridge.mapping import (Heads, expert_rows, expert_tensor, fuse_experts, fused_layout,
                                      fused_row, hf_to_megatron_shard, hub_name, is_expert,
                                      megatron_shards_to_hf, parse_expert_name, tp_split_dim)
from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


class HFCheckpointReader:
    """Lazy reader of a HF safetensors checkpoint (single file or sharded with an index).

    `reader(name)` takes a name as the family's mapping table spells it (`mapping.hub_name`;
    `model_type` defaults to the directory's config.json) and returns a safetensors slice: index it
    to read bytes.
    """

    def __init__(self, hf_dir: str | Path, model_type: str | None = None):
        hf_dir = Path(hf_dir)
        model_type = model_type or _model_type(hf_dir)
        index = hf_dir / INDEX_NAME
        if index.exists():
            files = _indexed_files(index)
        elif (hf_dir / WEIGHTS_NAME).exists():
            files = [WEIGHTS_NAME]
        else:
            raise ValueError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {hf_dir}")
        self._handles = {f: _open_safetensors(hf_dir / f) for f in files}
        self._where: dict[str, tuple[str, str]] = {}
        for f, handle in self._handles.items():
            for stored in handle.keys():
                self._where[hub_name(stored, model_type)] = (f, stored)
        self.model_type = model_type
        self._layouts = self._expert_layouts(hf_dir) if expert_rows(model_type) else {}

    def _expert_layouts(self, hf_dir: Path) -> dict[str, str]:
        """{fused expert tensor: "hub" | "transformers"}; ValueError for an ambiguous file."""
        hidden, self._moe_ffn = _expert_sizes(hf_dir)
        layouts = {}
        for name in self._where:
            row = fused_row(name, self.model_type)
            if row is not None:
                shape = self(name).get_shape()
                layouts[name] = fused_layout(row, shape, hidden, self._moe_ffn, name)
        return layouts

    def names(self) -> list[str]:
        """Hub-layout names of every tensor in the checkpoint (fused experts as stored)."""
        return sorted(self._where)

    def layout(self, name: str) -> str:
        """"hub" or "transformers": the layout of the stored fused expert tensor `name`."""
        return self._layouts[name]

    def __call__(self, name: str):
        """The stored tensor `name` as a lazy slice, or one expert's tensor (a per-expert name of
        the mapping) read out of its layer's fused tensor."""
        if name not in self._where:
            expert = parse_expert_name(name, self.model_type)
            if expert is None or expert.fused not in self._layouts:
                raise KeyError(f"tensor {name!r} not in the checkpoint")
            return expert_tensor(expert.row, self._layouts[expert.fused], self(expert.fused),
                                 expert.expert, expert.member, self._moe_ffn)
        f, stored = self._where[name]
        return self._handles[f].get_slice(stored)


def _model_type(hf_dir: Path) -> str | None:
    """`model_type` of the directory's config.json, None without one."""
    cfg = hf_dir / "config.json"
    return json.loads(cfg.read_text()).get("model_type") if cfg.is_file() else None


def _expert_sizes(hf_dir: Path) -> tuple[int, int]:
    """(hidden_size, moe_intermediate_size) of a mixture-of-experts checkpoint's config.json."""
    path = hf_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"{hf_dir} has no config.json: its fused experts' layout cannot be told")
    cfg = json.loads(path.read_text())
    text = cfg.get("text_config") or cfg
    return int(text["hidden_size"]), int(text["moe_intermediate_size"])


def _indexed_files(index: Path) -> list[str]:
    """The weight files an index names; a damaged index is refused by name."""
    try:
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{index} is not a safetensors index (a JSON object with a "
                         f"'weight_map' mapping): {err!r}") from err


def _open_safetensors(path: Path):
    """A lazy handle on one weight file. safetensors checks the header and that the file covers
    every tensor it lists, so a truncated or corrupt file is refused here by name."""
    if not path.is_file():
        raise ValueError(f"weight file {path} does not exist")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"weight file {path} is truncated or not a safetensors file: "
                         f"{err}") from err


def load_hf_config(hf_dir: str | Path):
    """The transformers config of a checkpoint directory (local files only)."""
    ensure_torchvision_importable()
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(hf_dir), local_files_only=True)


def mapping_args(hf_config) -> dict:
    """The model-level arguments of the mapping functions, from a HF config."""
    tc = getattr(hf_config, "text_config", None) or hf_config
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    heads = Heads(tc.num_attention_heads, getattr(tc, "num_key_value_heads", None)
                  or tc.num_attention_heads)
    return dict(model_type=hf_config.model_type, heads=heads, tied=tied)


def layer_offset(chunk) -> int:
    """Global index of the chunk's first decoder layer (Megatron numbers layers from 1)."""
    layers = chunk.language_model.decoder.layers
    return layers[0].layer_number - 1 if len(layers) else 0


def local_experts(chunk) -> tuple[int, int]:
    """(global index of this rank's first expert, experts per rank) of a chunk's MoE layers;
    (0, 0) without any."""
    for layer in chunk.language_model.decoder.layers:
        indices = getattr(layer.mlp, "local_expert_indices", None)
        if indices:
            return indices[0], len(indices)
    return 0, 0


def split_group(name: str, model_type: str, pg_collection):
    """The group over which a parameter's TP shards are spread: expert-TP for an expert's,
    TP otherwise."""
    return pg_collection.expt_tp if is_expert(name, model_type) else pg_collection.tp


def unwrap(chunk):
    """The model inside a chunk's wrappers (`learner.model.unwrap`, imported with Megatron)."""
    from prco_mega.learner.model import unwrap as unwrap_model  # imports Megatron at its top

    return unwrap_model(chunk)


def megatron_params(chunk):
    """(name, parameter) of a chunk, without Transformer Engine's `_extra_state` entries."""
    return [(n, p) for n, p in unwrap(chunk).named_parameters() if "_extra_state" not in n]


@torch.no_grad()
def load_hf_into_megatron(chunks, hf_dir: str | Path, pg_collection, hf_config=None) -> int:
    """Copy a HF checkpoint into this rank's model chunks; returns how many tensors it set."""
    hf_config = hf_config or load_hf_config(hf_dir)
    reader = HFCheckpointReader(hf_dir)
    args = mapping_args(hf_config)
    count = 0
    for chunk in chunks:
        offset, (first_expert, _) = layer_offset(unwrap(chunk)), local_experts(unwrap(chunk))
        for name, param in megatron_params(chunk):
            group = split_group(name, args["model_type"], pg_collection)
            shard = hf_to_megatron_shard(name, reader, tp_rank=group.rank(), tp_size=group.size(),
                                         layer_offset=offset, expert_offset=first_expert, **args)
            if shard.shape != param.shape:
                raise ValueError(f"{name}: checkpoint gives shape {tuple(shard.shape)}, model has "
                                 f"{tuple(param.shape)} (tp={group.size()})")
            param.copy_(shard)
            count += 1
    return count


def _gather_tp(param: torch.Tensor, dim: int | None, tp_group) -> list[torch.Tensor]:
    if dim is None or tp_group.size() == 1:
        return [param.detach()]
    shards = [torch.empty_like(param) for _ in range(tp_group.size())]
    dist.all_gather(shards, param.detach().contiguous(), group=tp_group)
    return shards


def _gather_ep(shards: list[torch.Tensor], ep_group) -> list[list[torch.Tensor]]:
    """Every expert-parallel rank's `shards` (the same local expert of each rank), in rank
    order."""
    if ep_group.size() == 1:
        return [shards]
    per_shard = []
    for shard in shards:
        got = [torch.empty_like(shard) for _ in range(ep_group.size())]
        dist.all_gather(got, shard.contiguous(), group=ep_group)
        per_shard.append(got)
    return [list(ranks) for ranks in zip(*per_shard)]


class ExpertFuser:
    """Collects per-expert HF tensors (`mapping.parse_expert_name`) until a layer's experts are
    complete, then gives that layer's fused hub-layout tensor (`mapping.fuse_experts`); other
    tensors pass through."""

    def __init__(self, model_type: str, num_experts: int):
        self.model_type, self.num_experts = model_type, num_experts
        self._pending: dict[str, dict[tuple[int, int], torch.Tensor]] = {}

    def add(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name, tensor in tensors.items():
            expert = parse_expert_name(name, self.model_type)
            if expert is None:
                out[name] = tensor
                continue
            held = self._pending.setdefault(expert.fused, {})
            held[expert.expert, expert.member] = tensor
            members = len(expert.row.hf)
            if len(held) == self.num_experts * members:
                out[expert.fused] = fuse_experts(expert.row, [
                    [held[e, m] for m in range(members)] for e in range(self.num_experts)])
                del self._pending[expert.fused]
        return out

    def close(self) -> None:
        assert not self._pending, f"layers with missing experts: {sorted(self._pending)}"


def num_experts(hf_config) -> int:
    """Routed experts per MoE layer (0 for a dense model)."""
    tc = getattr(hf_config, "text_config", None) or hf_config
    return int(getattr(tc, "num_experts", 0) or 0)


@torch.no_grad()
def megatron_to_hf_tensors(chunks, pg_collection, hf_config) -> dict[str, torch.Tensor]:
    """HF-named full tensors of this rank's pipeline stage, fused experts in the hub layout
    (collective over the TP, expert-TP and expert-parallel groups)."""
    args = mapping_args(hf_config)
    mt = args["model_type"]
    fuser = ExpertFuser(mt, num_experts(hf_config))
    out: dict[str, torch.Tensor] = {}
    for chunk in chunks:
        offset, (_, per_rank) = layer_offset(unwrap(chunk)), local_experts(unwrap(chunk))
        for name, param in megatron_params(chunk):
            shards = _gather_tp(param, tp_split_dim(name, mt), split_group(name, mt, pg_collection))
            if not is_expert(name, mt):
                out.update(megatron_shards_to_hf(name, shards, layer_offset=offset, **args))
                continue
            # Megatron's rule: expert-parallel rank k holds experts k * per_rank ...
            for k, rank_shards in enumerate(_gather_ep(shards, pg_collection.ep)):
                out.update(fuser.add(megatron_shards_to_hf(
                    name, rank_shards, layer_offset=offset, expert_offset=k * per_rank, **args)))
    fuser.close()
    return out


def export_megatron_to_hf(chunks, out_dir: str | Path, pg_collection, hf_config,
                          copy_files_from: str | Path | None = None) -> Path:
    """Write a HF checkpoint of the model (every rank calls it); returns `out_dir`.

    `copy_files_from`: a HF directory whose non-weight files (tokenizer, processor) are copied.
    """
    out = Path(out_dir)
    tensors = megatron_to_hf_tensors(chunks, pg_collection, hf_config)
    writer = pg_collection.tp.rank() == 0 and pg_collection.dp.rank() == 0
    if writer:
        _write_stage(out, tensors, pg_collection.pp, hf_config, copy_files_from)
    dist.barrier()
    return out


def _write_stage(out: Path, tensors: dict, pp_group, hf_config, copy_files_from) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pp_rank, pp_size = pp_group.rank(), pp_group.size()
    fname = (WEIGHTS_NAME if pp_size == 1
             else f"model-{pp_rank + 1:05d}-of-{pp_size:05d}.safetensors")
    cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    save_file(cpu, str(out / fname), metadata={"format": "pt"})
    names = [None] * pp_size
    dist.all_gather_object(names, (fname, sorted(cpu), sum(t.numel() * t.element_size()
                                                           for t in cpu.values())), group=pp_group)
    if pp_rank != 0:
        return
    if pp_size > 1:
        weight_map = {k: f for f, keys, _ in names for k in keys}
        total = sum(size for _, _, size in names)
        (out / INDEX_NAME).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
            indent=2))
    hf_config.save_pretrained(str(out))
    if copy_files_from is not None:
        _copy_side_files(Path(copy_files_from), out)


def _copy_side_files(src: Path, out: Path) -> None:
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name not in (
                INDEX_NAME, "config.json"):
            shutil.copy2(f, out / f.name)


def save_pretrained_hub(model, out_dir: str | Path) -> Path:
    """`model.save_pretrained(out_dir)` (safetensors) with fused expert tensors in the hub's
    layout, the one the published checkpoints hold and vLLM loads: transformers 5 writes its
    in-memory layout, which vLLM refuses. Returns `out_dir`."""
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    mt = model.config.model_type
    if not expert_rows(mt):
        return out
    tc = getattr(model.config, "text_config", None) or model.config
    for path in sorted(out.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        for name, tensor in tensors.items():
            row = fused_row(hub_name(name, mt), mt)
            if row is not None and fused_layout(row, tensor.shape, tc.hidden_size,
                                                tc.moe_intermediate_size, name) != "hub":
                tensors[name] = tensor.transpose(1, 2).contiguous()
        save_file(tensors, str(path), metadata=meta)
    return out

"""Load a Hugging Face safetensors checkpoint into Megatron model chunks at any TP/PP, and export
Megatron chunks back to a Hugging Face checkpoint (hub layout that transformers and vLLM load).

Load: every rank opens the checkpoint lazily and reads, tensor by tensor, only the slices of its
own parameters (its pipeline stage's layers, its TP shard of each); nothing is broadcast.
Export: TP shards are all-gathered over the explicit TP group; each pipeline stage's TP-rank-0,
DP-rank-0 process writes its own safetensors file (no tensors cross pipeline stages); the first
stage writes the index and `config.json`. Both directions are driven by `bridge.mapping`'s table.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from prco_mega.bridge.mapping import (Heads, hf_to_megatron_shard, hub_name, megatron_shards_to_hf,
                                      tp_split_dim)
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

    def names(self) -> list[str]:
        """Hub-layout names of every tensor in the checkpoint."""
        return sorted(self._where)

    def __call__(self, name: str):
        if name not in self._where:
            raise KeyError(f"tensor {name!r} not in the checkpoint")
        f, stored = self._where[name]
        return self._handles[f].get_slice(stored)


def _model_type(hf_dir: Path) -> str | None:
    """`model_type` of the directory's config.json, None without one."""
    cfg = hf_dir / "config.json"
    return json.loads(cfg.read_text()).get("model_type") if cfg.is_file() else None


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
    tp_rank, tp_size = pg_collection.tp.rank(), pg_collection.tp.size()
    count = 0
    for chunk in chunks:
        offset = layer_offset(unwrap(chunk))
        for name, param in megatron_params(chunk):
            shard = hf_to_megatron_shard(name, reader, tp_rank=tp_rank, tp_size=tp_size,
                                         layer_offset=offset, **args)
            if shard.shape != param.shape:
                raise ValueError(f"{name}: checkpoint gives shape {tuple(shard.shape)}, model has "
                                 f"{tuple(param.shape)} (tp={tp_size})")
            param.copy_(shard)
            count += 1
    return count


def _gather_tp(param: torch.Tensor, dim: int | None, tp_group) -> list[torch.Tensor]:
    if dim is None or tp_group.size() == 1:
        return [param.detach()]
    shards = [torch.empty_like(param) for _ in range(tp_group.size())]
    dist.all_gather(shards, param.detach().contiguous(), group=tp_group)
    return shards


@torch.no_grad()
def megatron_to_hf_tensors(chunks, pg_collection, hf_config) -> dict[str, torch.Tensor]:
    """HF-named full tensors of this rank's pipeline stage (collective over the TP group)."""
    args = mapping_args(hf_config)
    out: dict[str, torch.Tensor] = {}
    for chunk in chunks:
        offset = layer_offset(unwrap(chunk))
        for name, param in megatron_params(chunk):
            shards = _gather_tp(param, tp_split_dim(name, args["model_type"]), pg_collection.tp)
            out.update(megatron_shards_to_hf(name, shards, layer_offset=offset, **args))
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

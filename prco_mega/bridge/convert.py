"""Checkpoint conversion: Hugging Face safetensors <-> Megatron distributed checkpoint, any TP/PP.

Both directions run inside a torch.distributed world of tp * pp ranks (`torchrun`; the
`prco-mega convert` command and `tools/convert_checkpoint.py` launch it) and go through the same
mapping table as the live weight sync (`bridge.mapping`), so conversion and sync cannot disagree.

- `hf_to_megatron`: every rank builds only its own shard of the model at the target layout, reads
  only its slices from the safetensors files (`hf_io.load_hf_into_megatron`) and saves them as
  Megatron sharded tensors (`dist_checkpointing`, global coordinates: loadable at any other
  layout by `learner.checkpoint.load_checkpoint`). The source's config, tokenizer and processor
  files are kept under `<out>/hf/` so the way back needs no other input.
- `megatron_to_hf`: every rank loads its shard; parameter by parameter the TP shards are gathered
  on TP rank 0 of each pipeline stage, which appends them to a safetensors file of at most
  `shard_bytes` and starts the next. No process ever holds more than its shard plus one file's
  worth of tensors. Output: hub-layout names, `model.safetensors.index.json`, the original
  `config.json`, generation config, tokenizer and processor files (transformers and vLLM load it).

Experts (mixture-of-experts families): a world of tp * pp * dp ranks may hold them with expert
parallel `ep` (and expert tensor parallel `etp`; `learner.layout.check_layout` states what fits);
each rank reads and saves only its experts, and the way back gathers a layer's experts on the
writer, which writes them fused in the hub's layout (the one vLLM loads). A source may hold
either the hub's layout or transformers' (`bridge.mapping.fused_layout` refuses sizes that make
them read alike); manifests compare in the hub's.

Sources are checked before any tensor is read: the `model_type` must have a mapping table, the
architecture must be one the table describes, and the source's tensor names and shapes must be
exactly those of transformers' model for that config (built on the meta device: no memory) and
exactly those the mapping reads; every difference is named in a ValueError.

Outputs are written into `<out>.tmp/`; after every rank finished, rank 0 fsyncs, writes the
`COMPLETE` marker and renames the directory to `<out>` (atomic on POSIX), so an interrupted
conversion leaves only a `.tmp` directory that nothing takes for a complete one.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from prco_mega.bridge.hf_io import (INDEX_NAME, ExpertFuser, HFCheckpointReader, layer_offset,
                                    load_hf_config, load_hf_into_megatron, local_experts,
                                    mapping_args, megatron_params, num_experts, split_group,
                                    unwrap)
from prco_mega.bridge.mapping import (family_table, fold_expert_shapes, fused_row, hub_name,
                                      hub_shape, is_expert, megatron_shards_to_hf, tp_split_dim)
from prco_mega.families import family
from prco_mega.learner.checkpoint import (COMPLETE_MARKER, _finalize, is_complete,
                                          latest_checkpoint, load_checkpoint,
                                          model_sharded_state_dict)
from prco_mega.learner.parallel import destroy_parallel, init_parallel
from prco_mega.learner.provider import build_model

HF_FILES_DIR = "hf"
"""Subdirectory of a converted Megatron checkpoint holding the source's non-weight files."""

DEFAULT_SHARD_BYTES = 2 * 1024**3
"""Largest safetensors file written by `megatron_to_hf` (a larger single tensor gets its own)."""

_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
           "F64": torch.float64}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".gguf",
                    ".index.json")


# ----------------------------------------------------------------------------- source checks
def check_architecture(hf_config) -> None:
    """ValueError unless `hf_config` is a model type and architecture with a mapping table (the
    family's `architectures`)."""
    known = family(hf_config.model_type).architectures
    archs = list(getattr(hf_config, "architectures", None) or [])
    unknown = [a for a in archs if a not in known]
    if unknown:
        raise ValueError(f"architecture {unknown[0]!r} (model_type {hf_config.model_type!r}) has "
                         f"no weight mapping; known: {list(known)}")


def expected_hf_tensors(hf_config) -> dict[str, tuple[int, ...]]:
    """Hub-layout name -> shape of every tensor a checkpoint of `hf_config` holds, from
    transformers' own model built on the meta device (no memory, any model size); fused experts
    in the hub's layout (transformers holds them transposed)."""
    import transformers

    arch = (list(getattr(hf_config, "architectures", None) or [])
            or list(family(hf_config.model_type).architectures))[0]
    with torch.device("meta"):
        model = getattr(transformers, arch)._from_config(hf_config)
    mt = hf_config.model_type
    out = {hub_name(k, mt): tuple(v.shape) for k, v in model.state_dict().items()}
    out = {k: hub_shape(v) if fused_row(k, mt) else v for k, v in out.items()}
    if getattr(hf_config, "tie_word_embeddings", False):
        out.pop("lm_head.weight", None)  # the embedding is the output layer
    return out


def manifest_differences(source: dict[str, tuple], expected: dict[str, tuple],
                         optional: set[str] = frozenset(), what: str = "") -> list[str]:
    """Readable differences between two {name: shape} manifests (missing, extra, shape)."""
    problems = []
    missing = sorted(set(expected) - set(source))
    extra = sorted(set(source) - set(expected) - set(optional))
    shapes = sorted(n for n in set(source) & set(expected) if tuple(source[n]) != expected[n])
    if missing:
        problems.append(f"missing tensors{what}: {_some(missing)}")
    if extra:
        problems.append(f"extra tensors{what}: {_some(extra)}")
    for n in shapes[:5]:
        problems.append(f"tensor {n!r} has shape {tuple(source[n])}, expected {expected[n]}")
    return problems


def _some(names: list[str], n: int = 5) -> str:
    more = f" (and {len(names) - n} more)" if len(names) > n else ""
    return ", ".join(repr(x) for x in names[:n]) + more


def source_manifest(hf_dir: str | Path) -> tuple[dict[str, tuple], torch.dtype]:
    """({hub name: shape}, dtype of the floating tensors) from the safetensors headers only;
    fused experts stored in transformers' layout are listed with their hub-layout shape."""
    reader = HFCheckpointReader(hf_dir)
    shapes, dtypes = {}, set()
    for name in reader.names():
        sl = reader(name)
        shapes[name] = tuple(sl.get_shape())
        if fused_row(name, reader.model_type) and reader.layout(name) == "transformers":
            shapes[name] = hub_shape(shapes[name])
        dtypes.add(sl.get_dtype())
    floats = sorted(d for d in dtypes if d in _DTYPES)
    if len(floats) != 1:
        raise ValueError(f"{hf_dir}: expected one floating dtype in the checkpoint, found "
                         f"{sorted(dtypes)}")
    return shapes, _DTYPES[floats[0]]


def check_hf_source(hf_dir: str | Path):
    """Load and check a Hugging Face checkpoint's config and tensor manifest against the mapping;
    returns `(hf_config, dtype)`. Reads headers only, so it is cheap at any model size."""
    hf_dir = Path(hf_dir)
    _refuse_interrupted(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise ValueError(f"{hf_dir} has no config.json: not a Hugging Face checkpoint")
    raw = json.loads((hf_dir / "config.json").read_text())
    family_table(raw.get("model_type", "<missing>"))  # before transformers guesses a class
    hf_config = load_hf_config(hf_dir)
    check_architecture(hf_config)
    source, dtype = source_manifest(hf_dir)
    optional = {"lm_head.weight"} if getattr(hf_config, "tie_word_embeddings", False) else set()
    problems = manifest_differences(source, expected_hf_tensors(hf_config), optional)
    if problems:
        raise ValueError(f"{hf_dir} does not match {hf_config.model_type!r}: "
                         + "; ".join(problems))
    return hf_config, dtype


def _refuse_interrupted(path: Path) -> None:
    if path.name.endswith(".tmp") and not is_complete(path):
        raise ValueError(f"{str(path)!r} is an interrupted conversion (a .tmp directory without "
                         f"the {COMPLETE_MARKER!r} marker); refusing to read it")


def mapped_hf_tensors(chunks, hf_config, pg) -> dict[str, tuple[int, ...]]:
    """{hub name: full shape} of every HF tensor the mapping reads for this rank's chunks (its
    experts by their per-expert names): the mapping applied to meta tensors of the TP (or
    expert-TP) shard shapes (no data)."""
    args = mapping_args(hf_config)
    mt = args["model_type"]
    out = {}
    for chunk in chunks:
        offset, (first_expert, _) = layer_offset(unwrap(chunk)), local_experts(unwrap(chunk))
        for name, p in megatron_params(chunk):
            n = split_group(name, mt, pg).size() if tp_split_dim(name, mt) is not None else 1
            shards = [torch.empty(p.shape, device="meta")] * n
            full = megatron_shards_to_hf(name, shards, layer_offset=offset,
                                         expert_offset=first_expert, **args)
            out.update({k: tuple(v.shape) for k, v in full.items()})
    return out


def _check_mapping_covers(chunks, hf_config, source: dict[str, tuple], pg) -> None:
    """Collective: the union over ranks of what the mapping reads must be exactly the source
    (a layer's experts, spread over expert-parallel ranks, compared as its fused tensor)."""
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mapped_hf_tensors(chunks, hf_config, pg))
    mapped = fold_expert_shapes({k: v for part in parts for k, v in part.items()},
                                hf_config.model_type)
    optional = {"lm_head.weight"} if getattr(hf_config, "tie_word_embeddings", False) else set()
    problems = manifest_differences(source, mapped, optional, " (for the weight mapping)")
    if problems:
        raise ValueError(f"the {hf_config.model_type!r} mapping does not match the source: "
                         + "; ".join(problems))


# ----------------------------------------------------------------------------- outputs
def check_output(out: str | Path) -> Path:
    """ValueError if `out` exists (a conversion never overwrites); returns it as a Path."""
    out = Path(out)
    if out.exists():
        raise ValueError(f"output {str(out)!r} already exists; remove it or choose another")
    return out


def _begin_output(out: Path) -> Path:
    """Collective: `<out>.tmp/`, emptied by rank 0 (a stale one is an interrupted conversion)."""
    tmp = out.with_name(out.name + ".tmp")
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    return tmp


def _publish(tmp: Path, out: Path) -> None:
    """Collective: after every rank is done, rank 0 fsyncs, marks COMPLETE and renames."""
    dist.barrier()
    if dist.get_rank() == 0:
        _finalize(tmp, out)
    dist.barrier()


def _copy_side_files(src: Path, dst: Path) -> None:
    """Config, generation config, tokenizer, processor, chat template: every non-weight file."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.endswith(_WEIGHT_SUFFIXES) and f.name != "COMPLETE":
            shutil.copy2(f, dst / f.name)


def _build(hf_config, pg, vpp: int | None, dtype: torch.dtype, use_te: bool | None):
    # no random init: every parameter is overwritten, and init of a large model takes minutes
    chunks = build_model(hf_config, pg, vpp=vpp, use_te=use_te, params_dtype=dtype,
                         config_overrides={"perform_initialization": False})
    for c in chunks:
        c.eval()
    return chunks


# ----------------------------------------------------------------------------- HF -> Megatron
def hf_to_megatron(hf_dir: str | Path, out_dir: str | Path, tp: int, pp: int,
                   vpp: int | None = None, *, use_te: bool | None = None, ep: int = 1,
                   etp: int | None = None) -> Path:
    """Convert a HF checkpoint into a Megatron distributed checkpoint at (tp, pp, vpp) and, for a
    mixture of experts, expert parallel `ep` and expert tensor parallel `etp` (None: tp).

    Collective over a world of tp * pp ranks, or a multiple of it that fits the experts
    (torch.distributed started here if needed). The
    result loads with `learner.checkpoint.load_checkpoint` at any layout (no optimizer state;
    `meta.json` records step 0). Returns `out_dir`.
    """
    from megatron.core import dist_checkpointing

    hf_config, dtype = check_hf_source(hf_dir)
    out = check_output(out_dir)
    pg = init_parallel(tp, pp, vpp, hf_config=hf_config, ep=ep, etp=etp)
    try:
        chunks = _build(hf_config, pg, vpp, dtype, use_te)
        _check_mapping_covers(chunks, hf_config, source_manifest(hf_dir)[0], pg)
        tmp = _begin_output(out)
        load_hf_into_megatron(chunks, hf_dir, pg, hf_config)
        dist_checkpointing.save({"model": model_sharded_state_dict(chunks)}, str(tmp))
        if dist.get_rank() == 0:
            _write_megatron_meta(tmp, Path(hf_dir), dtype, tp, pp, vpp)
        _publish(tmp, out)
    finally:
        destroy_parallel()
    return out


def _write_megatron_meta(tmp: Path, hf_dir: Path, dtype: torch.dtype, tp: int, pp: int,
                         vpp: int | None) -> None:
    # `layout` never equals a live layout: a converted checkpoint has no RNG states to restore
    meta = {"step": 0, "scheduler": None, "data_state": {}, "dtype": str(dtype).split(".")[-1],
            "layout": {"converted_from": "hf", "tp": tp, "pp": pp, "vpp": vpp}}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    _copy_side_files(hf_dir, tmp / HF_FILES_DIR)


# ----------------------------------------------------------------------------- Megatron -> HF
def resolve_megatron_checkpoint(path: str | Path) -> Path:
    """`path` if it is a complete checkpoint, else the newest complete `step_*` under it."""
    path = Path(path)
    if is_complete(path):
        return path
    latest = latest_checkpoint(path) if path.is_dir() else None
    if latest is None:
        raise ValueError(f"{str(path)!r} is not a complete Megatron checkpoint (no "
                         f"{COMPLETE_MARKER!r} marker: missing, or an interrupted save or "
                         "conversion) and holds no complete step_* checkpoint")
    return latest


def reference_config(ckpt: Path, reference_hf_dir: str | Path | None):
    """(HF config, its directory) describing a Megatron checkpoint: `reference_hf_dir`, or the
    `hf/` files a conversion stored with it. Checked against the mapping."""
    ref = Path(reference_hf_dir) if reference_hf_dir else ckpt / HF_FILES_DIR
    if not (ref / "config.json").is_file():
        raise ValueError(f"no Hugging Face config at {str(ref)!r}: pass the original HF "
                         "directory as the reference (config, tokenizer and processor files)")
    family_table(json.loads((ref / "config.json").read_text()).get("model_type", "<missing>"))
    hf_config = load_hf_config(ref)
    check_architecture(hf_config)
    return hf_config, ref


def _checkpoint_dtype(ckpt: Path, hf_config) -> torch.dtype:
    meta = json.loads((ckpt / "meta.json").read_text()) if (ckpt / "meta.json").is_file() else {}
    name = meta.get("dtype") or str(getattr(hf_config, "dtype", None) or "float32")
    return getattr(torch, str(name).split(".")[-1])


def megatron_to_hf(ckpt_dir: str | Path, out_dir: str | Path, tp: int, pp: int,
                   reference_hf_dir: str | Path | None = None, *, vpp: int | None = None,
                   shard_bytes: int = DEFAULT_SHARD_BYTES, dtype: torch.dtype | None = None,
                   use_te: bool | None = None, ep: int = 1, etp: int | None = None) -> Path:
    """Convert a Megatron distributed checkpoint (saved at any layout; a run's checkpoint root
    means its newest complete step) into a HF checkpoint, loading it at (tp, pp, vpp) with
    expert parallel `ep` and expert tensor parallel `etp` (None: tp).

    Collective over tp * pp ranks, or a multiple of it that fits the experts. `reference_hf_dir`
    gives config, tokenizer and processor (default: those stored by `hf_to_megatron`). `dtype`:
    of the exported tensors (default: the converted checkpoint's, else the config's). Returns
    `out_dir`.
    """
    ckpt = resolve_megatron_checkpoint(ckpt_dir)
    hf_config, ref = reference_config(ckpt, reference_hf_dir)
    dtype = dtype or _checkpoint_dtype(ckpt, hf_config)
    out = check_output(out_dir)
    pg = init_parallel(tp, pp, vpp, hf_config=hf_config, ep=ep, etp=etp)
    try:
        chunks = _build(hf_config, pg, vpp, dtype, use_te)
        load_checkpoint(ckpt, chunks, pg=pg)
        tmp = _begin_output(out)
        written = _write_hf_shards(chunks, tmp, pg, hf_config, shard_bytes)
        _check_written(written, hf_config)
        if pg.tp.rank() == 0 and pg.pp.rank() == 0 and pg.dp.rank() == 0:
            _copy_side_files(ref, tmp)
        _publish(tmp, out)
    finally:
        destroy_parallel()
    return out


class _ShardWriter:
    """Appends HF tensors to safetensors files of at most `limit` bytes (stage-local names)."""

    def __init__(self, out: Path, stage: int, limit: int):
        self.out, self.stage, self.limit = out, stage, limit
        self.buf: dict[str, torch.Tensor] = {}
        self.size = 0
        self.files: list[tuple[str, list[str], int]] = []

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():
            cpu = tensor.detach().to("cpu", copy=True).contiguous()
            nbytes = cpu.numel() * cpu.element_size()
            if self.buf and self.size + nbytes > self.limit:
                self.flush()
            self.buf[name] = cpu
            self.size += nbytes

    def flush(self) -> None:
        if not self.buf:
            return
        fname = f"stage{self.stage:03d}-{len(self.files):05d}.safetensors"
        save_file(self.buf, str(self.out / fname), metadata={"format": "pt"})
        self.files.append((fname, sorted(self.buf), self.size))
        self.buf, self.size = {}, 0


def _gather_on_tp0(param: torch.Tensor, dim: int | None, tp_group) -> list[torch.Tensor]:
    """The TP shards [tp] of `param` on TP rank 0 (others get []); replicated: its own copy."""
    if dim is None or tp_group.size() == 1:
        return [param.detach()]
    return _gather_on_first(param.detach(), tp_group)


def _gather_on_first(tensor: torch.Tensor, group) -> list[torch.Tensor]:
    """Every rank's `tensor` of `group`, in rank order, on its rank 0 (others get [])."""
    first = group.rank() == 0
    got = [torch.empty_like(tensor) for _ in range(group.size())] if first else None
    dist.gather(tensor.contiguous(), got, dst=dist.get_global_rank(group, 0), group=group)
    return got or []


def _experts_on_writer(shards: list[torch.Tensor], ep_group) -> list[list[torch.Tensor]]:
    """Every expert-parallel rank's expert-TP `shards` of the same local expert, in rank order,
    on expert-parallel rank 0 (others get []). The ranks of an expert-parallel group share their
    expert-TP rank, so either all of them hold the shards or none does."""
    if ep_group.size() == 1 or not shards:
        return [shards]
    per_shard = [_gather_on_first(shard, ep_group) for shard in shards]
    return [list(ranks) for ranks in zip(*per_shard)]


@torch.no_grad()
def _write_hf_shards(chunks, out: Path, pg, hf_config, shard_bytes: int) -> dict[str, tuple]:
    """Collective: stream every parameter into safetensors files, then rank 0 names the files
    `model-0000i-of-0000n.safetensors` (pipeline order) and writes the index. Returns the
    written {hub name: shape} on every rank."""
    args = mapping_args(hf_config)
    mt = args["model_type"]
    is_writer = pg.tp.rank() == 0 and pg.dp.rank() == 0
    # the stage's first rank: also expert-TP and expert-parallel rank 0, where experts gather
    assert not is_writer or pg.expt_tp.rank() == pg.ep.rank() == 0
    writer = _ShardWriter(out, pg.pp.rank(), shard_bytes)
    fuser = ExpertFuser(mt, num_experts(hf_config))
    shapes: dict[str, tuple] = {}
    for chunk in chunks:
        offset, (_, per_rank) = layer_offset(unwrap(chunk)), local_experts(unwrap(chunk))
        for name, p in megatron_params(chunk):
            shards = _gather_on_tp0(p, tp_split_dim(name, mt), split_group(name, mt, pg))
            by_rank = _experts_on_writer(shards, pg.ep) if is_expert(name, mt) else [shards]
            if not is_writer:
                continue
            for k, rank_shards in enumerate(by_rank):
                # Megatron's rule: expert-parallel rank k holds experts k * per_rank ...
                hf = fuser.add(megatron_shards_to_hf(name, rank_shards, layer_offset=offset,
                                                     expert_offset=k * per_rank, **args))
                shapes.update({n: tuple(v.shape) for n, v in hf.items()})
                writer.add(hf)
    if is_writer:
        fuser.close()
    writer.flush()
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (pg.pp.rank(), writer.files, shapes))
    if dist.get_rank() == 0:
        _write_index(out, sorted((stage, f) for stage, files, _ in parts for f in files))
    return {k: v for _, _, s in parts for k, v in s.items()}


def _write_index(out: Path, files: list[tuple[int, tuple[str, list[str], int]]]) -> None:
    weight_map, total = {}, 0
    for i, (_, (fname, names, size)) in enumerate(files):
        final = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        (out / fname).rename(out / final)
        (out / final).chmod(0o644)  # safetensors writes 0600; served checkpoints are shared
        for n in names:
            assert n not in weight_map, f"{n} written twice"
            weight_map[n] = final
        total += size
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2))


def _check_written(written: dict[str, tuple], hf_config) -> None:
    problems = manifest_differences(written, expected_hf_tensors(hf_config),
                                    what=" (in the exported checkpoint)")
    if problems:
        raise ValueError(f"export does not match {hf_config.model_type!r}: " + "; ".join(problems))

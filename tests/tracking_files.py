"""Read back what the loggers wrote: TensorBoard event files through tensorboard's own readers,
and an offline W&B run's record file (`run-<id>.wandb`) through W&B's record protobuf."""
from __future__ import annotations

import json
import struct
from pathlib import Path


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows them (its `EventAccumulator`)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tensorboard_event_steps(logdir: Path) -> list[int]:
    """The step of every summary event in every event file, in file order: what is on disk,
    duplicates included (TensorBoard's accumulator would hide some)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for path in sorted(Path(logdir).glob("*tfevents*")):
        steps += [e.step for e in EventFileLoader(str(path)).Load() if e.HasField("summary")]
    return steps


_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list[bytes]:
    """The records of a W&B transaction log: a 7-byte header (`:W&B`, magic, version), then
    32 kB blocks of chunks (crc32c, uint16 length, type: full, first, middle, last)."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B record file"
    pos, records, pending = 7, [], b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            records.append(pending)
    return records


def wandb_history(run_folder: Path) -> list[dict]:
    """The logged rows of an offline W&B run folder, in order: {"_step": ..., metric: value}."""
    from wandb.proto import wandb_internal_pb2

    (record_file,) = Path(run_folder).glob("run-*.wandb")
    rows = []
    for raw in wandb_records(record_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def wandb_offline_runs(root: Path) -> list[Path]:
    return sorted((Path(root) / "wandb").glob("offline-run-*"))

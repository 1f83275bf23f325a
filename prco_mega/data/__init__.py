"""Data: the synthetic perception-reasoning task, local-file readers and the image pipeline.

Imports only PIL, numpy and the standard library; DALI and pyarrow are imported when used.
"""
from prco_mega.data.captions import perception_accuracy, render_caption
from prco_mega.data.images import decode_image, grid_size, resize_to_grid
from prco_mega.data.preview import write_preview
from prco_mega.data.reader import ReaderConfig, ReaderStats, TaskReader, read_tasks
from prco_mega.data.synthetic import SyntheticConfig, SyntheticTaskSource

__all__ = [
    "ReaderConfig", "ReaderStats", "SyntheticConfig", "SyntheticTaskSource", "TaskReader",
    "decode_image", "grid_size", "perception_accuracy", "read_tasks", "render_caption",
    "resize_to_grid", "write_preview",
]

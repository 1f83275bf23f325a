"""Per-sequence model inputs of a vision trajectory: image patches and mrope positions.

The rollout engine expanded each image placeholder to one `<|image_pad|>` per merged patch using
the checkpoint's own processor settings; the learner must feed the same patches, so it runs the
same Hugging Face image processor on the same PIL images. A step reuses one image across
G_O captions and G_O * G_S answers, so patches are cached per image object for the step.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prco_mega.data.images import require_normalized
from prco_mega.learner.mrope import mrope_position_ids
from prco_mega.learner.packing import SequenceInputs
from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable
from prco_mega.types import Trajectory


class VisionInputs:
    """`encode(traj) -> SequenceInputs` for `packing.plan_and_pack` (Qwen2.5-VL family)."""

    def __init__(self, hf_dir: str | Path, hf_config: Any):
        ensure_torchvision_importable()
        from transformers import AutoImageProcessor

        self.processor = AutoImageProcessor.from_pretrained(str(hf_dir), local_files_only=True)
        self.image_token_id = int(hf_config.image_token_id)
        self.merge = int(hf_config.vision_config.spatial_merge_size)
        self._cache: dict[int, tuple[Any, torch.Tensor, torch.Tensor]] = {}

    def clear(self) -> None:
        """Forget cached patches (call once per step: images of past steps are not reused)."""
        self._cache.clear()

    def _patches(self, image: Any) -> tuple[torch.Tensor, torch.Tensor]:
        hit = self._cache.get(id(image))
        if hit is None or hit[0] is not image:
            require_normalized([image], "learner image processor")  # the engine's pixels
            out = self.processor(images=[image], return_tensors="pt")
            hit = (image, out["pixel_values"].float(), out["image_grid_thw"].long())
            self._cache[id(image)] = hit  # keeps `image` alive, so its id stays unique
        return hit[1], hit[2]

    def __call__(self, traj: Trajectory) -> SequenceInputs:
        ids = torch.tensor(list(traj.prompt_ids) + list(traj.response_ids), dtype=torch.long)
        if not traj.images:
            if (ids == self.image_token_id).any():
                raise ValueError(f"trajectory of task {traj.task_uid!r} has image tokens but no images")
            return SequenceInputs(torch.arange(ids.numel()).expand(3, -1))
        pixels, grids = zip(*(self._patches(im) for im in traj.images))
        grid = torch.cat(grids)
        positions = mrope_position_ids(ids[None, :], grid, self.image_token_id, self.merge)[:, 0]
        return SequenceInputs(positions, torch.cat(pixels), grid)


def expand_image_pads(ids: list[int], images: list[Any], encoder: VisionInputs) -> list[int]:
    """Replace each single `<|image_pad|>` of a rendered prompt by one pad per merged patch of its
    image (what the rollout engine does), for sequences the learner builds itself (warm start)."""
    pad, out, k = encoder.image_token_id, [], 0
    for tok in ids:
        if tok != pad:
            out.append(tok)
            continue
        if k >= len(images):
            raise ValueError(f"prompt has more image placeholders than images ({len(images)})")
        _, grid = encoder._patches(images[k])
        out.extend([pad] * int(grid.prod() // (encoder.merge * encoder.merge)))
        k += 1
    if k != len(images):
        raise ValueError(f"prompt has {k} image placeholders but {len(images)} images")
    return out

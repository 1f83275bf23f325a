"""`--verify` for checkpoint conversion: the same small input scored by Hugging Face transformers
on a HF checkpoint and by Megatron on a distributed checkpoint; per-token log-probs compared in
fp32.

The input is one chat prompt with a small random image when the directory has a processor (so the
vision tower's weights are checked too), else random token ids. Megatron scores it at the layout
of the running world through the learner's own `compute_logprobs` (TP log-softmax, pipeline
schedule); transformers runs on rank 0 only. Both models are built in fp32 whatever the stored
dtype, so the difference measures the conversion, not bf16 kernels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from prco_mega.bridge.convert import _build, resolve_megatron_checkpoint
from prco_mega.bridge.hf_io import load_hf_config
from prco_mega.learner.checkpoint import load_checkpoint
from prco_mega.learner.parallel import destroy_parallel, init_parallel
from prco_mega.learner.train_step import sequence_logprobs

VERIFY_TOLERANCE = 1e-4
"""Largest fp32 |log-prob difference| a correct conversion shows (tiny: ~1e-6)."""


def verify_input(hf_dir: str | Path, hf_config, seed: int = 0) -> dict[str, torch.Tensor]:
    """The processor's inputs for one image + question chat prompt: input_ids [1, T],
    attention_mask [1, T], pixel_values [P, C*T*ps*ps], image_grid_thw [1, 3], ... (random
    input_ids [1, 24] without a processor)."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(hf_dir), local_files_only=True)
    except (OSError, ValueError, TypeError):
        processor = None
    if processor is None or getattr(processor, "image_processor", None) is None:
        gen = torch.Generator().manual_seed(seed)
        low = min(hf_config.image_token_id, getattr(hf_config, "video_token_id", 1 << 30), 1000)
        ids = torch.randint(0, low, (1, 24), generator=gen)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (56, 56, 3), np.uint8))
    content = [{"type": "image"}, {"type": "text", "text": "How many red circles are there?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    return dict(processor(text=[text], images=[image], return_tensors="pt"))


@torch.no_grad()
def hf_logprobs(hf_dir: str | Path, sample: dict[str, torch.Tensor]) -> torch.Tensor:
    """[T-1] log p(token t | tokens < t) under transformers' model of `hf_dir` (fp32)."""
    import transformers

    cfg = load_hf_config(hf_dir)
    model_cls = getattr(transformers, cfg.architectures[0])
    model = model_cls.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    ids = sample["input_ids"]
    logits = model(**sample).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]


def megatron_logprobs(chunks, pg, hf_config, sample: dict[str, torch.Tensor]) -> torch.Tensor:
    """[T-1] the same log-probs from Megatron chunks (collective over the world)."""
    lp = sequence_logprobs(chunks, sample["input_ids"][0], hf_config, pg=pg,
                           pixel_values=sample.get("pixel_values"),
                           image_grid_thw=sample.get("image_grid_thw"))
    return lp[1:].float().cpu()


def verify_conversion(hf_dir: str | Path, ckpt_dir: str | Path, tp: int, pp: int,
                      vpp: int | None = None, *, use_te: bool | None = None) -> float:
    """max_t |log p_HF(t) - log p_Megatron(t)| in fp32 between transformers on `hf_dir` and
    Megatron at (tp, pp, vpp) loaded from `ckpt_dir`. Collective; every rank gets the value."""
    hf_config = load_hf_config(hf_dir)
    sample = verify_input(hf_dir, hf_config)
    pg = init_parallel(tp, pp, vpp, hf_config=hf_config)
    try:
        chunks = _build(hf_config, pg, vpp, torch.float32, use_te)
        load_checkpoint(resolve_megatron_checkpoint(ckpt_dir), chunks, pg=pg)
        mega = megatron_logprobs(chunks, pg, hf_config, sample)
        diff = [0.0]
        if dist.get_rank() == 0:
            diff = [float((hf_logprobs(hf_dir, sample) - mega).abs().max())]
        dist.broadcast_object_list(diff, src=0)
    finally:
        destroy_parallel()
    return diff[0]

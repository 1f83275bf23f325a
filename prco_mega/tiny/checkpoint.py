"""The tiny checkpoint: a tokenizer trained here on a corpus (`tiny.tokenizer`) and a family's tiny
random model with a matching vocabulary (the family's `TinyBuilder`), saved as one Hugging Face
model directory that transformers, vLLM and Megatron all load."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from prco_mega import families
from prco_mega.bridge.hf_io import save_pretrained_hub
from prco_mega.tiny.tokenizer import CHAT_TEMPLATE, special_token_ids, train_tokenizer


def make_tiny_checkpoint(out_dir: str | Path, corpus: Iterable[str], seed: int = 0,
                         sizes=None, vocab_size: int = 505, init_std: float = 0.02,
                         family: str = "qwen2_5_vl") -> Path:
    """Train the tokenizer on `corpus`, build the tiny random model of `family` (a model_type;
    `sizes` defaults to the family's `TinyBuilder.sizes()`) with a matching vocab
    (`sizes.vocab_size` is replaced by the tokenizer's length, a multiple of 16), and save model,
    tokenizer and processor into `out_dir`. Returns `out_dir`."""
    tiny = families.family(family).tiny
    out = Path(out_dir)
    tokenizer = train_tokenizer(corpus, vocab_size=vocab_size)
    sizes = dataclasses.replace(sizes or tiny.sizes(), vocab_size=len(tokenizer))
    config = tiny.config(sizes, special_token_ids(tokenizer))
    # fused experts (mixture-of-experts families) in the hub's layout, the one vLLM loads
    save_pretrained_hub(tiny.build(config, seed=seed, init_std=init_std), out)
    tokenizer.save_pretrained(out)
    tiny.save_processor(out, tokenizer, CHAT_TEMPLATE)
    return out


def save_tiny_model(out_dir: str | Path, family: str, sizes=None, seed: int = 0) -> Path:
    """Only the tiny random model of `family` (no tokenizer or processor; `sizes` defaults to the
    family's `TinyBuilder.sizes()`), saved as a Hugging Face checkpoint in `out_dir`: for the
    parity checks, which feed token ids directly. Returns `out_dir`."""
    tiny = families.family(family).tiny
    return save_pretrained_hub(tiny.build(tiny.config(sizes or tiny.sizes(), None), seed=seed),
                               out_dir)

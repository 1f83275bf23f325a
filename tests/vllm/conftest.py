"""Shared fixtures for the vLLM engine tests: one tiny checkpoint and one engine per session
(an engine start costs seconds), plus the Hugging Face transformers reference on the same files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hf_reference import load_hf_model

pytest.importorskip("vllm")

INIT_STD = 0.2
"""Larger than the usual 0.02 so that the random model's logits have clear argmax margins
(greedy comparisons then test the engine, not float ties) and varied outputs."""


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from prco_mega.tiny.checkpoint import make_tiny_checkpoint
    from prco_mega.tiny.tokenizer import demo_corpus

    out = tmp_path_factory.mktemp("tiny_qwen25vl")
    return make_tiny_checkpoint(out, demo_corpus(3000, seed=0), seed=0, init_std=INIT_STD)


@pytest.fixture(scope="session")
def engine(tiny_dir):
    from prco_mega.rollout import EngineConfig, VllmEngine

    eng = VllmEngine(tiny_dir, EngineConfig(dtype="float32", max_model_len=512, seed=0))
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def processor(tiny_dir):
    from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable

    ensure_torchvision_importable()
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def hf_model(tiny_dir):
    return load_hf_model(tiny_dir)


@pytest.fixture(scope="session")
def image():
    """A 56x56 RGB test image: 4x4 patches of 14 px, merged to 4 image tokens."""
    from PIL import Image

    from prco_mega.data.images import normalize_image

    rng = np.random.default_rng(7)
    return normalize_image(Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)))


@pytest.fixture(scope="session")
def prompts():
    """The shipped role prompts (test_vllm_engine.py overrides this name with its own)."""
    from prco_mega.roles.prompts import PromptSet

    return PromptSet()

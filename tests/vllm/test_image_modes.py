"""Every image mode reaches the learner and the engine as the same pixels (issue 22, case 1).

A transparent image flattened two ways (PIL's `convert("RGB")` drops alpha; vLLM composites onto
white) trains the learner on other pixels than the rollout saw. Here each mode is decoded by the
reader's path, and: the pixels equal vLLM's own flattening of the raw image; vLLM leaves them as
they are; the learner's processor inputs equal the engine's processor inputs; and vLLM's greedy
tokens equal transformers' fed the learner's pixel values. An image that skipped the
normalisation is refused by both sides.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from hf_reference import chat, hf_greedy, hf_inputs
from prco_mega.data.images import decode_image
from prco_mega.rollout import GenerationRequest, SamplingSettings

pytestmark = pytest.mark.vllm

SIDE = 56  # 4 merged image tokens
GREEDY = SamplingSettings(n=1, temperature=0.0, max_new_tokens=8)


def _square_alpha() -> np.ndarray:
    """[SIDE, SIDE] alpha: transparent background, an opaque square, a half-transparent band."""
    alpha = np.zeros((SIDE, SIDE), np.uint8)
    alpha[14:42, 14:42] = 255
    alpha[:, :7] = 128
    return alpha


def raw_images() -> dict[str, Image.Image]:
    """One image per mode, each with content that a wrong flattening would change."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
    black = np.zeros((SIDE, SIDE, 3), np.uint8)  # black on transparent: one black image if
    palette = Image.fromarray(rgb).quantize(16)    # alpha were dropped
    palette.info["transparency"] = 0
    wide = np.linspace(0, 65535, SIDE * SIDE).reshape(SIDE, SIDE).astype(np.uint16)
    return {
        "RGBA": Image.fromarray(np.dstack([black, _square_alpha()]), "RGBA"),
        "LA": Image.fromarray(np.dstack([grey, _square_alpha()]), "LA"),
        "P+transparency": palette,
        "L": Image.fromarray(grey, "L"),
        "I;16": Image.fromarray(wide),
        "CMYK": Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 4), dtype=np.uint8), "CMYK"),
    }


def encoded(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="TIFF" if image.mode == "CMYK" else "PNG")
    return buf.getvalue()


def vllm_view(image: Image.Image) -> Image.Image:
    """What vLLM's input parser does to a PIL image before its processor sees it."""
    from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable

    ensure_torchvision_importable()
    from vllm.multimodal.image import convert_image_mode, normalize_image

    return convert_image_mode(normalize_image(image), "RGB")


@pytest.fixture(scope="module")
def decoded() -> dict[str, Image.Image]:
    return {mode: decode_image(encoded(raw)) for mode, raw in raw_images().items()}


@pytest.fixture(scope="module")
def learner_inputs(tiny_dir):
    from prco_mega.bridge.hf_io import load_hf_config
    from prco_mega.learner.vision_inputs import VisionInputs

    return VisionInputs(tiny_dir, load_hf_config(tiny_dir))


def test_pixels_are_vllms_flattening_and_vllm_keeps_them(decoded):
    raws = raw_images()
    for mode, image in decoded.items():
        ours = np.asarray(image)
        assert image.mode == "RGB" and np.array_equal(np.asarray(vllm_view(image)), ours), mode
        if mode == "I;16":  # PIL (and so vLLM) clips 16-bit values at 255: a white image
            top = (np.asarray(raws[mode], dtype=np.uint16) >> 8).astype(np.uint8)
            assert np.array_equal(ours, np.repeat(top[..., None], 3, axis=2))
        else:
            assert np.array_equal(ours, np.asarray(vllm_view(raws[mode]))), mode
    square = np.asarray(decoded["RGBA"])
    assert (square[20, 20] == 0).all() and (square[0, 30] == 255).all()  # black square, white
    assert (square[30, 0] == 127).all()  # 50% black over white (vLLM's paste rounding)


def test_learner_and_engine_see_the_same_pixels_and_agree_greedily(
        engine, hf_model, processor, learner_inputs, decoded):
    text = chat(processor, "What is in the picture?", True)
    images = list(decoded.values())
    gens = engine.generate([GenerationRequest(prompt=text, images=[im]) for im in images],
                           GREEDY)
    for image, (gen,) in zip(images, gens):
        pixels, grid = learner_inputs._patches(image)
        engine_side = hf_inputs(processor, text, [vllm_view(image)])
        assert torch.equal(pixels, engine_side["pixel_values"].float())
        assert torch.equal(grid, engine_side["image_grid_thw"].long())
        want = hf_greedy(hf_model, processor, text, [image], GREEDY.max_new_tokens)
        cut = len(gen.token_ids)  # the engine stops before a sampled vision placeholder
        assert gen.token_ids == want[:cut] and (cut == len(want)
                                                or want[cut] in engine.placeholder_ids)
    answers = {tuple(g[0].token_ids) for g in gens}
    assert len(answers) > 1  # the images differ to the model, so the check can fail


def test_unnormalised_images_are_refused_by_engine_and_learner(engine, processor,
                                                                learner_inputs):
    raw = raw_images()["RGBA"]
    with pytest.raises(TypeError, match=r"vLLM engine request: image 0 \(RGBA\) did not go "
                                        r"through prco_mega\.data\.images\.normalize_image"):
        engine.generate([GenerationRequest(prompt=chat(processor, "Hi", True), images=[raw])],
                        GREEDY)
    with pytest.raises(TypeError, match=r"learner image processor: image 0 \(RGB\)"):
        learner_inputs._patches(raw.convert("RGB"))

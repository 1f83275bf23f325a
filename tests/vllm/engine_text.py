"""What an engine prompt must decode to, shared by the rollout and evaluation tests."""
from __future__ import annotations

from prco_mega.roles.prompts import IMAGE_PLACEHOLDER

PAD = "<|image_pad|>"


def image_tokens(image_size: int) -> int:
    """One pad per merged 28x28 patch (the processor's max_pixels admits 224x224 unresized)."""
    return (image_size // 28) ** 2


def decode(engine, ids) -> str:
    return engine.tokenizer.decode(ids, skip_special_tokens=False)


def expanded(prompt_text: str, n_image_tokens: int) -> str:
    """The prompt text with each image pad expanded to the image's tokens."""
    return prompt_text.replace(IMAGE_PLACEHOLDER,
                               IMAGE_PLACEHOLDER.replace(PAD, PAD * n_image_tokens))

"""Hugging Face transformers references for the vLLM engine tests (same checkpoint, same image)."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch


def load_hf_model(model_dir: Path):
    from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable

    ensure_torchvision_importable()
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32).eval()


def chat(processor, question: str, with_image: bool) -> str:
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
    return processor.apply_chat_template([{"role": "user", "content": content}],
                                         tokenize=False, add_generation_prompt=True)


def hf_inputs(processor, text: str, images: list):
    return processor(text=[text], images=images or None, return_tensors="pt")


def hf_greedy(model, processor, text: str, images: list, max_new_tokens: int) -> list[int]:
    inputs = hf_inputs(processor, text, images)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                             temperature=None, top_p=None, top_k=None)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def hf_token_logprobs(model, processor, text: str, images: list, response: list[int],
                      temperature: float = 1.0) -> list[float]:
    """log_softmax(logits / T) of each response token, teacher-forced (the learner's definition)."""
    inputs = hf_inputs(processor, text, images)
    prompt_len = inputs["input_ids"].shape[1]
    resp = torch.tensor([response])
    inputs["input_ids"] = torch.cat([inputs["input_ids"], resp], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat(
            [inputs["mm_token_type_ids"], torch.zeros_like(resp)], dim=1)
    with torch.no_grad():
        logits = model(**inputs).logits[0, prompt_len - 1:-1].float()  # [L, V]
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(1, resp.T)[:, 0].tolist()


def write_perturbed_checkpoint(src: Path, dst: Path, scale: float, seed: int) -> dict:
    """Copy `src` to `dst` with every checkpoint tensor perturbed by N(0, scale^2 * std(t)^2)-ish
    noise; returns the perturbed tensors by checkpoint name (what a bridge would push)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(src / "model.safetensors")
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in sorted(tensors.items()):
        spread = t.float().std() if t.numel() > 1 else t.abs().float()
        spread = float(spread) if float(spread) > 0 else 1.0
        out[name] = t + scale * spread * torch.randn(t.shape, generator=gen, dtype=t.dtype)
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    return out

"""The experts vLLM's routers pick for each sample (rollout routing replay, R3).

Where vLLM's Model Runner V2 runs (CUDA builds with Triton), it returns them itself
(`enable_return_routed_experts`; `from_runner_v2` puts them in our layout). On CPU, the V1 runner:

vLLM 0.32 returns routed expert ids only from Model Runner V2, which needs Triton with a CPU
backend on CPU. The V1 runner's MoE routers (`BaseRouter.set_capture_fn`) call a function with
the logical expert ids [tokens, top_k] of every forward, before any expert-placement mapping.
After the batched generation the engine re-scores each sample alone: one prefill of the request's
prompt (one pad per image, as sent) plus the response, with the same images, `max_tokens=1`, one
request per `LLM.generate` call, so every id a router sees in that call belongs to that sample,
in token order. The prefill reads no prefix cache (`skip_reading_prefix_cache`), else the cached
prompt blocks would never reach the routers.

The capture functions run in the worker (`collective_rpc`), which is this process's: the engine
runs vLLM in-process. They are installed for the re-score only, so routing capture costs nothing
when off. At engine TP>1 every rank re-scores the same samples in the same order (generation is
already in lockstep) and each rank's routers see every token (MoE under plain TP splits the
experts' width, not the tokens).

vLLM never runs the position at `max_model_len - 1` (a prompt of `max_model_len` tokens is
refused), so a sample that fills `max_model_len` re-scores all but its last token, and the last
row repeats the one before it. That row cannot change the learner's loss: the last position's
output only predicts the token after the response.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

_EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
_CAPTURES: dict[int, list[list[np.ndarray]]] = {}
"""id(worker) -> per MoE layer, the [tokens, top_k] id blocks captured so far."""


def num_routed_experts(hf_config: dict[str, Any]) -> int:
    """Routed experts per MoE layer from a Hugging Face `config.json` (its `text_config` for a
    vision-language model); 0 for a dense model."""
    text = hf_config.get("text_config", hf_config)
    return max(int(text.get(k) or 0) for k in _EXPERT_COUNT_KEYS)


def routing_dtype(num_experts: int) -> np.dtype:
    """The narrowest dtype of the ids: uint8 up to 256 experts, int16 beyond."""
    return np.dtype(np.uint8 if num_experts <= 256 else np.int16)


def stack_routing(per_layer: Sequence[Sequence[np.ndarray]], num_tokens: int,
                  num_experts: int) -> np.ndarray:
    """[num_tokens, layers, top_k] routed ids from each MoE layer's captured blocks
    ([tokens_i, top_k] per forward, in order), in `routing_dtype(num_experts)`. Raises
    RuntimeError when a layer did not see exactly `num_tokens` tokens (a prefix-cache hit or a
    padded forward would otherwise shift every row)."""
    if not per_layer:
        raise RuntimeError("routing capture: no MoE layer captured anything")
    layers = [np.concatenate(blocks) if blocks else np.zeros((0, 0), np.int64)
              for blocks in per_layer]
    counts = [len(ids) for ids in layers]
    if any(c != num_tokens for c in counts):
        raise RuntimeError(f"routing capture: the MoE layers saw {counts} tokens in the "
                           f"re-score, expected {num_tokens} (prompt + response) in each")
    return np.stack(layers, axis=1).astype(routing_dtype(num_experts))


def repeat_last_row(routing: np.ndarray, rows: int) -> np.ndarray:
    """`routing` [T, L, k] extended to `rows` rows by repeating its last row (the positions
    vLLM cannot run at `max_model_len`; see the module doc)."""
    extra = np.repeat(routing[-1:], rows - len(routing), axis=0)
    return np.concatenate([routing, extra])


def from_runner_v2(routed: np.ndarray, rows: int, num_experts: int) -> np.ndarray:
    """A sample's routing as vLLM's Model Runner V2 returns it (`CompletionOutput.routed_experts`,
    [prompt + generated - 1, L, k]: the last sampled token never runs through the model) in our
    layout, [rows = prompt + response, L, k]: cut to `rows` (a response that lost its trailing
    placeholder token) or the last row repeated (the unrun last position; module doc)."""
    routed = np.asarray(routed)[:rows].astype(routing_dtype(num_experts))
    if len(routed) == 0:
        raise RuntimeError("vLLM returned no routed experts for a sample")
    return routed if len(routed) == rows else repeat_last_row(routed, rows)


# ---------------------------------------------------------------------- worker side (vLLM)
def _moe_runners(worker) -> list:
    """This worker's MoE layers (vLLM's `MoERunner`), in layer order."""
    from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner

    model = worker.model_runner.get_model()
    runners = [m for m in model.modules() if isinstance(m, MoERunner)]
    return sorted(runners, key=lambda r: r.layer_id)


def _capture_into(store: list[np.ndarray]):
    import torch
    from vllm.forward_context import get_forward_context, is_forward_context_available

    def capture(topk_ids: torch.Tensor) -> None:
        # a forward padded to a captured batch size marks its padding rows; they are no tokens
        pad = get_forward_context().is_padding if is_forward_context_available() else None
        if pad is not None and pad.shape[0] == topk_ids.shape[0]:
            topk_ids = topk_ids[~pad]
        store.append(topk_ids.to("cpu", torch.int64, copy=True).numpy())

    return capture


def install_capture(worker) -> int:
    """Runs on each worker: capture every MoE router's ids from now on; returns the layer
    count (0: no MoE layer, nothing installed)."""
    from vllm.model_executor.layers.fused_moe.router.base_router import BaseRouter

    runners = _moe_runners(worker)
    stores: list[list[np.ndarray]] = [[] for _ in runners]
    for runner, store in zip(runners, stores):
        if runner.is_monolithic or not isinstance(runner.router, BaseRouter):
            raise ValueError(f"routing capture needs vLLM's modular MoE path with a BaseRouter; "
                             f"{runner.layer_name} has router {type(runner.router).__name__} "
                             f"(monolithic kernel: {runner.is_monolithic})")
        runner.router.set_capture_fn(_capture_into(store))
    if runners:
        _CAPTURES[id(worker)] = stores
    return len(runners)


def remove_capture(worker) -> list[list[np.ndarray]]:
    """Runs on each worker: uninstall the capture functions; returns what they captured, per
    MoE layer in layer order."""
    for runner in _moe_runners(worker):
        runner.router.set_capture_fn(None)
    return _CAPTURES.pop(id(worker), [])


def installed_captures(worker) -> int:
    """Runs on each worker: MoE routers with a capture function installed (for tests)."""
    return sum(getattr(r.router, "capture_fn", None) is not None for r in _moe_runners(worker))


def rescore_routing(llm, sampling_params_cls, prompt: dict[str, Any], expected_ids: list[int],
                    num_experts: int, max_model_len: int) -> np.ndarray:
    """[len(expected_ids), MoE layers, top_k] routed ids of one sample: a prefill of `prompt`
    (vLLM's prompt dict: prompt ids as a request sends them + the response, and its images) on
    `llm`, whose expanded prompt must be `expected_ids` (the sample's prompt + response)."""
    ids = list(prompt["prompt_token_ids"])
    whole = len(expected_ids) < max_model_len
    if not whole:  # vLLM refuses a prompt of max_model_len tokens (module doc)
        prompt = dict(prompt, prompt_token_ids=ids[:-1])
    params = sampling_params_cls(max_tokens=1, temperature=0.0, skip_reading_prefix_cache=True)
    try:
        llm.collective_rpc(install_capture)
        (out,) = llm.generate([prompt], params, use_tqdm=False)
    finally:
        captured = llm.collective_rpc(remove_capture)[0]
    seen = list(out.prompt_token_ids)
    if seen != (expected_ids if whole else expected_ids[:-1]):
        raise RuntimeError(f"routing re-score: vLLM's prompt ({len(seen)} ids) is not the "
                           f"sample's prompt + response ({len(expected_ids)} ids)")
    routing = stack_routing(captured, len(seen), num_experts)
    return routing if whole else repeat_last_row(routing, len(expected_ids))

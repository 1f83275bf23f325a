"""Activation memory of a Megatron learner step at each recompute setting, beside the planner's.

    python tools/gpu_check.py              # CUDA (tools/gpu_check.sh runs it): one table
    python tools/gpu_check.py --dry-run    # anywhere: the settings, the planner's figures and the
                                           # table's columns; every measured cell stays "-"

Simplifications, stated first: one GPU (a world of one, TP = PP = 1, no DDP, no optimizer step);
one micro-batch of T text tokens (the ViT is built but gets no image); random bf16 weights of a
Qwen2.5-VL-shaped model (`MODEL`); the loss is the fused PPO loss head (`prco_kernels`) on random
targets, advantages and old log-probs. Each setting builds a fresh model, runs one warm-up step
(gradients, cuBLAS workspace and Triton kernels allocated), then one measured step.

Two measurements per setting:
- saved: `SavedActivations`, the bytes of the storages the autograd graph keeps for the backward
  inside the decoder (each storage once however many saved tensors view it; parameters left out):
  the most kept at once through the forward and the backward, where a checkpoint's re-run saves
  again. This is what the planner's activation row counts (`cluster.memory.
  decoder_activation_bytes`: kept through the forward + re-run at once in the backward).
- CUDA: `torch.cuda.max_memory_allocated()` during the step minus what was allocated before it
  (weights, gradients, inputs), i.e. activations + the loss head's working set + transient buffers;
  beside the planner's activation + fused loss head rows.
CI runs the same `SavedActivations` / `decoder_step` on CPU (tests/distributed/scripts/
plan_vs_measured.py); only the CUDA column is this script's own.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

# a bare checkout (the GPU machine gets the repository, no `pip install -e .`)
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "kernels")]

import prco_kernels as pk  # noqa: E402
from prco_mega.cluster.memory import decoder_activation_bytes, fused_loss_head_bytes  # noqa: E402
from prco_mega.cluster.plan_inputs import PlanInputs  # noqa: E402
from prco_mega.cluster.sizes import ModelDims  # noqa: E402
from prco_mega.dist.world import init_world  # noqa: E402
from prco_mega.families.qwen2_5_vl.tiny import TinySizes, tiny_qwen25vl_config  # noqa: E402
from prco_mega.learner.config import RecomputeConfig  # noqa: E402
from prco_mega.learner.parallel import init_parallel  # noqa: E402
from prco_mega.learner.provider import build_model  # noqa: E402

MIB = 2**20


@dataclass(frozen=True)
class Model:
    """Text sizes of the measured model (a Qwen2.5-VL with a two-block ViT that stays idle)."""

    hidden: int = 2048
    intermediate: int = 5632
    layers: int = 8
    heads: int = 16
    kv_heads: int = 4
    vocab: int = 32768
    tokens: int = 4096
    """Tokens of the one micro-batch (the model's max_position_embeddings)."""


MODEL = Model()


def settings(layers: int) -> dict[str, RecomputeConfig]:
    """The recompute settings measured, by name: none, selective (attention; attention + MLP),
    full (every layer alone; pairs of layers; the first half of the layers only)."""
    return {
        "none": RecomputeConfig("none"),
        "selective core_attn": RecomputeConfig("selective", modules=["core_attn"]),
        "selective core_attn+mlp": RecomputeConfig("selective", modules=["core_attn", "mlp"]),
        "full uniform 1": RecomputeConfig("full", "uniform", 1),
        "full uniform 2": RecomputeConfig("full", "uniform", 2),
        f"full block {layers // 2}": RecomputeConfig("full", "block", layers // 2),
    }


# ----------------------------------------------------------------------------- measuring
class _Held:
    """What the pack hook hands autograd: its release (weakref finalizer) ends the count."""

    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class SavedActivations:
    """Bytes of the storages the autograd graph keeps, counted through `saved_tensors_hooks`.

    Counting is on inside `module` (the decoder block) minus `skip` (its final norm) during the
    forward, and everywhere during the backward (where only checkpointed layers save tensors).
    Each storage counts once while any saved tensor views it; `skip_storages` (the parameters)
    never count. `forward`: bytes kept when the forward returns; `peak`: the most kept at once.
    """

    def __init__(self, module: torch.nn.Module, skip: torch.nn.Module, skip_storages: set[int]):
        self.live: dict[int, list[int]] = {}  # storage ptr -> [nbytes, saved tensors viewing it]
        self.now = self.peak = self.forward = 0
        self.on = False
        self.skip_storages = skip_storages
        self.hooks = []
        for mod, enter in ((module, True), (skip, False)):
            self.hooks += [
                mod.register_forward_pre_hook(lambda *_, v=enter: setattr(self, "on", v)),
                mod.register_forward_hook(lambda *_, v=enter: setattr(self, "on", not v))]

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()

    def _pack(self, t: torch.Tensor):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if not self.on or key in self.skip_storages or storage.nbytes() == 0:
            return t
        held = _Held(t)
        entry = self.live.setdefault(key, [storage.nbytes(), 0])
        if entry[1] == 0:
            self.now += entry[0]
            self.peak = max(self.peak, self.now)
        entry[1] += 1
        weakref.finalize(held, self._release, key)
        return held

    def _release(self, key: int) -> None:
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[key]

    @staticmethod
    def _unpack(x):
        return x.tensor if isinstance(x, _Held) else x

    @contextlib.contextmanager
    def counting(self, everywhere: bool = False):
        """Count what is saved inside the block (forward) or `everywhere` (backward)."""
        if everywhere:
            self.on = True
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                yield
        finally:
            self.on = False


def build_chunk(hf_config, pg, rc: RecomputeConfig, dtype: torch.dtype):
    """The learner's model chunk (TP = PP = 1) with `rc` reaching Megatron as the learner passes
    it (`LearnerConfig.recompute.megatron_fields()`), in training mode."""
    (chunk,) = build_model(hf_config, pg, params_dtype=dtype,
                           config_overrides=rc.megatron_fields())
    return chunk.train()


def decoder_step(chunk, tokens_1T: torch.Tensor, loss_of) -> SavedActivations:
    """One forward and backward of `chunk` on text tokens [1, T]; `loss_of(hidden_TH, weight_VH)`
    the scalar loss on the final-norm hidden states and the output weight. Returns the meter."""
    from prco_mega.learner.model import forward

    lm = chunk.language_model
    meter = SavedActivations(lm.decoder, lm.decoder.final_layernorm,
                             {p.untyped_storage().data_ptr() for p in chunk.parameters()})
    t = tokens_1T.shape[1]
    positions = torch.arange(t, device=tokens_1T.device).view(1, 1, t).expand(3, 1, t)
    try:
        with meter.counting():
            hidden, weight = forward(chunk, tokens_1T, positions, return_hidden=True)
        meter.forward = meter.now
        loss = loss_of(hidden[:, 0], weight)
        with meter.counting(everywhere=True):
            loss.backward()
    finally:
        meter.close()
    assert meter.now == 0, "a saved tensor outlived the backward"
    return meter


def planned(dims: ModelDims, rc: RecomputeConfig, tokens: int, flash: bool) -> dict[str, float]:
    """The planner's decoder activations (kept + re-run at once) and fused loss head for one
    micro-batch of `tokens` on one GPU, 16-bit activations."""
    x = PlanInputs(model=dims, tp=1, pp=1, dp=1, sequence_parallel=False,
                   micro_batch_tokens=tokens, max_model_len=tokens, recompute=rc,
                   flash_attention=flash, rollout_batch=1)
    kept, rerun = decoder_activation_bytes(x, rc, chunks=1)
    return {"kept": kept, "rerun": rerun, "activations": kept + rerun,
            "loss_head": fused_loss_head_bytes(tokens, dims.vocab, dims.hidden)}


# ----------------------------------------------------------------------------- the GPU run
def hf_config(m: Model):
    """A Qwen2.5-VL config with `m`'s text sizes (head_dim 128: mrope sections 16 + 24 + 24)."""
    sizes = TinySizes(vocab_size=m.vocab, hidden_size=m.hidden, intermediate_size=m.intermediate,
                      num_layers=m.layers, num_heads=m.heads, num_kv_heads=m.kv_heads,
                      mrope_section=(16, 24, 24))
    return tiny_qwen25vl_config(sizes)


def model_dims(m: Model) -> ModelDims:
    return ModelDims("gpu-check", hidden=m.hidden, intermediate=m.intermediate, layers=m.layers,
                     heads=m.heads, kv_heads=m.kv_heads, vocab=m.vocab, tie_embeddings=False)


def fused_ppo_loss(targets_T, old_T, adv_T, w_T):
    """`loss_of` for `decoder_step`: the fused Triton loss head with the PPO loss, as the learner's
    `kernels.impl: triton` path runs it."""
    def loss_of(hidden_TH, weight_VH):
        fn = pk.ppo_kl_loss_fn(old_T, adv_T, w_T, impl="triton")
        return pk.fused_logprob_loss_head(hidden_TH, weight_VH, targets_T, fn, impl="triton")[0]

    return loss_of


def measure_cuda(cfg, pg, rc: RecomputeConfig, m: Model) -> dict[str, float]:
    """Saved bytes, CUDA peak above the pre-step allocation, and step seconds of one setting."""
    g = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randint(0, m.vocab - 8, (1, m.tokens), generator=g).cuda()
    targets = torch.randint(0, m.vocab - 8, (m.tokens,), generator=g).cuda()
    old = (-3.0 + torch.randn(m.tokens, generator=g)).cuda()
    adv = torch.randn(m.tokens, generator=g).cuda()
    w = torch.full((m.tokens,), 1.0 / m.tokens, device="cuda")
    chunk = build_chunk(cfg, pg, rc, torch.bfloat16)
    loss_of = fused_ppo_loss(targets, old, adv, w)
    decoder_step(chunk, tokens, loss_of)  # warm-up: .grad, workspaces, Triton compiles
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    meter = decoder_step(chunk, tokens, loss_of)
    torch.cuda.synchronize()
    out = {"saved": meter.peak, "cuda": torch.cuda.max_memory_allocated() - base,
           "seconds": time.perf_counter() - start}
    del chunk
    torch.cuda.empty_cache()
    return out


# ----------------------------------------------------------------------------- the table
COLUMNS = ("setting", "plan act MiB", "saved MiB", "saved/plan", "plan act+head MiB",
           "CUDA peak MiB", "CUDA/plan", "step ms")


def table(rows: list[tuple[str, dict, dict | None]]) -> str:
    """One line per setting: the planner's figures, and the measured ones or "-" (dry run)."""
    widths = [max(len(c), 24 if i == 0 else 0) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.rjust(wd) if i else c.ljust(wd)
                       for i, (c, wd) in enumerate(zip(COLUMNS, widths)))]
    for name, plan, got in rows:
        act, head = plan["activations"], plan["activations"] + plan["loss_head"]
        cells = [name, f"{act / MIB:.1f}"]
        if got is None:
            cells += ["-", "-", f"{head / MIB:.1f}", "-", "-", "-"]
        else:
            cells += [f"{got['saved'] / MIB:.1f}", f"{got['saved'] / act:.2f}",
                      f"{head / MIB:.1f}", f"{got['cuda'] / MIB:.1f}",
                      f"{got['cuda'] / head:.2f}", f"{got['seconds'] * 1e3:.1f}"]
        lines.append("  ".join(c.rjust(wd) if i else c.ljust(wd)
                               for i, (c, wd) in enumerate(zip(cells, widths))))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true",
                    help="print the settings, the planner's figures and the columns; measure "
                         "nothing (no GPU needed)")
    args = ap.parse_args(argv)
    m = MODEL
    dims = model_dims(m)
    plans = {name: planned(dims, rc, m.tokens, flash=True)
             for name, rc in settings(m.layers).items()}
    print(f"# {m.layers} layers, hidden {m.hidden}, {m.heads} heads ({m.kv_heads} KV), ffn "
          f"{m.intermediate}, vocab {m.vocab}, {m.tokens} tokens, bf16, fused loss head; plan: "
          "flash attention, 16-bit activations")
    if args.dry_run:
        print("# dry run: nothing measured")
        print(table([(name, plan, None) for name, plan in plans.items()]))
        return 0
    if not torch.cuda.is_available():
        print("error: no CUDA device (use --dry-run on CPU)", file=sys.stderr)
        return 2
    init_world()
    pg = init_parallel(1, 1)
    cfg = hf_config(m)
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = [(name, plans[name], measure_cuda(cfg, pg, rc, m))
            for name, rc in settings(m.layers).items()]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`learner.optim.cpu_offload` / `precision_aware`: the Megatron optimizer fields they become on a
GPU, and the refusals, naming the values, wherever Megatron 0.16.1's HybridDeviceOptimizer cannot
run (checked on this machine: on CPU its step raises a KeyError for parameters that already live
on the host; with fp32 weights its constructor raises "can't optimize a non-leaf Tensor")."""
from __future__ import annotations

import importlib.util

import pytest

from prco_mega.learner.config import OptimizerConfig
from prco_mega.learner.optim import offload_fields


def test_offload_becomes_megatrons_hybrid_optimizer_fields_on_a_gpu():
    o = OptimizerConfig(cpu_offload=True, offload_fraction=0.75, precision_aware=True)
    o.validate()
    assert offload_fields(o, "bf16", cuda_available=True, have_te=True) == {
        "optimizer_cpu_offload": True, "optimizer_offload_fraction": 0.75,
        "use_precision_aware_optimizer": True, "overlap_cpu_optimizer_d2h_h2d": True}
    assert offload_fields(OptimizerConfig(), "fp32", cuda_available=False, have_te=False) == {}


def test_megatrons_fields_are_accepted_by_its_optimizer_config():
    from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig

    o = OptimizerConfig(cpu_offload=True, offload_fraction=0.5)
    cfg = MegatronOptimizerConfig(bf16=True, use_distributed_optimizer=True,
                                  **offload_fields(o, "bf16", cuda_available=True, have_te=False))
    assert cfg.optimizer_cpu_offload and cfg.optimizer_offload_fraction == 0.5


def test_without_transformer_engine_megatron_cannot_take_precision_aware():
    # what the refusal below guards: 0.16.1 compares TE's version, None here
    from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig

    if importlib.util.find_spec("transformer_engine") is not None:
        pytest.skip("Transformer Engine is installed")
    with pytest.raises(TypeError):
        MegatronOptimizerConfig(bf16=True, use_distributed_optimizer=True,
                                optimizer_cpu_offload=True, use_precision_aware_optimizer=True)


@pytest.mark.parametrize("kwargs,precision,cuda,te,message", [
    ({}, "bf16", False, True, r"cpu_offload \(True\) needs CUDA"),
    ({}, "fp32", True, True, r"cpu_offload \(True\) needs learner.precision bf16 \(got fp32\)"),
    ({"precision_aware": True}, "bf16", True, False,
     r"precision_aware \(True\) needs Transformer Engine, which is not installed"),
])
def test_offload_that_cannot_run_is_refused_with_its_reason(kwargs, precision, cuda, te,
                                                             message):
    o = OptimizerConfig(cpu_offload=True, **kwargs)
    with pytest.raises(ValueError, match=message):
        offload_fields(o, precision, cuda_available=cuda, have_te=te)


@pytest.mark.parametrize("kwargs,message", [
    ({"cpu_offload": True, "offload_fraction": 0.0}, r"offload_fraction \(0.0\) must be in \(0, 1\]"),
    ({"precision_aware": True}, r"precision_aware \(True\) needs cpu_offload \(False\)"),
    ({"precision_aware": True, "cpu_offload": True, "distributed_optimizer": False},
     r"and distributed_optimizer \(False\)"),
])
def test_offload_settings_are_validated_with_their_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(**kwargs).validate()

"""Memory planner: per-GPU memory of the learner and the colocated vLLM engines for a run config.

    data = load_yaml("configs/qwen25vl_7b_h100x8.yaml")
    inputs, cluster = plan_inputs_from_config(data)
    plan = plan_memory(inputs); print(plan.table()); check_fits(plan)
"""
from prco_mega.cluster.dims import ModelDims, VisionDims, model_dims, total_params
from prco_mega.cluster.memory import MemoryPlan, Row, check_fits, plan_memory
from prco_mega.cluster.plan_inputs import (ClusterSection, MemoryAssumptions, PlanInputs,
                                           SlurmSection, plan_inputs_from_config)
from prco_mega.config import RunConfig, from_dict, load_yaml
from prco_mega.families.qwen2_5_vl.preset import QWEN25_VL

__all__ = [
    "ClusterSection", "MemoryAssumptions", "PlanInputs", "SlurmSection", "plan_inputs_from_config",
    "MemoryPlan", "Row", "check_fits", "plan_memory", "QWEN25_VL", "ModelDims", "VisionDims",
    "model_dims", "total_params", "plan_config",
]


def plan_config(path: str, overrides: tuple[str, ...] | list[str] = ()) -> MemoryPlan:
    """Load a YAML run config (with `key.path=value` overrides) and plan its memory."""
    data = load_yaml(path, overrides)
    from_dict(RunConfig, data)  # the whole run config must be valid, not only what we read
    inputs, _ = plan_inputs_from_config(data)
    return plan_memory(inputs)

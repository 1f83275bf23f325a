"""Memory planner: per-GPU memory of the learner and the colocated vLLM engines for a run config,
and the step's phase times priced at stated rates (`cluster.timing`).

    data = load_yaml("configs/qwen25vl_7b_h100x8.yaml")
    inputs, cluster = plan_inputs_from_config(data)
    plan = plan_memory(inputs); print(plan.table()); check_fits(plan)
"""
from prco_mega.cluster.dims import ModelDims, VisionDims, model_dims, total_params
from prco_mega.cluster.memory import MemoryPlan, Row, check_fits, plan_memory
from prco_mega.cluster.plan_inputs import (ClusterSection, MemoryAssumptions, PlanInputs,
                                           SlurmSection, plan_inputs_from_config)
from prco_mega.cluster.timing import Workload, phase_times, prco_stages
from prco_mega.config import RunConfig, from_dict, load_yaml
from prco_mega.families.qwen2_5_vl.preset import QWEN25_VL

__all__ = [
    "ClusterSection", "MemoryAssumptions", "PlanInputs", "SlurmSection", "plan_inputs_from_config",
    "MemoryPlan", "Row", "check_fits", "plan_memory", "QWEN25_VL", "ModelDims", "VisionDims",
    "model_dims", "total_params", "plan_config", "workload",
]


def plan_config(path: str, overrides: tuple[str, ...] | list[str] = ()) -> MemoryPlan:
    """Load a YAML run config (with `key.path=value` overrides), plan its memory and price its
    step's phases."""
    data = load_yaml(path, overrides)
    cfg = from_dict(RunConfig, data)  # the whole run config must be valid, not only what we read
    inputs, cluster = plan_inputs_from_config(data)
    plan = plan_memory(inputs)
    plan.times = phase_times(inputs, plan.kv_tokens, workload(cfg, inputs), cluster.timing)
    return plan


def workload(cfg: RunConfig, x: PlanInputs) -> Workload:
    """The step `cfg` samples and trains, on the engines and GPUs of its placement."""
    c, t = cfg.cluster, cfg.cluster.timing
    rollout_gpus = 0 if x.colocated else c.rollout_nodes * c.gpus_per_node
    stages = prco_stages(cfg.data.prompts_per_step, cfg.observer.n, cfg.solver.n,
                         cfg.observer.max_new_tokens, cfg.solver.max_new_tokens,
                         t.image_tokens + t.text_tokens,
                         two_roles=cfg.algo.name in ("prco", "prco_shared"))
    return Workload(stages, t.image_tokens,
                    engines=(rollout_gpus or c.world_size) // x.rollout_tp,
                    total_gpus=c.world_size + rollout_gpus,
                    extra_forwards=int(cfg.algo.kl_coef != 0)
                    + int(cfg.learner.batching.mini_batches > 1),
                    overlapped=rollout_gpus > 0 and cfg.rollout.max_staleness > 0)

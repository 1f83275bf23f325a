"""Rollout: the engine interface, the vLLM engine, and the two-stage Observer -> Solver rollout.

Importing this package does not import vLLM; `VllmEngine` imports it when constructed.
"""
from prco_mega.rollout.config import EngineConfig
from prco_mega.rollout.engine import (Generation, GenerationRequest, PushStats, RolloutEngine,
                                      SamplingSettings)
from prco_mega.rollout.single import SingleRoleRollout
from prco_mega.rollout.two_stage import TwoStageRollout
from prco_mega.rollout.vllm_engine import VllmEngine

__all__ = ["EngineConfig", "Generation", "GenerationRequest", "PushStats", "RolloutEngine",
           "SamplingSettings", "SingleRoleRollout", "TwoStageRollout", "VllmEngine"]

"""Held-out evaluation of the policy on synthetic tasks (greedy Observer -> Solver with the
image, and captions sampled as the rollout samples them) and the run's final tables; the
benchmark evaluation lives in `eval.benchmarks`. Imports no vLLM at package import."""
from prco_mega.eval.report import comparison_table, format_table
from prco_mega.eval.synthetic import EvalRecord, EvalResult, aggregate, evaluate, greedy

__all__ = ["EvalRecord", "EvalResult", "aggregate", "comparison_table", "evaluate",
           "format_table", "greedy"]

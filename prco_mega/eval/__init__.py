"""Evaluation and reporting: greedy held-out evaluation (Observer -> Solver with the image), the
metrics file, the per-step line, the curves PNG and the final tables. Imports no vLLM or
matplotlib at package import (the plot imports matplotlib when it draws)."""
from prco_mega.eval.report import (
                                   MetricsLogger,
                                   comparison_table,
                                   format_table,
                                   plot_metrics,
                                   read_metrics,
                                   step_line,
)
from prco_mega.eval.synthetic import EvalRecord, EvalResult, aggregate, evaluate, greedy

__all__ = ["EvalRecord", "EvalResult", "MetricsLogger", "aggregate", "comparison_table",
           "evaluate", "format_table", "greedy", "plot_metrics", "read_metrics", "step_line"]

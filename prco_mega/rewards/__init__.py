"""Rewards: answer verifier, Solver format score, leakage checks, role rewards (pure Python)."""
from prco_mega.rewards.format import FORMAT_WEIGHTS, format_checks, format_score, observer_format_ok
from prco_mega.rewards.leakage import (
    DEFAULT_JUDGE_TEMPLATE,
    JudgeStats,
    LeakageChecker,
    LLMJudgeLeakageChecker,
    RuleLeakageChecker,
    parse_verdict,
    render_judge_prompt,
    rule_leak,
)
from prco_mega.rewards.observer import (
    observer_utility_rewards,
    shared_outcome_observer_rewards,
    solver_reward,
)
from prco_mega.rewards.verifier import (
    answers_match,
    extract_boxed,
    normalize_answer,
    parse_number,
    verify,
)

__all__ = [
    "DEFAULT_JUDGE_TEMPLATE", "FORMAT_WEIGHTS", "JudgeStats", "LLMJudgeLeakageChecker",
    "LeakageChecker", "RuleLeakageChecker", "answers_match", "extract_boxed", "format_checks",
    "format_score", "normalize_answer", "observer_format_ok", "observer_utility_rewards",
    "parse_number", "parse_verdict", "render_judge_prompt", "rule_leak",
    "shared_outcome_observer_rewards", "solver_reward", "verify",
]

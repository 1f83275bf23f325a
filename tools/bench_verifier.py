"""Agreement, false positives/negatives and time per call of the answer verifier on the corpus.

Runs ours (`prco_mega.rewards.verifier.verify`) and, when installed, math-verify called the way
verl calls it (gold wrapped in `\\boxed{}`, `math_metric` with Latex gold extraction and
Expr+Latex prediction extraction) on tests/data/verifier_corpus.jsonl, and prints per category:
agreement with the labels, false positives (label 0 scored 1), false negatives, then p50/p99/max
time per call; then ours on 10 kB inputs (each response after 10 kB of reasoning, and hostile
10 kB answers and golds). Times are the calling thread's CPU time (`time.thread_time`), so that
other processes on a shared machine do not inflate them; the 10 kB run also prints wall clock.

    .venv/bin/python tools/bench_verifier.py [--show-errors] [--check]

`--check` exits 1 unless ours has >= 97% agreement, no false positive, every category at least
as good as math-verify's, and p99 < 2 ms and max < 50 ms per call on 10 kB inputs.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

from prco_mega.rewards.verifier import verify

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "verifier_corpus.jsonl"
FILLER = ("We read the values from the figure and combine them carefully; each step is checked "
          "against the picture before moving on. ")


def load(path: Path = CORPUS) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def math_verify_scorer() -> Callable[[str, str, list | None], float] | None:
    """verl's math-verify reward (`verl.utils.reward_score.math_verify.compute_score`)."""
    try:
        from math_verify.errors import TimeoutException
        from math_verify.metric import math_metric
        from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig
    except ImportError:
        return None
    verify_func = math_metric(gold_extraction_target=(LatexExtractionConfig(),),
                              pred_extraction_target=(ExprExtractionConfig(),
                                                      LatexExtractionConfig()))

    def score(response: str, gold: str, choices: list | None = None) -> float:
        try:
            ret, _ = verify_func(["\\boxed{" + gold + "}"], [response])
        except TimeoutException:
            return 0.0
        except Exception:  # verl scores any failure 0
            return 0.0
        return float(ret)
    return score


def run(rows: list[dict], scorer: Callable) -> tuple[list[int], list[float]]:
    verdicts, times = [], []
    for row in rows:
        start = time.thread_time()
        score = scorer(row["response"], row["gold"], row.get("choices"))
        times.append(time.thread_time() - start)
        verdicts.append(int(score >= 0.5))
    return verdicts, times


def tally(rows: list[dict], verdicts: list[int]) -> dict[str, list[int]]:
    """{category: [n, agree, false positives, false negatives]}, with "ALL"."""
    stats: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for row, v in zip(rows, verdicts):
        for key in (row["category"], "ALL"):
            s = stats[key]
            s[0] += 1
            s[1] += v == row["label"]
            s[2] += v == 1 and row["label"] == 0
            s[3] += v == 0 and row["label"] == 1
    return stats


def percentiles_ms(times: list[float]) -> tuple[float, float, float]:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return statistics.median(ordered) * 1e3, p99 * 1e3, ordered[-1] * 1e3


def table(rows: list[dict], results: dict[str, dict]) -> str:
    names = list(results)
    head = "| category | n | " + " | ".join(f"{n} agree | {n} FP | {n} FN" for n in names) + " |"
    lines = [head, "|" + "---|" * (2 + 3 * len(names))]
    cats = sorted({r["category"] for r in rows}) + ["ALL"]
    for cat in cats:
        cells = []
        for name in names:
            n, agree, fp, fn = results[name]["stats"][cat]
            cells.append(f"{100 * agree / n:.1f}% | {fp} | {fn}")
        lines.append(f"| {cat} | {results[names[0]]['stats'][cat][0]} | " + " | ".join(cells) + " |")
    for name in names:
        p50, p99, worst = percentiles_ms(results[name]["times"])
        lines.append(f"\n{name}: p50 {p50:.3f} ms, p99 {p99:.3f} ms, max {worst:.3f} ms per call "
                     f"(CPU time)")
    return "\n".join(lines)


def long_inputs(rows: list[dict], size: int = 10_000) -> list[tuple[str, str, list | None]]:
    """Calls on 10 kB inputs: corpus responses after 10 kB of reasoning, and hostile strings."""
    rng = random.Random(0)
    pad = (FILLER * (size // len(FILLER) + 1))[:size]
    calls = [(pad + r["response"], r["gold"], r.get("choices")) for r in rows]
    alphabet = ["\\frac{", "{", "}", "\\sqrt[", "]", "^", "(", ")", "1", "x", ",", "=", "\\pm",
                "\\boxed{", "\\left(", "\\{", "°", "√", "²", "½", "cm", " ", "\\text{", "%", "|"]
    for _ in range(200):
        junk = "".join(rng.choice(alphabet) for _ in range(size // 3))[:size]
        calls.append((junk, "1/2", None))
        calls.append(("\\boxed{" + junk[:300] + "}", junk, ["1", junk]))
        calls.append(("\\boxed{" + junk[:250] + "}", junk[:250], None))
    return calls


def time_calls(calls: list[tuple[str, str, list | None]]) -> tuple[list[float], list[float]]:
    """(CPU seconds, wall seconds) of each call."""
    cpu, wall = [], []
    for response, gold, choices in calls:
        start, start_wall = time.thread_time(), time.perf_counter()
        verify(response, gold, choices)
        cpu.append(time.thread_time() - start)
        wall.append(time.perf_counter() - start_wall)
    return cpu, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--show-errors", action="store_true", help="list every disagreement")
    parser.add_argument("--check", action="store_true", help="exit 1 unless the issue's bar holds")
    args = parser.parse_args(argv)
    rows = load(args.corpus)
    scorers = {"ours": lambda r, g, c=None: verify(r, g, c)}
    mv = math_verify_scorer()
    if mv is None:
        print("math-verify is not installed (pip install math-verify): ours only", file=sys.stderr)
    else:
        scorers["math-verify"] = mv
    results = {}
    for name, scorer in scorers.items():
        verdicts, times = run(rows, scorer)
        results[name] = {"verdicts": verdicts, "times": times, "stats": tally(rows, verdicts)}
    print(f"{len(rows)} labelled pairs from {args.corpus.name}\n")
    print(table(rows, results))
    cpu, wall = time_calls(long_inputs(rows))
    p50, p99, worst = percentiles_ms(cpu)
    print(f"\nours on {len(cpu)} calls with 10 kB inputs: p50 {p50:.3f} ms, "
          f"p99 {p99:.3f} ms, max {worst:.3f} ms per call (CPU)")
    w50, w99, wmax = percentiles_ms(wall)
    print(f"  wall clock: p50 {w50:.3f} ms, p99 {w99:.3f} ms, max {wmax:.3f} ms (includes time "
          f"the OS gave other processes)")
    if args.show_errors:
        for name, res in results.items():
            print(f"\n{name} disagreements:")
            for row, v in zip(rows, res["verdicts"]):
                if v != row["label"]:
                    print(f"  [{row['category']}] label {row['label']} got {v}: "
                          f"{row['response'][-60:]!r} vs gold {row['gold']!r}")
    return 0 if not args.check else int(not _passes(results, p99, worst))


def _passes(results: dict, p99_ms: float, max_ms: float) -> bool:
    ours = results["ours"]["stats"]
    ok = ours["ALL"][1] / ours["ALL"][0] >= 0.97 and ours["ALL"][2] == 0
    if "math-verify" in results:
        theirs = results["math-verify"]["stats"]
        ok = ok and all(ours[c][1] >= theirs[c][1] for c in ours)
    return ok and p99_ms < 2.0 and max_ms < 50.0


if __name__ == "__main__":
    sys.exit(main())

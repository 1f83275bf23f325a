"""PRCO against its baselines with the same seed, data and budget, in one table.

    .venv/bin/python tools/compare_baselines.py [configs/tiny_cpu.yaml] [key=value ...]

Runs `prco-mega train` four times (algo.name = prco, grpo, dapo, prco_shared; each its own run
directory, each algorithm with its own preset) and prints, for each, the held-out Solver accuracy (with the image) and caption
perception accuracy (greedy, and of captions sampled as the rollout samples them) before (warm
start, shared by all four) and after RL.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from prco_mega.config import load_config
from prco_mega.eval.report import format_table
from prco_mega.runtime.build import resolved_algo, resolved_config

ALGORITHMS = ("prco", "grpo", "dapo", "prco_shared")


def run(config: str, algo: str, overrides: list[str]) -> Path:
    name = f"{load_config(config, overrides).run.name}-{algo}"
    args = [sys.executable, "-m", "prco_mega.cli", "train", config, *overrides,
            f"algo.name={algo}", f"run.name={name}"]
    cfg = load_config(config, [*overrides, f"run.name={name}", f"algo.name={algo}"])
    out = Path(cfg.run.output_dir) / name
    if (out / "eval_end.json").exists():
        # A finished run is reused only if it ran this exact config: a table must never mix in
        # results of an older config (another task family, warm start or budget).
        saved = json.loads((out / "config.json").read_text())
        if saved != json.loads(json.dumps(resolved_config(cfg, resolved_algo(cfg)))):
            raise SystemExit(f"{out} holds a finished run of a different config; remove it or "
                             "pick another run.name")
        return out
    subprocess.run(args, check=True)
    return out


def row(algo: str, out: Path) -> dict:
    start = json.loads((out / "eval_start.json").read_text())
    end = json.loads((out / "eval_end.json").read_text())
    pct = lambda v: None if v is None else f"{100 * v:.1f}%"  # noqa: E731
    return {"algo": algo,
            "acc_start": pct(start["solver/accuracy"]), "acc_end": pct(end["solver/accuracy"]),
            "perc_start": pct(start["observer/perception_acc"]),
            "perc_end": pct(end["observer/perception_acc"]),
            "sampled_start": pct(start.get("observer/perception_acc_sampled")),
            "sampled_end": pct(end.get("observer/perception_acc_sampled")),
            "leak_end": pct(end["observer/leak_rate"])}


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    config = argv[0] if argv and "=" not in argv[0] else "configs/tiny_cpu.yaml"
    overrides = [a for a in argv if "=" in a]
    rows = [row(algo, run(config, algo, overrides)) for algo in ALGORITHMS]
    print(format_table(rows, {"algo": "algorithm", "acc_start": "Solver acc (warm start)",
                              "acc_end": "Solver acc (after RL)",
                              "perc_start": "perception (warm start)",
                              "perc_end": "perception (after RL)",
                              "sampled_start": "sampled perception (warm start)",
                              "sampled_end": "sampled perception (after RL)",
                              "leak_end": "leak rate"}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The `prco-mega` command. The subcommands' modules load neither torch nor a heavy package when
imported (`--help` and `plan` stay fast); each loads them when it runs."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from prco_mega.bridge import convert_cli
from prco_mega.cluster import launch
from prco_mega.cluster.plan import plan_config
from prco_mega.config import load_config
from prco_mega.data.preview import write_preview
from prco_mega.data.synthetic import SyntheticConfig
from prco_mega.data.validate import check_data
from prco_mega.eval.benchmarks import cli as eval_cli


def _data_preview(args: argparse.Namespace) -> int:
    cfg = SyntheticConfig(seed=args.seed, image_size=args.image_size, difficulty=args.difficulty)
    paths = write_preview(args.out, args.n, cfg)
    print(f"wrote {len(paths)} files to {args.out}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    print(check_data(load_config(args.config, args.overrides).data).line())
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="data set tools")
    dsub = data.add_subparsers(dest="data_cmd", required=True)
    check = dsub.add_parser("check", help="read and validate a config's data as `train` does "
                            "before it starts; prints the row counts")
    check.add_argument("config")
    check.add_argument("overrides", nargs="*", help="key.path=value")
    check.set_defaults(func=_data_check)
    prev = dsub.add_parser("preview", help="write synthetic tasks as PNGs + tasks.jsonl")
    prev.add_argument("--n", type=int, default=16)
    prev.add_argument("--out", required=True)
    prev.add_argument("--seed", type=int, default=0)
    prev.add_argument("--image-size", type=int, default=224)
    prev.add_argument("--difficulty", type=int, default=1)
    prev.set_defaults(func=_data_preview)


def _train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)  # refused here, before anything starts
    data = check_data(cfg.data)  # so is bad data: before the world, learner and engines
    if os.environ.get("RANK", "0") == "0":
        print(data.line(), flush=True)
    from prco_mega.runtime.loop import main as run_main  # imports torch at its top

    run_main(cfg, resume=args.resume)
    return 0


class _Resume(argparse.Action):
    """`--resume` is "yes", `--resume auto` is "auto"; a `key=value` right after a bare
    `--resume` is an override, as it was before `--resume` took a value."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value is not None and "=" in value:
            namespace.overrides = [*(namespace.overrides or []), value]
            value = None
        if value not in (None, "auto"):
            parser.error(f"argument --resume: expected nothing or 'auto', got {value!r}")
        namespace.resume = value or "yes"


def _add_train(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="run PRCO (or a baseline) from a config")
    train.add_argument("config")
    train.add_argument("overrides", nargs="*", help="key.path=value")
    train.add_argument("--resume", nargs="?", action=_Resume, default="no", metavar="auto",
                       help="continue from the run's newest complete checkpoint (without it, a "
                       "run directory that has checkpoints is refused); `--resume auto`: "
                       "continue if there is one, else start (the Slurm script's command)")
    train.set_defaults(func=_train)


def _plan(args: argparse.Namespace) -> int:
    plan = plan_config(args.config, args.overrides)
    print(plan.table())
    return 0 if plan.fits else 2


def _add_plan(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser("plan", help="per-GPU memory plan of a config; exit 2 if it cannot fit")
    plan.add_argument("config")
    plan.add_argument("overrides", nargs="*", help="key.path=value")
    plan.set_defaults(func=_plan)


def _add_launch(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("launch", help="torchrun / Slurm launch of a cluster config")
    launch.add_arguments(parser)
    parser.set_defaults(func=launch.run_from_args)


def _add_convert(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("convert", help="checkpoint conversion: HF <-> Megatron, any TP/PP")
    convert_cli.add_arguments(parser)
    parser.set_defaults(func=convert_cli.run_from_args)


_BENCHMARKS = {"kernels": "bench_kernels.py", "sync": "bench_sync.py", "compile": "compile_kernels.py",
               "rollout": "bench_rollout.py", "eval": "bench_eval.py"}


def _bench(args: argparse.Namespace) -> int:
    """Run a benchmark script from the checkout's tools/ (they print their own tables)."""
    script = Path(__file__).resolve().parents[1] / "tools" / _BENCHMARKS[args.which]
    if not script.is_file():
        raise ValueError(f"{script} not found: benchmarks run from a source checkout "
                         "(pip install -e .)")
    return subprocess.call([sys.executable, str(script), *args.rest])


def _add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="microbenchmarks: kernels (loss head, PPO, advantages), "
                           "sync (Megatron -> vLLM), compile (sm_90 registers/spills), rollout "
                           "(1 vs 2 engines: tokens/s, sync bytes, step time), eval (1 vs 2 "
                           "engines: items/s of prco-mega eval)")
    bench.add_argument("which", choices=sorted(_BENCHMARKS))
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    bench.set_defaults(func=_bench)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="the paper's eight benchmarks from local files "
                            "(Observer -> Solver or direct), table + JSONL + PNG, resumable")
    eval_cli.add_arguments(parser)
    parser.set_defaults(func=eval_cli.run_from_args)


def _inspect(args: argparse.Namespace) -> int:
    from prco_mega.tracking.page import write_page  # its rollout reader imports torch

    path = write_page(args.run_dir, step=args.step, compare=args.compare, limit=args.limit,
                      out=args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
    return 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("inspect", help="a self-contained HTML page of a run's saved "
                            "rollouts (images, captions, answers, rewards, advantages)")
    parser.add_argument("run_dir", help="the run's folder (run.output_dir/run.name)")
    parser.add_argument("--step", type=int, default=None, help="saved step (default: newest)")
    parser.add_argument("--compare", action="store_true", help="held-out captions and answers, "
                        "warm start beside the trained policy, instead of a saved step")
    parser.add_argument("--limit", type=int, default=None, help="--compare: first N tasks")
    parser.add_argument("--out", default=None, help="HTML file (default: RUN_DIR/inspect/...)")
    parser.set_defaults(func=_inspect)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prco-mega", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_train, _add_data, _add_plan, _add_launch, _add_convert, _add_bench, _add_eval,
    _add_inspect]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # `key=value` overrides may also follow options (`plan CFG --flag a.b=2`); argparse stops
    # collecting a positional list at the first option, so gather the stragglers here.
    stray = [r for r in rest if "=" not in r or r.startswith("-")]
    if stray or (rest and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or rest)}")
    if rest:
        args.overrides = list(args.overrides) + rest
    try:
        return int(args.func(args) or 0)
    except ValueError as e:  # user errors: one clear line, no traceback
        print(f"prco-mega: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`prco-mega eval`: the eight benchmarks on a Hugging Face checkpoint, through vLLM engines.

    prco-mega eval --model M --data-root D [--check]                      # one engine
    torchrun --nproc_per_node 8 -m prco_mega.cli eval --model M --data-root D tensor_parallel_size=2

Everything a user can get wrong (benchmark names, splits, data root, engine overrides, every
folder, file and row) is checked before an engine starts, which takes minutes for a large model;
`--check` stops there and prints what it found. Under torchrun every group of
`tensor_parallel_size` ranks is one engine (as training places them) and answers its share of
every benchmark.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from prco_mega.config import apply_override, from_dict
from prco_mega.data.images import DEFAULT_MAX_PIXELS
from prco_mega.eval.benchmarks.discovery import Loaded, check
from prco_mega.eval.benchmarks.registry import (
    BY_NAME,
    parse_splits,
    select,
    splits_help,
)
from prco_mega.eval.benchmarks.report import backbone_of, write_report
from prco_mega.eval.benchmarks.run import MODES, EvalReport, EvalSettings, run_eval
from prco_mega.rollout.config import EngineConfig
from prco_mega.rollout.placement import Shard, engine_placement
from prco_mega.rollout.vllm_engine import VllmEngine

EVAL_MAX_MODEL_LEN = 8192
"""Engine default for evaluation: a 1,024-token caption, a 2,048-token answer and up to 1,280
image tokens must fit one sequence (EngineConfig's 2,048 is sized for the tiny training runs)."""


def engine_config(overrides: list[str]) -> EngineConfig:
    """EngineConfig defaults, max_model_len raised for evaluation, then `key=value` overrides
    (unknown keys and wrong types are refused naming the key)."""
    data: dict = {"max_model_len": EVAL_MAX_MODEL_LEN}
    for override in overrides:
        apply_override(data, override.removeprefix("engine."))
    return from_dict(EngineConfig, data, "engine")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="Hugging Face model directory (not needed with --check)")
    parser.add_argument("--data-root", required=True,
                        help="one folder per benchmark, as published (hub repo download, GitHub "
                             "repo, or VLMEvalKit's flat LMUData folder of TSVs); see "
                             "docs/evaluation.md")
    parser.add_argument("--benchmarks", default="all",
                        help=f"all, or names: {','.join(BY_NAME)}")
    parser.add_argument("--split", action="append", default=[], metavar="BENCHMARK=SPLIT",
                        help="a benchmark's split (repeat or comma-separate); defaults, the "
                             f"paper's: {splits_help()}")
    parser.add_argument("--check", action="store_true",
                        help="find and read every benchmark, print folder, files, split, rows "
                             "and skipped rows per benchmark, and stop (no model, no engine)")
    parser.add_argument("--mode", choices=MODES, default="prco",
                        help="prco: Observer caption then Solver with the image; direct: the "
                             "single look-and-answer prompt (base, GRPO/DAPO checkpoints)")
    parser.add_argument("--out", default=None, help="output directory (default eval/<model>/<mode>)")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="a malformed row or benchmark folder stops the run (raise) or is "
                             "counted and skipped, the other benchmarks running (skip)")
    parser.add_argument("--also-verifier", action="store_true",
                        help="also score every answer with the project's verifier (the RL "
                             "reward) as a second column")
    parser.add_argument("--limit", type=int, default=None, help="first N items per benchmark")
    parser.add_argument("--chunk-size", type=int, default=64,
                        help="items per engine call (what a kill can lose)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="resize larger images onto the patch grid within this many pixels "
                             "(default 1280*28*28: 1,280 image tokens); 0: leave them to the "
                             "engine's processor")
    parser.add_argument("--observer-max-tokens", type=int, default=1024)
    parser.add_argument("--solver-max-tokens", type=int, default=2048)
    parser.add_argument("--reference", choices=("auto", "3b", "7b", "none"), default="auto",
                        help="published rows to show (auto: from the checkpoint's hidden size)")
    parser.add_argument("overrides", nargs="*",
                        help="engine settings key=value (EngineConfig fields, e.g. dtype=bfloat16, "
                             "tensor_parallel_size=2)")


def settings_of(args: argparse.Namespace) -> EvalSettings:
    return EvalSettings(args.mode, args.observer_max_tokens, args.solver_max_tokens,
                        args.chunk_size, args.on_error, args.limit, args.max_pixels or None,
                        args.also_verifier)


def _world() -> tuple[int, int]:
    """(world size, rank): torchrun's world (started here), or a world of one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 1, 0
    # dist.world imports torch at its top; `prco-mega --help` and `--check` load this module
    from prco_mega.dist.world import init_world, rank, world_size

    init_world()
    return world_size(), rank()


def _start_engine(model: Path, config: EngineConfig):
    """This rank's engine; every rank starts its own at the same moment (vLLM's start-up is
    collective over a torchrun world)."""
    import torch  # here, not at the top: `prco-mega --help` and `--check` load this module

    threads = torch.get_num_threads()
    engine = VllmEngine(model, config)
    torch.set_num_threads(threads)  # vLLM's CPU engine pins the whole process to one thread
    return engine


def _print_check(loaded: list[Loaded]) -> int:
    for one in loaded:
        print("\n".join(one.lines()))
    return 2 if any(one.found.problem for one in loaded) else 0


def _throughput(report: EvalReport, engines: int) -> str:
    generated = sum(r.generated for r in report.runs.values())
    seconds = sum(r.seconds for r in report.runs.values())
    rate = generated / seconds if seconds and generated else 0.0
    return (f"answered {generated} items in {seconds:.1f} s on {engines} engine(s): "
            f"{rate:.2f} items/s")


def run_from_args(args: argparse.Namespace) -> int:
    root = Path(args.data_root)
    benchmarks, splits = select(args.benchmarks), parse_splits(args.split)
    settings, config = settings_of(args), engine_config(list(args.overrides))
    loaded = check(root, benchmarks, splits, args.on_error, args.limit)
    if args.check:
        return _print_check(loaded)
    if args.model is None or not (Path(args.model) / "config.json").is_file():
        raise ValueError(f"model directory {args.model!r} has no config.json (--model)")
    model = Path(args.model)
    world, rank = _world()
    placement = engine_placement(world, rank, config.tensor_parallel_size)
    host = rank == 0
    if host:
        print("\n".join(line for one in loaded for line in one.lines()), flush=True)
    out = Path(args.out) if args.out else Path("eval") / model.name / args.mode
    engine = _start_engine(model, config)
    try:
        report = run_eval(engine, loaded, out, settings, shard=Shard(placement),
                          echo=(lambda line: print(line, flush=True)) if host else (
                              lambda line: None))
    finally:
        engine.close()
    if not host:
        return 0
    backbone = backbone_of(model) if args.reference == "auto" else (
        None if args.reference == "none" else args.reference)
    paths = write_report(out, f"{model.name} ({args.mode})", report, backbone, settings)
    print(paths["table"].read_text())
    print(_throughput(report, placement.num_engines))
    print(f"wrote {', '.join(str(p) for p in paths.values())} and {out / 'predictions'}")
    return 0

"""`prco-mega eval`: the eight benchmarks on a Hugging Face checkpoint, through a vLLM engine.

Everything a user can get wrong (benchmark names, data root, engine overrides, no benchmark
folder at all) is refused before the engine starts, which takes minutes for a large model.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from prco_mega.config import apply_override, from_dict
from prco_mega.data.images import DEFAULT_MAX_PIXELS
from prco_mega.eval.benchmarks.run import MODES, EvalSettings, run_eval
from prco_mega.eval.benchmarks.readers import find_folder, select
from prco_mega.rollout.config import EngineConfig

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
    parser.add_argument("--model", required=True, help="Hugging Face model directory")
    parser.add_argument("--data-root", required=True,
                        help="one folder per benchmark (parquet, TSV or JSONL files)")
    parser.add_argument("--benchmarks", default="all",
                        help="all, or names: mathverse,mathvision,mathvista,wemath,dynamath,"
                             "logicvista,mmmu_pro_v,mmstar")
    parser.add_argument("--mode", choices=MODES, default="prco",
                        help="prco: Observer caption then Solver with the image; direct: the "
                             "single look-and-answer prompt (base, GRPO/DAPO checkpoints)")
    parser.add_argument("--out", default=None, help="output directory (default eval/<model>/<mode>)")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="a malformed row stops the run (raise) or is counted (skip)")
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
                        help="engine settings key=value (EngineConfig fields, e.g. dtype=bfloat16)")


def run_from_args(args: argparse.Namespace) -> int:
    from prco_mega.eval.benchmarks.report import backbone_of, write_report
    from prco_mega.rollout.vllm_engine import VllmEngine

    model, root = Path(args.model), Path(args.data_root)
    benchmarks = select(args.benchmarks)
    settings = EvalSettings(args.mode, args.observer_max_tokens, args.solver_max_tokens,
                            args.chunk_size, args.on_error, args.limit,
                            args.max_pixels or None)
    config = engine_config(list(args.overrides))
    if not any(find_folder(root, b) for b in benchmarks):
        raise ValueError(f"no benchmark folder under {root} (looked for "
                         f"{', '.join(b.folders[0] for b in benchmarks)})")
    if not (model / "config.json").is_file():
        raise ValueError(f"model directory {str(model)!r} has no config.json")
    out = Path(args.out) if args.out else Path("eval") / model.name / args.mode
    backbone = backbone_of(model) if args.reference == "auto" else (
        None if args.reference == "none" else args.reference)
    engine = VllmEngine(model, config)
    try:
        report = run_eval(engine, root, out, benchmarks, settings)
    finally:
        engine.close()
    paths = write_report(out, f"{model.name} ({args.mode})", report, backbone, settings)
    print(paths["table"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())} and {out / 'predictions'}")
    return 0

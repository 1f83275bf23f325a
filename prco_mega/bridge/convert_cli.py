"""Command line of checkpoint conversion (`prco-mega convert`, `tools/convert_checkpoint.py`).

Outside torchrun the command checks everything it can without starting a process group (the
layout against the model by `learner.layout.check_layout`, from config.json alone, first; then
the source's config and tensor manifest and the output path: mistakes fail in seconds), then
launches `torchrun --standalone --nproc_per_node N -m prco_mega.bridge.convert_cli ...` on this
node (N = tp * pp * dp, dp the fewest data-parallel ranks over which a mixture of experts' `--ep`
x `--etp` fits: `world_size`) and returns its exit status (the standalone rendezvous binds a free port and holds it,
so no port is chosen, released and lost to another job). Under torchrun it converts directly, e.g.
on several nodes:
    torchrun --nnodes N --nproc_per_node G --rdzv-endpoint HOST:PORT \
        -m prco_mega.bridge.convert_cli --direction hf2mcore --src HF --dst OUT --tp 8 --pp 4
(the world may be a multiple of tp * pp, and of `world_size` with experts; outputs go to a
filesystem every node sees).

Exit status: 0 done (and verified), 1 verification above tolerance, 2 refused (ValueError, before
torchrun starts).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import prco_mega
from prco_mega.learner.layout import check_layout

DIRECTIONS = ("hf2mcore", "mcore2hf")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--direction", required=True, choices=DIRECTIONS,
                        help="hf2mcore: HF safetensors -> Megatron; mcore2hf: the way back")
    parser.add_argument("--src", required=True, help="source checkpoint directory")
    parser.add_argument("--dst", required=True, help="output directory (must not exist)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the world")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel size of the world")
    parser.add_argument("--vpp", type=int, default=None, help="virtual pipeline chunks per rank")
    parser.add_argument("--ep", type=int, default=1,
                        help="expert-parallel size (mixture-of-experts models): each rank holds "
                             "num_experts / ep experts of every MoE layer")
    parser.add_argument("--etp", type=int, default=None,
                        help="expert tensor-parallel size (default: --tp): each expert split "
                             "over this many ranks")
    parser.add_argument("--reference", default=None,
                        help="mcore2hf: HF dir with config/tokenizer/processor (default: the "
                             "files hf2mcore stored in SRC/hf)")
    parser.add_argument("--shard-size-mb", type=int, default=2048,
                        help="mcore2hf: largest safetensors file written")
    parser.add_argument("--verify", action="store_true",
                        help="compare per-token log-probs of source and result (fp32); "
                             "exit 1 above the tolerance")
    parser.add_argument("--dry-run", action="store_true",
                        help="check, print the torchrun command, launch nothing")


def world_size(args: argparse.Namespace) -> int:
    """Ranks of a single-node conversion: tp * pp * dp, with dp the fewest data-parallel ranks
    that let Megatron lay ep x etp over a stage's tp * dp ranks (1 for a dense model)."""
    experts = args.ep * (args.tp if args.etp is None else args.etp)
    return args.pp * math.lcm(args.tp, max(experts, 1))


def under_torchrun() -> bool:
    """True inside a process that torchrun (torch.distributed.run) started."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def preflight(args: argparse.Namespace) -> None:
    """Every check possible without a process group; ValueError names the problem."""
    # bridge.convert imports torch at its top: `prco-mega --help` loads this module, not it
    from prco_mega.bridge.convert import (check_hf_source, check_output, reference_config,
                                          resolve_megatron_checkpoint)

    if args.direction == "hf2mcore":
        _check_layout_of(Path(args.src), args)  # before transformers builds the source's model
        check_hf_source(args.src)
    else:
        _, hf_dir = reference_config(resolve_megatron_checkpoint(args.src), args.reference)
        _check_layout_of(hf_dir, args)
    check_output(args.dst)


def _check_layout_of(hf_dir: Path, args: argparse.Namespace) -> None:
    """The layout rules on the sizes in `hf_dir`/config.json (a missing one is named by the
    source checks)."""
    path = hf_dir / "config.json"
    if path.is_file():
        check_layout(json.loads(path.read_text()), world_size(args), args.tp, args.pp, args.vpp,
                     ep=args.ep, etp=args.etp)


def torchrun_command(args: argparse.Namespace) -> list[str]:
    """The single-node torchrun command line that runs this conversion on `world_size` ranks."""
    argv = ["--direction", args.direction, "--src", str(args.src), "--dst", str(args.dst),
            "--tp", str(args.tp), "--pp", str(args.pp), "--ep", str(args.ep),
            "--shard-size-mb", str(args.shard_size_mb)]
    argv += ["--vpp", str(args.vpp)] if args.vpp else []
    argv += ["--etp", str(args.etp)] if args.etp is not None else []
    argv += ["--reference", str(args.reference)] if args.reference else []
    argv += ["--verify"] if args.verify else []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(world_size(args)), "-m", "prco_mega.bridge.convert_cli", *argv]


def run_from_args(args: argparse.Namespace) -> int:
    """Convert (under torchrun) or check and launch torchrun; returns the exit status."""
    if under_torchrun():
        return _run_in_world(args)
    preflight(args)
    cmd = torchrun_command(args)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    root = os.path.dirname(os.path.dirname(os.path.abspath(prco_mega.__file__)))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(cmd, env=env, check=False).returncode


def _run_in_world(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from prco_mega.bridge.convert import hf_to_megatron, megatron_to_hf
    from prco_mega.bridge.convert_verify import VERIFY_TOLERANCE, verify_conversion

    if args.direction == "hf2mcore":
        hf_to_megatron(args.src, args.dst, args.tp, args.pp, args.vpp, ep=args.ep, etp=args.etp)
        hf_dir, ckpt = args.src, args.dst
    else:
        megatron_to_hf(args.src, args.dst, args.tp, args.pp, args.reference, vpp=args.vpp,
                       shard_bytes=args.shard_size_mb * 1024**2, ep=args.ep, etp=args.etp)
        hf_dir, ckpt = args.dst, args.src
    rank0 = dist.get_rank() == 0
    if rank0:
        print(f"convert: wrote {args.dst}", flush=True)
    if not args.verify:
        return 0
    diff = verify_conversion(hf_dir, ckpt, args.tp, args.pp, args.vpp)
    ok = diff <= VERIFY_TOLERANCE
    if rank0:
        print(f"convert: verify max |logprob diff| (fp32) = {diff:.3e} "
              f"({'ok' if ok else 'FAILED'}, tolerance {VERIFY_TOLERANCE:.0e})", flush=True)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="convert_checkpoint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except ValueError as e:  # user errors: one clear line per rank, no traceback
        rank = os.environ.get("RANK")
        where = f" (rank {rank})" if rank is not None else ""
        print(f"convert: error{where}: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())

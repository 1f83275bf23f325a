"""MoE microbenchmark on CPU: a learner step with and without routing replay, and the weight
sync's bytes per rank into vLLM, for the tiny Qwen3-VL-MoE at expert parallel 1 (DP=2) and 2.

    python tools/bench_moe.py [--eps 1,2] [--batches text,mixed] [--repeats 10]
                              [--engine-tps 1,2] [--no-sync] [--work DIR] [--json OUT]

Simplifications, first:
- The model is the tiny Qwen3-VL-MoE (`make_tiny_checkpoint(..., family="qwen3_vl_moe")`: 4 layers,
  8 experts, top-2), fp32. Every case is its own `torchrun --standalone` launch of this file
  (`--worker`) with 2 ranks on gloo, one thread each (2 ranks on 2 cores thrash otherwise).
- Learner (`--worker learner`, one launch per EP): one `MegatronPolicy` built with
  `routing_replay="rollout"` (its routers carry the replay hooks), PPO loss, micro-batches of
  MICRO_BATCH_TOKENS, lr 1e-30 (below every weight's ulp: each repeat does the same work on the same
  weights). `policy.routing_replay` is switched between the rows, as the 2-rank replay test does;
  under `none` the hooks are idle (the routers' own top-k; the step's only trace of them is one
  small all-reduce of empty agreement counts). A step is `policy.step(...)`
  of the whole batch (8 trajectories, ~430 tokens, 4 Observer + 4 Solver; `mixed`: two of them
  with an image). Each repeat runs the four rows in turn (so load drifts hit them alike) after one
  warm-up round; a row's time is the slowest rank's, its figures the median and the best over
  `--repeats`, and its extra cost over its baseline both the median over repeats of (row / baseline
  - 1), and best / best - 1 (the least disturbed by other jobs):
  - `none` x1: pack, forward + backward, optimizer update (one mini-batch);
  - `rollout` (R3) x1: the same, the carried routing packed beside the tokens and replayed in the
    forward, and the routers' own top-k counted against it (`moe/agree`). The routing carried is
    random distinct top-k ids per position (seeded): replay's cost does not depend on which
    experts, and the agreement figure only shows that replay ran;
  - `none` x2: a no-gradient pass over the step (PPO's mismatch and correction), then one update
    per mini-batch;
  - `learner` (R2) x2: the same, that first pass recording the routing, both updates replaying it.
- Sync (`--worker sync`, one launch per EP and engine TP): the same policy, `routing_replay` none,
  and vLLM engines (`external_launcher`): engine TP 1 = an engine per rank, TP 2 = one engine over
  both ranks. `bridge.colocated.sync_weights` as `ColocatedPublisher` calls it (the engine
  config's bucket and dtype), one warm-up sync, then `--repeats`; the bytes are its `SyncStats`
  per rank (`received_bytes`: from other ranks; `engine_bytes`: what the engine rank loads;
  pushed), the time the slowest rank's `seconds`, median over repeats.
- The machine's cores and 1-minute load (sampled every LOAD_POLL_S during the launches) print with
  the tables: timings on a shared machine move with the load.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from prco_mega.bridge.colocated import sync_weights
from prco_mega.bridge.units import cast_dtype
from prco_mega.data.images import normalize_image
from prco_mega.learner.config import LearnerConfig
from prco_mega.learner.loss_paths import LossSettings, TorchPPO
from prco_mega.learner.parallel import destroy_parallel
from prco_mega.learner.vision_inputs import expand_image_pads
from prco_mega.platform.megatron_cpu import install_megatron_cpu_compat
from prco_mega.rollout import EngineConfig, VllmEngine
from prco_mega.runtime.build import policy_from_hf
from prco_mega.tiny.checkpoint import make_tiny_checkpoint
from prco_mega.tiny.tokenizer import demo_corpus
from prco_mega.types import Role, Trajectory

REPO = Path(__file__).resolve().parents[1]
MICRO_BATCH_TOKENS = 128
LOAD_POLL_S = 2.0


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    """`policy.routing_replay` of the row."""
    mini_batches: int
    baseline: str | None
    """The row its extra cost is measured against."""
    includes: str
    """What the timed step does (printed)."""


ROWS = (
    Row("none", 1, None, "pack, fwd+bwd, update"),
    Row("rollout", 1, "none", "+ carried routing packed, replayed, own top-k counted"),
    Row("none x2", 2, None, "no-grad pass, 2 x (fwd+bwd, update)"),
    Row("learner", 2, "none x2", "+ first pass records, both updates replay"),
)


# ----------------------------------------------------------------------------- the batch
def test_image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return normalize_image(Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)))


def make_batch(policy, images: bool, seed: int = 0) -> list[Trajectory]:
    """8 trajectories, Observer and Solver alternating, two per group, of growing lengths;
    with `images`, trajectories 1 and 4 show an image (its pads expanded as the engine does).
    Each carries random distinct top-k `routed_experts` for every position."""
    cfg, tc = policy.hf_config, policy.hf_config.text_config
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(8):
        prompt = torch.randint(0, 400, (24 + 4 * k,), generator=g).tolist()
        pics = [test_image(k)] if images and k in (1, 4) else []
        if pics:
            prompt = expand_image_pads(prompt[:4] + [cfg.vision_start_token_id, cfg.image_token_id,
                                                     cfg.vision_end_token_id] + prompt[4:],
                                       pics, policy.encode)
        response = torch.randint(0, 400, (8 + 2 * k,), generator=g).tolist()
        n = len(prompt) + len(response)
        routed = torch.rand(n, tc.num_hidden_layers, tc.num_experts, generator=g).topk(
            tc.num_experts_per_tok, dim=-1).indices.to(torch.uint8).numpy()
        out.append(Trajectory(role=Role(k % 2), task_uid=f"t{k // 2}", group_id=k // 2,
                              prompt_ids=prompt, response_ids=response,
                              rollout_logprobs=[-6.0] * len(response),
                              advantage=(1.0, -1.0, 0.5, -0.5)[k % 4], images=pics,
                              routed_experts=routed))
    return out


# ----------------------------------------------------------------------------- workers
def build_policy(hf_dir: Path, ep: int, routing_replay: str):
    cfg = LearnerConfig(precision="fp32")
    cfg.parallel.expert_parallel = ep
    cfg.batching.micro_batch_tokens = MICRO_BATCH_TOKENS
    cfg.optim.lr = 1e-30  # below every weight's ulp: the repeats step on the same weights
    cfg.validate()
    return policy_from_hf(hf_dir, cfg, TorchPPO(LossSettings()), routing_replay=routing_replay)


def slowest(seconds: float) -> float:
    t = torch.tensor([seconds])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def timed_step(policy, batch: list[Trajectory], row: Row) -> tuple[float, dict]:
    policy.routing_replay = row.name.split()[0]
    policy.cfg.batching.mini_batches = row.mini_batches
    dist.barrier()
    t0 = time.perf_counter()
    metrics = policy.step(batch)
    return slowest(time.perf_counter() - t0), metrics


def learner_worker(hf_dir: Path, ep: int, batches: list[str], repeats: int) -> list[dict]:
    policy = build_policy(hf_dir, ep, "rollout")
    out = []
    for batch_name in batches:
        batch = make_batch(policy, images=batch_name == "mixed")
        times = {r.name: [] for r in ROWS}
        agree = {}
        for rep in range(repeats + 1):  # the first round warms up
            for row in ROWS:
                seconds, metrics = timed_step(policy, batch, row)
                if rep:
                    times[row.name].append(seconds)
                agree[row.name] = metrics.get("moe/agree")
        tokens = sum(len(t.prompt_ids) + len(t.response_ids) for t in batch)
        for row in ROWS:
            base = times.get(row.baseline)
            extra = None if base is None else 100 * statistics.median(
                t / b - 1 for t, b in zip(times[row.name], base))
            best = min(times[row.name])
            out.append({"ep": ep, "batch": batch_name, "tokens": tokens, "replay": row.name,
                            "mini_batches": row.mini_batches, "includes": row.includes,
                            "times": times[row.name], "median_s": statistics.median(times[row.name]),
                            "best_s": best, "extra_pct": extra,
                            "extra_best_pct": None if base is None else 100 * (best / min(base) - 1),
                            "agree": agree[row.name]})
    del policy
    destroy_parallel()
    return out


def sync_worker(hf_dir: Path, ep: int, engine_tp: int, repeats: int) -> dict:
    policy = build_policy(hf_dir, ep, "none")
    config = EngineConfig(dtype="float32", max_model_len=512, seed=0,
                          tensor_parallel_size=engine_tp)
    threads = torch.get_num_threads()
    engine = VllmEngine(hf_dir, config)  # collective: every rank at the same moment
    torch.set_num_threads(threads)  # vLLM's CPU engine pins the process to one thread
    runs = [sync_weights(policy.chunks, policy.pg, policy.hf_config, engine,
                         bucket_bytes=config.sync_bucket_mib * 2**20,
                         dtype=cast_dtype(config.dtype)) for _ in range(repeats + 1)][1:]
    mine = {"received": runs[0].received_bytes, "engine": runs[0].engine_bytes,
                "pushed": runs[0].bytes, "tensors": runs[0].tensors, "buckets": runs[0].buckets,
                "seconds": [s.seconds for s in runs]}
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, mine)
    seconds = [max(r["seconds"][i] for r in ranks) for i in range(repeats)]
    received = [r["received"] for r in ranks]
    return {"ep": ep, "engine_tp": engine_tp, "received": received, "received_max": max(received),
                "received_mean": sum(received) / len(received),
                "engine": [r["engine"] for r in ranks], "pushed": [r["pushed"] for r in ranks],
                "tensors": ranks[0]["tensors"], "buckets": ranks[0]["buckets"], "seconds": seconds,
                "median_s": statistics.median(seconds), "start_s": engine.start_seconds}


def worker(args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    install_megatron_cpu_compat()
    hf_dir = Path(args.work) / "tiny-moe"
    if args.worker == "learner":
        result = learner_worker(hf_dir, args.ep, args.batches.split(","), args.repeats)
    else:
        result = sync_worker(hf_dir, args.ep, args.engine_tp, args.repeats)
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(result))
    # no engine.close() nor destroy_process_group(): vLLM's shutdown destroys the default group
    # the ranks still share
    dist.barrier()


# ----------------------------------------------------------------------------- launcher
class LoadSampler:
    """The machine's 1-minute load average, sampled in a thread while launches run."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(LOAD_POLL_S):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def launch(args, work: Path, role: str, ep: int, engine_tp: int = 1) -> dict | list:
    out = work / f"{role}-ep{ep}-tp{engine_tp}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, "--worker", role, "--ep", str(ep), "--engine-tp", str(engine_tp),
           "--batches", args.batches, "--repeats", str(args.repeats), "--work", str(work),
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"bench_moe: {role} worker at EP={ep} engine TP={engine_tp} exited "
                         f"{proc.returncode}")
    return json.loads(out.read_text())


# ----------------------------------------------------------------------------- tables
def table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(head, widths)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def learner_table(rows: list[dict]) -> str:
    head = ("EP", "batch", "tokens", "routing replay", "mini-batches", "step includes",
            "step s median", "best", "extra (paired median)", "extra (best)", "moe/agree")
    return table(head, [(str(r["ep"]), r["batch"], str(r["tokens"]), r["replay"],
                         str(r["mini_batches"]), r["includes"], f"{r['median_s']:.3f}",
                         f"{r['best_s']:.3f}", percent(r["extra_pct"]),
                         percent(r["extra_best_pct"]),
                         "-" if r["agree"] is None else f"{r['agree']:.3f}") for r in rows])


def percent(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1f}%"


def sync_table(rows: list[dict]) -> str:
    head = ("EP", "engine TP", "engines", "received B per rank", "received max",
            "received mean", "engine loads B per rank", "pushed B per rank", "tensors",
            "sync s (median)")
    return table(head, [(str(r["ep"]), str(r["engine_tp"]),
                         "one per rank" if r["engine_tp"] == 1 else "one over both ranks",
                         " / ".join(str(b) for b in r["received"]), str(r["received_max"]),
                         f"{r['received_mean']:.0f}", " / ".join(str(b) for b in r["engine"]),
                         " / ".join(str(b) for b in r["pushed"]), str(r["tensors"]),
                         f"{r['median_s']:.3f}") for r in rows])


def machine_line(samples: list[float]) -> str:
    load = os.getloadavg()
    during = (f"1-min load during the run: mean {statistics.fmean(samples):.2f}, max "
              f"{max(samples):.2f} ({len(samples)} samples)" if samples else "")
    return (f"machine: {os.cpu_count()} cores; load average now {load[0]:.2f} {load[1]:.2f} "
            f"{load[2]:.2f}; {during}")


def report(result: dict) -> str:
    r = result
    parts = [(f"\ntiny Qwen3-VL-MoE, fp32, 2 ranks (gloo, 1 thread each), {r['repeats']} repeats "
              "after a warm-up; times are the slowest rank's"), machine_line(r["load_samples"])]
    if r["learner"]:
        parts += [("\nlearner step (policy.step; extra over the none row with as many "
                   "mini-batches: median over repeats of row / none - 1, and best / best - 1)"),
                  learner_table(r["learner"])]
    if r["sync"]:
        parts += [("\nweight sync into vLLM (bridge.colocated.sync_weights, SyncStats per rank "
                   "r0 / r1; pushed: checkpoint-shaped tensors handed to the engine, which keeps "
                   "its rows)"), sync_table(r["sync"])]
    return "\n".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--eps", default="1,2", help="expert-parallel sizes (comma-separated)")
    p.add_argument("--batches", default="text,mixed", help="text and/or mixed (with images)")
    p.add_argument("--engine-tps", default="1,2", help="sync engine TP: 1 per rank, 2 over both")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-sync", action="store_true", help="learner rows only (no vLLM)")
    p.add_argument("--no-learner", action="store_true", help="sync rows only")
    p.add_argument("--work", default=None, help="checkpoint and result dir (default: temp dir)")
    p.add_argument("--json", default=None, help="also write the results here")
    for hidden in ("--worker", "--out"):
        p.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    p.add_argument("--ep", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--engine-tp", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise ValueError(f"--repeats ({args.repeats}) must be >= 1")
    unknown = set(args.batches.split(",")) - {"text", "mixed"}
    if unknown:
        raise ValueError(f"--batches {args.batches!r}: text and/or mixed, not {sorted(unknown)}")
    args.ep_list = [int(e) for e in args.eps.split(",")]
    args.engine_tp_list = [int(t) for t in args.engine_tps.split(",")]
    if not set(args.ep_list) <= {1, 2} or not set(args.engine_tp_list) <= {1, 2}:
        raise ValueError(f"--eps {args.eps!r} and --engine-tps {args.engine_tps!r}: 1 and/or 2 "
                         "(2 ranks)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_moe_"))
    if not (work / "tiny-moe" / "config.json").exists():
        make_tiny_checkpoint(work / "tiny-moe", demo_corpus(2000), seed=0, family="qwen3_vl_moe")
    result = {"repeats": args.repeats, "learner": [], "sync": []}
    with LoadSampler() as load:
        for ep in args.ep_list:
            if not args.no_learner:
                result["learner"] += launch(args, work, "learner", ep)
            for engine_tp in [] if args.no_sync else args.engine_tp_list:
                result["sync"].append(launch(args, work, "sync", ep, engine_tp))
    result["load_samples"] = load.samples
    result["cores"] = os.cpu_count()
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

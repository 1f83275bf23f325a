"""Cluster launchers: torchrun command lines per node, or a complete Slurm sbatch script.

`build_launch(config, mode, config_path)` judges the layout by the rule set the planner, the
converter and the learner share (`learner.layout.check_layout`: world size = TP * PP * DP, the
model's heads, KV heads, vocabulary and layers divide, deepstack on the first stage) and, unless
told not to, refuses a config whose memory plan does not fit, before anything starts.
`LaunchSpec.render()` is what `--dry-run` prints.

A one-node job uses torchrun's standalone rendezvous: its agent binds a free port and holds it, so
two jobs on one machine never race for a port. Jobs of several nodes meet at the explicit
endpoint `cluster.master_port` on the first node.

Every node runs one torchrun with one rank per GPU; each rank runs `prco-mega train CONFIG`
(as `python -m prco_mega.cli train CONFIG`). With `rollout_placement: separate` the job spans the
learner nodes plus the rollout nodes; ranks [0, PRCO_LEARNER_WORLD_SIZE) are learners and the
rest host vLLM engines (torchrun numbers ranks node by node, so roles are whole nodes).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from prco_mega.cluster.memory import check_fits, plan_memory
from prco_mega.cluster.plan_inputs import ClusterSection, SlurmSection, plan_inputs_from_config
from prco_mega.config import load_yaml

Mode = Literal["torchrun", "slurm"]
HEAD_PLACEHOLDER = "HEAD_NODE_ADDR"
STOP_WARNING_S = 600
"""Seconds ahead of a Slurm job's time limit at which its ranks are asked to stop: time for the
step in flight and its checkpoint (`runtime.preemption`). A `--signal` among
`cluster.slurm.extra_sbatch` comes later in the script and replaces it."""


def launch_env(cluster: ClusterSection, learner_world: int) -> dict[str, str]:
    """Environment of every rank; `cluster.env` overrides these defaults."""
    env = {
        # Megatron's TP/SP overlap relies on kernels reaching the GPU in issue order.
        "CUDA_DEVICE_MAX_CONNECTIONS": "1",
        # A failed or hung collective aborts the process group instead of hanging the job.
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "NCCL_DEBUG": "WARN",
        # Every engine runs in-process in its torchrun ranks (colocated: inside each learner rank;
        # separate: in the engine ranks' own world), so weights reach it by in-process RPC.
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        # CUDA cannot be re-initialised in a forked child.
        "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
        "OMP_NUM_THREADS": str(max(1, cluster.slurm.cpus_per_task // cluster.gpus_per_node)),
        "PYTHONUNBUFFERED": "1",
        "PRCO_ROLLOUT_PLACEMENT": cluster.rollout_placement,
        "PRCO_LEARNER_WORLD_SIZE": str(learner_world),
        # torchrun passes a SIGTERM on to its workers and kills them this many seconds later
        # (30 by default): the ranks finish the step in flight and save it first.
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(STOP_WARNING_S),
    }
    if cluster.nccl_socket_ifname:
        env["NCCL_SOCKET_IFNAME"] = cluster.nccl_socket_ifname
    if cluster.nccl_ib_hca:
        env["NCCL_IB_HCA"] = cluster.nccl_ib_hca
    env.update(cluster.env)
    return env


def _placeholders(env: dict[str, str]) -> list[str]:
    """Commented exports for the network settings the config leaves to NCCL's auto-detection."""
    hints = {"NCCL_SOCKET_IFNAME": "<interface, e.g. ens or ib0>  # cluster.nccl_socket_ifname",
             "NCCL_IB_HCA": "<adapters, e.g. mlx5>  # cluster.nccl_ib_hca"}
    return [f"# export {k}={v}" for k, v in hints.items() if k not in env]


@dataclass
class LaunchSpec:
    mode: Mode
    job_name: str
    nnodes: int
    """All nodes of the job (learner + separate rollout nodes)."""
    nproc_per_node: int
    learner_world_size: int
    rdzv_backend: str
    rdzv_host: str
    master_port: int
    env: dict[str, str]
    train_argv: list[str]
    """The per-rank program after torchrun's options: -m prco_mega.cli train CONFIG ..."""
    slurm: SlurmSection
    node_ranks: list[int] = field(default_factory=list)
    """Nodes to render torchrun lines for (torchrun mode)."""

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def standalone(self) -> bool:
        """One node: torchrun's standalone rendezvous (no endpoint, no node rank)."""
        return self.nnodes == 1

    @property
    def rdzv_endpoint(self) -> str:
        return f"{self.rdzv_host}:{self.master_port}"

    def global_ranks(self, node_rank: int) -> range:
        """Ranks torchrun gives the GPUs of the node with group rank `node_rank`."""
        return range(node_rank * self.nproc_per_node, (node_rank + 1) * self.nproc_per_node)

    def torchrun_argv(self, node_rank: int | str, extra: tuple[str, ...] = ()) -> list[str]:
        argv = ["torchrun", f"--nnodes={self.nnodes}", f"--nproc_per_node={self.nproc_per_node}"]
        if self.standalone:
            argv.append("--standalone")
        else:
            if self.rdzv_backend == "static":  # c10d assigns node ranks itself, ignores the flag
                argv.append(f"--node_rank={node_rank}")
            argv += [f"--rdzv_backend={self.rdzv_backend}",
                     f"--rdzv_endpoint={self.rdzv_endpoint}", f"--rdzv_id={self.job_name}"]
        return argv + ["--max_restarts=0", *extra] + self.train_argv

    @property
    def rendezvous(self) -> str:
        """How the nodes meet, in words."""
        if self.standalone:
            return "standalone rendezvous (torchrun binds a free port and keeps it)"
        return f"rendezvous {self.rdzv_backend} at {self.rdzv_endpoint}"

    def render(self) -> str:
        return render_torchrun(self) if self.mode == "torchrun" else render_sbatch(self)


def _exports(env: dict[str, str]) -> list[str]:
    return [f"export {k}={shlex.quote(v)}" for k, v in env.items()] + _placeholders(env)


def render_torchrun(spec: LaunchSpec) -> str:
    """Shell lines: the environment, then one torchrun command per node."""
    lines = [f"# {spec.job_name}: {spec.nnodes} node(s) x {spec.nproc_per_node} GPUs = "
             f"{spec.world_size} ranks ({spec.learner_world_size} learner ranks), "
             f"{spec.rendezvous}", *_exports(spec.env)]
    for k in spec.node_ranks:
        r = spec.global_ranks(k)
        any_order = spec.rdzv_backend == "c10d" and not spec.standalone
        lines.append(f"# node {k}: ranks {r.start}-{r.stop - 1}"
                     + (" (joins in any order)" if any_order else ""))
        lines.append(shlex.join(spec.torchrun_argv(k)))
    return "\n".join(lines) + "\n"


def render_sbatch(spec: LaunchSpec) -> str:
    """A complete sbatch script: one task per node, srun starting torchrun on every node with the
    rendezvous on the first host of the allocation."""
    s, log = spec.slurm, spec.slurm.log_dir
    head = ["#!/bin/bash", f"#SBATCH --job-name={spec.job_name}", f"#SBATCH --nodes={spec.nnodes}",
            "#SBATCH --ntasks-per-node=1", f"#SBATCH --gpus-per-node={spec.nproc_per_node}",
            f"#SBATCH --cpus-per-task={s.cpus_per_task}", f"#SBATCH --time={s.time}",
            f"#SBATCH --output={log}/%x-%j.out", f"#SBATCH --error={log}/%x-%j.err"]
    head += [f"#SBATCH --partition={s.partition}"] * bool(s.partition)
    head += [f"#SBATCH --account={s.account}"] * bool(s.account)
    # Requeued when preempted or when its node fails (a requeued job keeps its id: its logs are
    # appended to); warned (USR1, this script only) ahead of its time limit: `_stop_and_requeue`.
    head += ["#SBATCH --exclusive"] * s.exclusive + [
        "#SBATCH --requeue", "#SBATCH --open-mode=append",
        f"#SBATCH --signal=B:USR1@{STOP_WARNING_S}", *(f"#SBATCH {o}" for o in s.extra_sbatch)]
    body = [f"# {spec.world_size} ranks ({spec.learner_world_size} learner ranks); the log "
            f"directory {log}/ must exist before sbatch (tools/launch_slurm.sh creates it)",
            "set -euo pipefail", *s.setup, *_exports(spec.env),
            # sed reads all of scontrol's output: `head -n 1` may exit first, and under
            # `set -o pipefail` scontrol's SIGPIPE (exit 141) would kill the job script.
            'HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)',
            "export HEAD_NODE"]
    inner = _srun_inner(spec)
    body.append(f"srun --nodes={spec.nnodes} --ntasks-per-node=1 --kill-on-bad-exit=1 "
                f"bash -c {shlex.quote(inner)} &")
    return "\n".join(head + [""] + body + _stop_and_requeue()) + "\n"


def _stop_and_requeue() -> list[str]:
    """The script's end: wait for srun, pass the time limit's warning on to the ranks, requeue.

    The warning (USR1) reaches this script only: the script hands one SIGTERM to srun, which
    gives it to each node's torchrun, which gives it to its workers and waits
    TORCH_ELASTIC_SHUTDOWN_TIMEOUT for them; they stop after the step in flight and save it
    (`runtime.preemption`); then the job is requeued and `train --resume auto` continues it.
    Not USR1 to the ranks' step (`--signal` without `B:`): torchrun's agent does not handle
    USR1 and would die of it, leaving its workers behind; nor a second SIGTERM: the agent would
    stop waiting for its workers. Preemption and `scancel` signal the ranks themselves
    (SIGTERM); the script then only keeps the job alive while they save, and requeueing a
    preempted job is Slurm's (`--requeue`), never the script's: a cancelled job stays so."""
    return [
        "srun_pid=$!",
        "requeue=0",
        'trap \'requeue=1; kill -TERM "$srun_pid" 2>/dev/null || true\' USR1',
        "trap : TERM",
        "# a trapped signal ends `wait` early: wait again until srun has exited, then take its",
        "# status (the shell keeps it)",
        'while kill -0 "$srun_pid" 2>/dev/null; do wait "$srun_pid" || true; done',
        'status=0; wait "$srun_pid" || status=$?',
        'if (( requeue )); then scontrol requeue "$SLURM_JOB_ID"; fi',
        'exit "$status"']


def _srun_inner(spec: LaunchSpec) -> str:
    """The per-node command; $SLURM_NODEID, $HEAD_NODE and $SLURM_JOB_ID expand on each node."""
    pinned = LaunchSpec(**{**spec.__dict__, "rdzv_host": "$HEAD_NODE",
                           "job_name": "$SLURM_JOB_ID"})
    log = shlex.quote(spec.slurm.log_dir)
    argv = pinned.torchrun_argv("$SLURM_NODEID")
    extra = [f"--log_dir={log}/torchrun-$SLURM_JOB_ID/node$SLURM_NODEID", "--tee=3"]
    argv = argv[:-len(spec.train_argv)] + extra + [shlex.quote(a) for a in spec.train_argv]
    return "exec " + " ".join(argv)


def build_launch(config: dict, mode: Mode, config_path: str, *, node_rank: int | None = None,
                 master_addr: str | None = None, train_args: tuple[str, ...] = (),
                 check_memory: bool = True) -> LaunchSpec:
    """Validate a run config and describe its launch; a layout that does not divide or a memory
    plan that does not fit raises ValueError naming the numbers. `master_addr` is the rendezvous
    host of a job of several nodes (a one-node job needs none)."""
    if mode not in ("torchrun", "slurm"):
        raise ValueError(f"launch mode {mode!r} is not one of ['torchrun', 'slurm']")
    inputs, cluster = plan_inputs_from_config(config)
    if check_memory:
        check_fits(plan_memory(inputs))
    nnodes = cluster.nodes + cluster.rollout_nodes
    if node_rank is not None and not 0 <= node_rank < nnodes:
        raise ValueError(f"node_rank ({node_rank}) must be in [0, {nnodes})")
    host = master_addr or ("localhost" if nnodes == 1 else HEAD_PLACEHOLDER)
    if mode == "slurm":  # a requeued job continues; the first attempt starts (`loop.main`)
        train_args = (*train_args, "--resume", "auto")
    run_name = str((config.get("run") or {}).get("name", "prco"))
    return LaunchSpec(
        mode=mode, job_name=run_name, nnodes=nnodes, nproc_per_node=cluster.gpus_per_node,
        learner_world_size=cluster.world_size, rdzv_backend=cluster.rdzv_backend, rdzv_host=host,
        master_port=cluster.master_port, env=launch_env(cluster, cluster.world_size),
        train_argv=["-m", "prco_mega.cli", "train", config_path, *train_args],
        slurm=cluster.slurm,
        node_ranks=list(range(nnodes)) if node_rank is None else [node_rank])


def execute(spec: LaunchSpec, script_path: str | None = None) -> int:
    """Run the launch: torchrun on this node, or write the sbatch script and submit it."""
    if spec.mode == "slurm":
        path = Path(script_path or Path(spec.slurm.log_dir) / f"{spec.job_name}.sbatch")
        Path(spec.slurm.log_dir).mkdir(parents=True, exist_ok=True)
        path.write_text(spec.render())
        return subprocess.call(["sbatch", str(path)])
    if len(spec.node_ranks) != 1:
        raise ValueError(f"a {spec.nnodes}-node torchrun launch runs one node at a time: pass "
                         "node_rank (--node-rank K) on each node, or use --mode slurm")
    return subprocess.call(spec.torchrun_argv(spec.node_ranks[0]), env={**os.environ, **spec.env})


# ----------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `prco-mega launch` (also `python -m prco_mega.cluster.launch`)."""
    parser.add_argument("config", help="YAML run config with a cluster: section")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides of the config")
    parser.add_argument("--mode", choices=["torchrun", "slurm"], default="torchrun")
    parser.add_argument("--dry-run", action="store_true", help="print what would be launched")
    parser.add_argument("--node-rank", type=int, default=None, help="torchrun: this node only")
    parser.add_argument("--master-addr", default=None, help="rendezvous host (torchrun mode)")
    parser.add_argument("--script", default=None, help="slurm: where to write the sbatch file")
    parser.add_argument("--skip-memory-check", action="store_true")


def run_from_args(args: argparse.Namespace) -> int:
    config = load_yaml(args.config, args.overrides)
    train_args = tuple(args.overrides)
    spec = build_launch(config, args.mode, args.config, node_rank=args.node_rank,
                        master_addr=args.master_addr, train_args=train_args,
                        check_memory=not args.skip_memory_check)
    if args.dry_run:
        print(spec.render(), end="")
        return 0
    return execute(spec, args.script)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prco_mega.cluster.launch", description=__doc__)
    add_arguments(parser)
    try:
        return run_from_args(parser.parse_intermixed_args(argv))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Launchers: what `launch --dry-run` prints for each cluster config is a valid torchrun / sbatch
launch with the right world size, ranks, rendezvous and environment; bad layouts never launch;
the sbatch script stops its ranks ahead of the time limit and requeues the job, whose command
continues the run."""
from __future__ import annotations

import os
import shlex
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from prco_mega.cluster.launch import STOP_WARNING_S, build_launch, execute
from prco_mega.config import load_yaml

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CLUSTER_CONFIGS = ["qwen25vl_3b_h100x8.yaml", "qwen25vl_7b_h100x8.yaml",
                   "qwen25vl_32b_h100x32.yaml", "qwen25vl_72b_h100x64.yaml",
                   "qwen3vl_8b_h100x8.yaml", "qwen3vl_32b_h100x32.yaml",
                   "qwen3vl_30b_a3b_h100x8.yaml", "qwen3vl_30b_a3b_h100x16.yaml"]
"""Colocated configs (the learner's nodes are the job's); qwen3vl_235b_a22b_h100x192.yaml places
its engines on nodes of their own (`test_the_separate_placement_config_launches_its_rollout_nodes`)."""
REQUIRED_ENV = {"CUDA_DEVICE_MAX_CONNECTIONS": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
                "VLLM_WORKER_MULTIPROC_METHOD": "spawn"}


def _torchrun(argv: list[str]):
    """Parse a torchrun command line with torchrun's own argument parser."""
    from torch.distributed.run import get_args_parser

    assert argv[0] == "torchrun"
    return get_args_parser().parse_args(argv[1:])


def _exports(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export "):].partition("=")
            out[key] = shlex.split(value)[0] if value else ""
    return out


def _layout(data: dict) -> tuple[int, int, int]:
    par = data["learner"]["parallel"]
    return par["tensor_parallel"], par["pipeline_parallel"], data["cluster"]["data_parallel"]


@pytest.mark.parametrize("name", CLUSTER_CONFIGS)
def test_torchrun_dry_run_has_the_world_size_ranks_and_environment(name):
    path = str(CONFIGS / name)
    data = load_yaml(path)
    text = build_launch(data, "torchrun", path, master_addr="10.1.2.3").render()
    commands = [shlex.split(line) for line in text.splitlines() if line.startswith("torchrun ")]
    nodes = data["cluster"]["nodes"]
    tp, pp, dp = _layout(data)
    assert len(commands) == nodes  # one command per node
    for argv in commands:
        args = _torchrun(argv)
        assert int(args.nnodes) == nodes and int(args.nproc_per_node) == 8
        assert int(args.nnodes) * int(args.nproc_per_node) == tp * pp * dp
        if nodes == 1:  # torchrun binds a free port itself: no port to collide on
            assert args.standalone and "--rdzv_endpoint" not in " ".join(argv)
        else:
            assert args.rdzv_backend == "c10d" and args.rdzv_endpoint == "10.1.2.3:29500"
        assert args.module and args.training_script == "prco_mega.cli"
        assert args.training_script_args == ["train", path]
    env = _exports(text)
    assert REQUIRED_ENV.items() <= env.items()
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # colocated engines live in the rank
    assert env["PRCO_LEARNER_WORLD_SIZE"] == str(tp * pp * dp)


def test_single_node_launch_lets_torchrun_pick_and_hold_the_port():
    path = str(CONFIGS / "qwen25vl_7b_h100x8.yaml")
    argv = build_launch(load_yaml(path), "torchrun", path).torchrun_argv(0)
    args = _torchrun(argv)
    assert args.standalone and args.max_restarts == 0
    assert not any(a.startswith(("--master_port", "--rdzv_endpoint", "--node_rank"))
                   for a in argv)


def test_static_rendezvous_gives_each_node_its_rank_and_ranks_cover_the_world():
    path = str(CONFIGS / "qwen25vl_32b_h100x32.yaml")
    spec = build_launch(load_yaml(path, ["cluster.rdzv_backend=static"]), "torchrun", path,
                        master_addr="head")
    lines = [shlex.split(x) for x in spec.render().splitlines() if x.startswith("torchrun ")]
    assert [int(_torchrun(a).node_rank) for a in lines] == [0, 1, 2, 3]
    ranks = [r for k in range(spec.nnodes) for r in spec.global_ranks(k)]
    assert ranks == list(range(32))


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _run_sbatch_script(script: str, tmp_path: Path, hosts: list[str]) -> list[Path]:
    """Run the generated script with stand-ins for scontrol/srun/torchrun that record, per node,
    the arguments and environment torchrun would receive (checks the script's shell expansion)."""
    bin_dir, out = tmp_path / "bin", tmp_path / "out"
    bin_dir.mkdir()
    out.mkdir()
    _write(bin_dir / "scontrol", "#!/bin/bash\nprintf '%s\\n' " + " ".join(hosts) + "\n")
    _write(bin_dir / "srun", "#!/bin/bash\nn=1\nwhile [[ $1 == --* ]]; do\n"
           "  [[ $1 == --nodes=* ]] && n=${1#--nodes=}\n  shift\ndone\n"
           "for ((i = 0; i < n; i++)); do SLURM_NODEID=$i \"$@\"; done\n")
    _write(bin_dir / "torchrun", "#!/bin/bash\nprintf '%s\\n' \"$@\" > \"$OUT/node$SLURM_NODEID\"\n"
           "env > \"$OUT/env$SLURM_NODEID\"\n")
    (tmp_path / "job.sbatch").write_text(script)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(out), "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu-[1-9]", "HOME": str(tmp_path)}
    subprocess.run(["bash", str(tmp_path / "job.sbatch")], env=env, cwd=tmp_path, check=True)
    return sorted(out.glob("node*"))


@pytest.mark.parametrize("name", ["qwen25vl_32b_h100x32.yaml", "qwen25vl_72b_h100x64.yaml"])
def test_sbatch_script_launches_torchrun_on_every_node_with_rendezvous_on_the_first(name, tmp_path):
    path = str(CONFIGS / name)
    data = load_yaml(path)
    script = build_launch(data, "slurm", path).render()
    sbatch = dict(line[len("#SBATCH --"):].split("=", 1) for line in script.splitlines()
                  if line.startswith("#SBATCH --") and "=" in line)
    nodes = data["cluster"]["nodes"]
    assert sbatch["nodes"] == str(nodes) and sbatch["ntasks-per-node"] == "1"
    assert sbatch["gpus-per-node"] == "8" and sbatch["cpus-per-task"] == "96"
    assert sbatch["time"] == data["cluster"]["slurm"]["time"]
    assert sbatch["output"] == "logs/%x-%j.out" and sbatch["error"] == "logs/%x-%j.err"
    hosts = [f"gpu-{i}" for i in range(nodes)]
    recorded = _run_sbatch_script(script, tmp_path, hosts)
    assert len(recorded) == nodes
    tp, pp, dp = _layout(data)
    for i in range(nodes):
        args = _torchrun(["torchrun", *(tmp_path / "out" / f"node{i}").read_text().splitlines()])
        assert int(args.nnodes) * int(args.nproc_per_node) == tp * pp * dp
        assert args.rdzv_backend == "c10d" and args.rdzv_endpoint == "gpu-0:29500"
        assert args.rdzv_id == "4242" and args.log_dir == f"logs/torchrun-4242/node{i}"
        # a requeued job continues the run; its first attempt starts it
        assert args.training_script_args == ["train", path, "--resume", "auto"]
        env = dict(line.split("=", 1) for line in
                   (tmp_path / "out" / f"env{i}").read_text().splitlines() if "=" in line)
        assert REQUIRED_ENV.items() <= env.items()


STUB_SRUN = """#!/bin/bash
while [[ $1 == --* ]]; do shift; done
trap 'kill -TERM $task' TERM
SLURM_NODEID=0 "$@" &
task=$!
while kill -0 $task 2>/dev/null; do wait $task || true; done
wait $task
"""
"""One node's srun: starts the task and passes a SIGTERM on to it, as srun does."""
STUB_TORCHRUN = """#!/bin/bash
printf '%s\\n' "$@" > "$OUT/argv"
trap 'echo "$TORCH_ELASTIC_SHUTDOWN_TIMEOUT" > "$OUT/stopped"; exit 1' TERM
touch "$OUT/started"
while :; do sleep 0.05; done
"""
"""A torchrun whose ranks are still in a step: a SIGTERM ends it, recording how long the real
one would wait for its workers."""


@pytest.mark.parametrize("sent, requeued", [("USR1", True), ("TERM", False)])
def test_sbatch_script_stops_its_ranks_ahead_of_the_time_limit_and_requeues(sent, requeued,
                                                                            tmp_path):
    """USR1 is Slurm's warning ahead of the time limit, to the batch script only: the ranks get
    one SIGTERM through srun and torchrun, which waits for them to save as long as the warning's
    lead; then the script requeues the job. TERM to every process is preemption or scancel:
    the script waits for its ranks and leaves requeueing to Slurm (a cancelled job stays so)."""
    path = str(CONFIGS / "qwen25vl_7b_h100x8.yaml")
    script = build_launch(load_yaml(path), "slurm", path).render()
    assert {"#SBATCH --requeue", "#SBATCH --open-mode=append",
            f"#SBATCH --signal=B:USR1@{STOP_WARNING_S}"} <= set(script.splitlines())
    bin_dir, out = tmp_path / "bin", tmp_path / "out"
    bin_dir.mkdir()
    out.mkdir()
    _write(bin_dir / "scontrol", '#!/bin/bash\nif [[ $1 == requeue ]]; then echo "$*" >> '
           '"$OUT/requeue"; else echo gpu-0; fi\n')
    _write(bin_dir / "srun", STUB_SRUN)
    _write(bin_dir / "torchrun", STUB_TORCHRUN)
    (tmp_path / "job.sbatch").write_text(script)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(out), "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu-0", "HOME": str(tmp_path)}
    job = subprocess.Popen(["bash", str(tmp_path / "job.sbatch")], env=env, cwd=tmp_path,
                           start_new_session=True)
    deadline = time.time() + 30
    while not (out / "started").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert (out / "started").exists(), "the script never started torchrun"
    if sent == "USR1":
        job.send_signal(signal.SIGUSR1)
    else:  # Slurm signals every process of the job
        os.killpg(job.pid, signal.SIGTERM)
    assert job.wait(timeout=30) == 1  # torchrun's status: the ranks stopped early
    assert (out / "stopped").read_text().split() == [str(STOP_WARNING_S)]
    requeues = (out / "requeue").read_text().splitlines() if (out / "requeue").exists() else []
    assert requeues == (["requeue 4242"] if requeued else [])
    argv = (out / "argv").read_text().splitlines()
    assert argv[-4:] == ["train", path, "--resume", "auto"]


def test_separate_rollout_nodes_join_the_job_after_the_learner_nodes(tmp_path):
    path = str(CONFIGS / "qwen25vl_72b_h100x64.yaml")
    data = load_yaml(path, ["cluster.rollout_placement=separate", "cluster.rollout_nodes=2",
                            "cluster.rdzv_backend=static", "engine.gpu_memory_utilization=0.85"])
    spec = build_launch(data, "slurm", path)
    assert spec.nnodes == 10 and spec.learner_world_size == 64
    script = spec.render()
    assert "#SBATCH --nodes=10" in script.splitlines()
    recorded = _run_sbatch_script(script, tmp_path, [f"gpu-{i}" for i in range(10)])
    node_ranks = sorted(int(_torchrun(["torchrun", *p.read_text().splitlines()]).node_rank)
                        for p in recorded)
    assert node_ranks == list(range(10))
    env = _exports(script)
    assert env["PRCO_ROLLOUT_PLACEMENT"] == "separate" and env["PRCO_LEARNER_WORLD_SIZE"] == "64"
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # engines run in their own ranks


def test_nccl_network_settings_come_from_the_config():
    path = str(CONFIGS / "qwen25vl_32b_h100x32.yaml")
    unset = build_launch(load_yaml(path), "slurm", path).render()
    assert "# export NCCL_SOCKET_IFNAME=" in unset and "NCCL_SOCKET_IFNAME" not in _exports(unset)
    data = load_yaml(path, ["cluster.nccl_socket_ifname=ib0", "cluster.nccl_ib_hca=mlx5",
                            "cluster.env={NCCL_DEBUG: INFO}"])
    env = _exports(build_launch(data, "slurm", path).render())
    assert env["NCCL_SOCKET_IFNAME"] == "ib0" and env["NCCL_IB_HCA"] == "mlx5"
    assert env["NCCL_DEBUG"] == "INFO"


@pytest.mark.parametrize("overrides,message", [
    (["cluster.data_parallel=3"],
     r"tensor_parallel \(2\) x pipeline_parallel \(1\) x data_parallel \(3\) = 6 "
     r"!= world size \(8\)"),
    (["learner.parallel.tensor_parallel=3"], r"world_size \(8\).*\(3 \* 1 = 3\)"),
    (["learner.parallel.tensor_parallel=8", "cluster.data_parallel=1"],
     r"tensor_parallel \(8\) must divide num_attention_heads \(28\)"),
    (["learner.parallel.pipeline_parallel=8", "learner.parallel.tensor_parallel=1",
      "cluster.data_parallel=1"], r"pipeline_parallel \(8\) must divide num_hidden_layers \(28\)"),
    (["engine.tensor_parallel_size=3"],
     r"engine.tensor_parallel_size \(3\) must divide gpus_per_node \(8\)"),
])
def test_a_layout_that_does_not_divide_is_refused_with_the_numbers(overrides, message):
    path = str(CONFIGS / "qwen25vl_7b_h100x8.yaml")
    with pytest.raises(ValueError, match=message):
        build_launch(load_yaml(path, overrides), "torchrun", path)


def test_a_config_that_does_not_fit_never_launches():
    path = str(CONFIGS / "qwen25vl_72b_h100x64.yaml")
    data = load_yaml(path, ["learner.parallel.pipeline_parallel=2", "cluster.data_parallel=4"])
    with pytest.raises(ValueError, match="does not fit") as err:
        build_launch(data, "slurm", path)
    assert "optimizer" in str(err.value) and "DOES NOT FIT" in str(err.value)


def test_multi_node_torchrun_needs_a_node_rank_to_run():
    path = str(CONFIGS / "qwen25vl_32b_h100x32.yaml")
    with pytest.raises(ValueError, match="node_rank"):
        execute(build_launch(load_yaml(path), "torchrun", path))
    with pytest.raises(ValueError, match=r"node_rank \(4\) must be in \[0, 4\)"):
        build_launch(load_yaml(path), "torchrun", path, node_rank=4)


@pytest.mark.parametrize("name", CLUSTER_CONFIGS)
def test_cluster_configs_validate_as_whole_run_configs(name):
    from prco_mega.config import load_config

    cfg = load_config(CONFIGS / name)  # raises on an unknown key or a wrong type anywhere
    assert cfg.cluster is not None and cfg.observer.n >= 2 and cfg.solver.n >= 2


def test_the_separate_placement_config_launches_its_rollout_nodes():
    path = str(CONFIGS / "qwen3vl_235b_a22b_h100x192.yaml")
    data = load_yaml(path)
    text = build_launch(data, "torchrun", path, master_addr="10.1.2.3").render()
    commands = [shlex.split(line) for line in text.splitlines() if line.startswith("torchrun ")]
    cluster = data["cluster"]
    nodes = cluster["nodes"] + cluster["rollout_nodes"]
    assert cluster["rollout_placement"] == "separate" and len(commands) == nodes
    tp, pp, dp = _layout(data)
    assert cluster["nodes"] * 8 == tp * pp * dp  # the learner's world is its own nodes'
    assert all(int(_torchrun(argv).nnodes) == nodes for argv in commands)
    assert _exports(text)["PRCO_LEARNER_WORLD_SIZE"] == str(tp * pp * dp)

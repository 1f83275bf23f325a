"""One learner loop for both placements, and the order of its calls around the learner step.

The loop (`runtime.loop.run`) is driven through the real placements (`Colocated`, `Remote`), with
the real router and publishers; recording stand-ins replace vLLM, Megatron and the network:
- colocated: the engine sleeps before the learner trains and wakes for the sync in vLLM's order
  (weights, push, KV cache); a step with nothing to train neither sleeps nor syncs;
- separate: the learner waits for the engines' part over the link, trains, sends its weights;
- both placements report the same step metrics;
- the engine ranks' worker takes new weights when the learner trained, and samples ahead no
  further than the staleness bound.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from prco_mega.algo.credit import Scored
from prco_mega.bridge import colocated as bridge_colocated
from prco_mega.bridge import remote as bridge_remote
from prco_mega.dist.routing import Router, WorldTransport, part_shapes
from prco_mega.rollout.placement import single_engine
from prco_mega.runtime import engine_worker, loop
from prco_mega.runtime.build import RunDirs
from prco_mega.runtime.colocated import Colocated
from prco_mega.runtime.placement import EngineReport
from prco_mega.runtime.remote import Remote
from prco_mega.types import Role, Slot, Trajectory

ENGINE_CFG = SimpleNamespace(sleep_level=2, sync_bucket_mib=1, dtype="bfloat16",
                             tensor_parallel_size=1, enable_expert_parallel=False)


class Recorder:
    def __init__(self):
        self.calls: list[tuple] = []

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags or ())))


def _traj(task: int = 0) -> Trajectory:
    return Trajectory(role=Role.SOLVER, task_uid=f"t{task}", group_id=0, prompt_ids=[1],
                      response_ids=[2], rollout_logprobs=[-1.0], policy_version=3,
                      slot=Slot(0, task))


class Plan:
    def __init__(self, n: int):
        self.n = n

    def owner(self) -> dict[int, int]:
        return dict.fromkeys(range(self.n), 0)


def _policy(log: Recorder):
    def train(mine, plan, step=None):
        log.calls.append(("learn", sorted(mine)))
        return {"loss": 0.1, "update_successful": 1.0}

    return SimpleNamespace(plan=lambda shapes: Plan(len(shapes)), train=train, chunks=[],
                           pg=SimpleNamespace(dp=SimpleNamespace(rank=lambda: 0)),
                           hf_config=None,
                           save=lambda root, step, data_state: log.calls.append(("save", step)),
                           load=lambda path: {"step": 0, "data_state": None})


class Logger:
    def __init__(self, log: Recorder):
        self.log_, self.rows = log, []

    def start(self, step):
        self.log_.calls.append(("log start", step))

    def log(self, metrics):
        self.rows.append(metrics)

    def close(self):
        self.log_.calls.append(("log close",))


def _colocated(log: Recorder, train: list[Trajectory], steps: int = 1) -> Colocated:
    def sample(stream, step, timer):
        log.calls.append(("sample", step))
        return Scored(list(train), {"solver/accuracy": 0.5}, {"solver/accuracy": 2.0})

    place = Colocated.__new__(Colocated)  # the parts a real run builds, as stand-ins
    place.cfg = SimpleNamespace(engine=ENGINE_CFG)
    place.policy, place.logger = _policy(log), Logger(log)
    place.side = SimpleNamespace(
        engine=log, shard=single_engine(), stream=SimpleNamespace(state_dict=lambda: {}),
        sample=sample,
        samples=SimpleNamespace(save=lambda step, scored: log.calls.append(("save samples", step)),
                                start=lambda step: None))
    place.publisher = bridge_colocated.ColocatedPublisher(log, ENGINE_CFG)
    place.router = Router(WorldTransport(), 0)
    return place


class EngineLink:
    """The learner's view of a link to one engine rank (member 1) that sends `part` each step."""

    rank, size = 0, 2

    def __init__(self, log: Recorder, part: list[Trajectory]):
        self.log, self.part = log, part

    def all_gather(self, obj):
        if obj is None or isinstance(obj, int):  # the router's replica ranks
            return [obj, None]
        report = EngineReport({"solver/accuracy": 0.5}, {"solver/accuracy": 2.0}, 3, {"pos": 1})
        return [obj, (part_shapes(self.part), report)]

    def broadcast_object(self, obj, src):
        return obj

    def exchange(self, outbox):
        self.log.calls.append(("routed",))
        return [outbox[0], dict(enumerate(self.part))]


class Store:
    """The launcher's key-value store, as the learner's publisher uses it."""

    def __init__(self):
        self.keys: set[str] = set()

    def set(self, key, value):
        self.keys.add(key)

    def check(self, keys):
        return all(k in self.keys for k in keys)


def _remote(log: Recorder, part: list[Trajectory]) -> Remote:
    link = EngineLink(log, part)
    split = SimpleNamespace(link=link, learner_size=1, engine_ranks=[1], store=Store())
    place = Remote.__new__(Remote)
    place.split, place.policy, place.logger = split, _policy(log), Logger(log)
    place.router = Router(link, 0)
    place.publisher = bridge_remote.RemotePublisher(split, ENGINE_CFG)
    place.stream_state = None
    return place


@pytest.fixture
def pushes(monkeypatch):
    log = Recorder()

    def sync_weights(chunks, pg, hf_config, engine, bucket_bytes, dtype):
        log.calls.append(("push",))
        assert (bucket_bytes, str(dtype)) == (2**20, "torch.bfloat16")  # from the engine section
        return SimpleNamespace(bytes=10, seconds=0.0, received_bytes=4)

    def send_weights(chunks, pg, hf_config, split, dtype, engine_tp, engine_experts):
        log.calls.append(("send",))
        return SimpleNamespace(bytes=10, seconds=0.0, received_bytes=0,
                               sent_per_engine_rank=(10,))

    monkeypatch.setattr(bridge_colocated, "sync_weights", sync_weights)
    monkeypatch.setattr(bridge_remote, "send_weights", send_weights)
    return log


def test_colocated_engine_sleeps_through_the_learner_step_and_wakes_weights_first(pushes):
    log = pushes
    metrics = loop.rl_step(_colocated(log, [_traj()]), step=3)
    assert log.calls == [("sample", 3), ("save samples", 3), ("sleep", 2), ("learn", [0]),
                         ("wake_up", ("weights",)), ("push",), ("wake_up", ("kv_cache",))]
    assert metrics["train/policy_lag"] == 0.0 and metrics["sync/bytes"] == 10
    assert metrics["sync/received_bytes_max"] == 4.0


def test_a_step_with_nothing_to_train_neither_sleeps_nor_syncs(pushes):
    log = pushes
    metrics = loop.rl_step(_colocated(log, []), step=0)
    assert log.calls == [("sample", 0), ("save samples", 0)]
    assert metrics["update_successful"] == 0.0 and metrics["solver/accuracy"] == 0.5


def test_separate_placement_learner_waits_for_the_engines_part_then_trains_and_sends(pushes):
    log = pushes
    metrics = loop.rl_step(_remote(log, [_traj(0), _traj(1)]), step=5)
    assert log.calls == [("routed",), ("learn", [0, 1]), ("send",)]
    assert metrics["train/policy_lag"] == 2.0  # drawn by version 3
    # what crossed the network: the learner rank received nothing, the engine rank 10 bytes
    assert metrics["sync/received_bytes_max"] == 10.0 and metrics["sync/received_bytes_mean"] == 5


def test_both_placements_run_the_same_loop_and_report_the_same_metrics(pushes, tmp_path):
    cfg = SimpleNamespace(run=SimpleNamespace(steps=2, name="t", eval_tasks=1),
                          algo=SimpleNamespace(name="prco"),
                          learner=SimpleNamespace(checkpoint=SimpleNamespace(interval=1)))
    keys = {}
    for name, place in (("colocated", _colocated(pushes, [_traj()])),
                        ("separate", _remote(pushes, [_traj()]))):
        place.evaluate = lambda path, cache: {"solver_accuracy": 0.5}
        pushes.calls.clear()
        loop.run(place, cfg, RunDirs(tmp_path / name), resume_run=False)
        steps = [c for c in pushes.calls if c[0] in ("learn", "save", "log start", "log close")]
        assert steps == [("log start", 0), ("learn", [0]), ("save", 1), ("learn", [0]),
                         ("save", 2), ("log close",)], name
        keys[name] = {k for row in place.logger.rows for k in row if not k.startswith("time/")}
        assert (tmp_path / name / "report.md").exists()
    assert keys["colocated"] == keys["separate"]


class Weights:
    def __init__(self, log: Recorder):
        self.log = log

    def receive(self):
        self.log.calls.append(("receive",))


def _engine(log: Recorder):
    def sample(stream, step, timer):
        log.calls.append(("sample", step))
        return Scored([_traj()], {}, {})

    class Route:
        def route(self, part, report):
            log.calls.append(("route", report.policy_version))
            assert all(t.policy_version == report.policy_version for t in part)
            return SimpleNamespace(trained=True)

    side = SimpleNamespace(sample=sample, stream=SimpleNamespace(state_dict=lambda: {}),
                           samples=SimpleNamespace(save=lambda step, scored: None),
                           shard=single_engine())
    return side, Route()


@pytest.mark.parametrize("k, trained, queued, expected", [
    # on-policy: the new weights, then step 4 drawn with them, then handed over
    (0, True, [], [("receive",), ("sample", 4), ("route", 4)]),
    # one step ahead: step 4 was drawn during update 3; step 5 is drawn during update 4
    (1, True, [4], [("receive",), ("route", 3), ("sample", 5)]),
    # the learner had nothing to train: no new weights
    (0, False, [], [("sample", 4), ("route", 3)]),
    # two steps ahead, version 3: step 5 is drawn at once (2 behind update 5), step 6 must wait
    (2, False, [], [("sample", 4), ("route", 3), ("sample", 5)]),
])
def test_engine_worker_samples_ahead_within_the_staleness_bound(k, trained, queued, expected):
    log = Recorder()
    side, router = _engine(log)
    ahead = engine_worker.Ahead(version=3, next_step=4)
    for step in queued:  # drawn in an earlier step, with the weights of version 3
        engine_worker.sample_step(side, ahead)
    log.calls.clear()
    assert engine_worker.engine_step(side, router, Weights(log), ahead, step=4, trained=trained,
                                     last=9, max_staleness=k)
    assert log.calls == expected
    # no queued sample is more than k updates older than the update that trains it
    assert all(step - report.policy_version <= k
               for step, (_, report) in ahead.queue.items())


def test_engine_worker_stops_sampling_at_the_last_step():
    log = Recorder()
    side, router = _engine(log)
    ahead = engine_worker.Ahead(version=8, next_step=9)
    engine_worker.engine_step(side, router, Weights(log), ahead, step=9, trained=False, last=9,
                              max_staleness=4)
    assert log.calls == [("sample", 9), ("route", 8)] and not ahead.queue

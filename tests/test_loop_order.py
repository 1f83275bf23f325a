"""The loop's order around the learner step: a colocated engine sleeps before the learner trains
and wakes for the sync in vLLM's order (weights, push, KV cache). A recording engine and policy
stand in for vLLM and Megatron; the calls are the real loop's (`controller.rl_step`)."""
from __future__ import annotations

from types import SimpleNamespace

from prco_mega.runtime import loop as controller
from prco_mega.bridge import sync as bridge_sync
from prco_mega.rollout.placement import single_engine
from prco_mega.algo.credit import Scored
from prco_mega.types import Role, Trajectory


class Recorder:
    def __init__(self):
        self.calls: list[tuple] = []

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags or ())))


def _run(log: Recorder, train: list[Trajectory]):
    def sample(stream, step, timer):
        log.calls.append(("sample", step))
        return Scored(train, {"solver/accuracy": 0.5}, {"solver/accuracy": 2.0})

    def learn(part, part_of_step):
        log.calls.append(("learn", len(part), part_of_step))
        return {"loss": 0.1}

    policy = SimpleNamespace(step=learn, chunks=[], pg=None, hf_config=None)
    cfg = SimpleNamespace(engine=SimpleNamespace(sleep_level=2, sync_bucket_mib=1,
                                                 dtype="bfloat16"))
    samples = SimpleNamespace(save=lambda step, scored: log.calls.append(("save samples", step)))
    return SimpleNamespace(cfg=cfg, policy=policy, engine=log, shard=single_engine(),
                           stream=None, sample=sample, samples=samples)


def _traj() -> Trajectory:
    return Trajectory(role=Role.SOLVER, task_uid="t", group_id=0, prompt_ids=[1],
                      response_ids=[2], rollout_logprobs=[-1.0], policy_version=3)


def test_engine_sleeps_through_the_learner_step_and_wakes_weights_before_the_push(monkeypatch):
    log = Recorder()

    def push(chunks, pg, hf_config, engine, bucket_bytes, dtype):
        log.calls.append(("push",))
        assert (bucket_bytes, str(dtype)) == (2**20, "torch.bfloat16")  # from the engine section
        return SimpleNamespace(bytes=10, seconds=0.0, received_bytes=0)

    monkeypatch.setattr(bridge_sync, "sync_weights", push)
    metrics = controller.rl_step(_run(log, [_traj()]), step=3)
    assert log.calls == [("sample", 3), ("save samples", 3), ("sleep", 2), ("learn", 1, True),
                         ("wake_up", ("weights",)), ("push",), ("wake_up", ("kv_cache",))]
    assert metrics["train/policy_lag"] == 0.0 and metrics["sync/bytes"] == 10


def test_a_step_with_nothing_to_train_neither_sleeps_nor_syncs(monkeypatch):
    log = Recorder()
    monkeypatch.setattr(bridge_sync, "sync_weights", lambda *a, **k: log.calls.append(("push",)))
    metrics = controller.rl_step(_run(log, []), step=0)
    assert log.calls == [("sample", 0), ("save samples", 0)]
    assert metrics["update_successful"] == 0.0 and metrics["solver/accuracy"] == 0.5

"""The pure parts of routing replay (`learner/routing_replay.py`) and where its inputs are
checked: packing the engine's routing beside the tokens, the shard rows, the metrics, and the
refusals (partial rollouts, a dense model)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from prco_mega.config import from_dict, RunConfig
from prco_mega.learner.packing import pack_trajectories, pad_to_length
from prco_mega.learner.routing_replay import (
    N_CATEGORIES, agreement_metrics, local_rows, padding_rows, same_sets, token_categories)
from prco_mega.types import Role, Trajectory


def traj(role: Role, prompt: list[int], response: list[int], routed=None) -> Trajectory:
    return Trajectory(role=role, task_uid="t", group_id=0, prompt_ids=prompt,
                      response_ids=response, rollout_logprobs=[-1.0] * len(response),
                      routed_experts=routed)


def routing(n: int, layers: int = 3, k: int = 2, start: int = 0) -> np.ndarray:
    return (np.arange(n * layers * k).reshape(n, layers, k) + start).astype(np.uint8) % 8


def test_same_sets_ignores_order():
    a = torch.tensor([[1, 2], [3, 4], [5, 6]])
    b = torch.tensor([[2, 1], [3, 5], [5, 6]], dtype=torch.uint8)
    assert same_sets(a, b).tolist() == [True, False, True]


def test_packing_lays_the_routing_beside_the_tokens_and_pads_with_distinct_experts():
    a, b = routing(5), routing(4, start=3)
    batch = pack_trajectories([traj(Role.OBSERVER, [1, 2, 3], [4, 5], a),
                               traj(Role.SOLVER, [1, 2], [3, 4], b)], {0: 2.0, 1: 2.0},
                              pad_to_multiple=4)
    assert batch.num_tokens == 12 and batch.routed_experts.shape == (12, 3, 2)
    assert torch.equal(batch.routed_experts[:5], torch.as_tensor(a))
    assert torch.equal(batch.routed_experts[5:9], torch.as_tensor(b))
    assert batch.routed_experts[9:].tolist() == [[[0, 1]] * 3] * 3
    longer = pad_to_length(batch, 14)
    assert longer.routed_experts.shape == (14, 3, 2)


def test_packing_without_routing_carries_none():
    batch = pack_trajectories([traj(Role.OBSERVER, [1, 2], [3])], {0: 1.0})
    assert batch.routed_experts is None


@pytest.mark.parametrize("routed, words", [(None, "none"), (routing(4), "4 positions")])
def test_a_micro_batch_missing_or_misaligned_routing_is_refused(routed, words):
    with pytest.raises(ValueError, match=words):
        pack_trajectories([traj(Role.OBSERVER, [1, 2], [3], routing(3)),
                           traj(Role.SOLVER, [1, 2, 3], [4, 5], routed)], {0: 1.0, 1: 2.0})


def test_local_rows_follow_sequence_parallelism():
    assert local_rows(8, 1, 2, sequence_parallel=True) == slice(4, 8)
    assert local_rows(8, 1, 2, sequence_parallel=False) == slice(0, 8)
    with pytest.raises(ValueError, match="pad_to_multiple"):
        local_rows(7, 0, 2, sequence_parallel=True)


def test_token_categories_split_roles_and_image_positions_and_drop_padding():
    batch = pad_to_length(pack_trajectories([traj(Role.OBSERVER, [9, 9, 1], [2]),
                                             traj(Role.SOLVER, [1, 9], [3])], {0: 1.0, 1: 1.0}), 9)
    cats = token_categories(batch, image_token_id=9).tolist()
    assert cats == [1, 1, 0, 0, 2, 3, 2, -1, -1]


def test_agreement_metrics_per_layer_and_category():
    counts = torch.zeros(2, N_CATEGORIES, 2, dtype=torch.float64)
    counts[0, 0] = torch.tensor([3.0, 4.0])   # layer 0, observer text: 3 of 4
    counts[1, 3] = torch.tensor([1.0, 4.0])   # layer 1, solver image: 1 of 4
    m = agreement_metrics(counts)
    assert m["moe/agree"] == pytest.approx(0.5)
    assert m["moe/agree/layer_0"] == 0.75 and m["moe/agree/layer_1"] == 0.25
    assert m["moe/observer/text/agree"] == 0.75 and m["moe/solver/image/agree"] == 0.25
    assert "moe/single/text/agree" not in m
    assert agreement_metrics(torch.zeros(2, N_CATEGORIES, 2)) == {}


def test_padding_rows_are_distinct_experts():
    assert padding_rows(2, 1, 3).tolist() == [[[0, 1, 2]], [[0, 1, 2]]]


def test_rollout_replay_with_partial_rollouts_is_refused():
    with pytest.raises(ValueError, match="partial_rollouts"):
        from_dict(RunConfig, {"algo": {"routing_replay": "rollout"},
                              "rollout": {"max_staleness": 1, "partial_rollouts": True},
                              "cluster": {"rollout_placement": "separate", "rollout_nodes": 1}})


def test_replay_on_a_dense_model_is_refused():
    from types import SimpleNamespace

    from prco_mega.learner.routing_replay import install

    dense = SimpleNamespace(model_type="qwen2_5_vl", text_config=SimpleNamespace(
        num_hidden_layers=2, num_experts_per_tok=None))
    with pytest.raises(ValueError, match="dense"):
        install([], dense, "rollout", image_token_id=None, pg=None)
    with pytest.raises(ValueError, match="one of"):
        install([], dense, "sometimes", image_token_id=None, pg=None)

"""Credit assignment over a step's rollouts, checked against hand-computed PRCO/GRPO/DAPO cases."""
import pytest
import torch

from prco_mega.rewards.format import format_score
from prco_mega.algo.credit import PRCOCredit, SingleRoleCredit
from prco_mega.types import Role, Task, TaskRollout, Trajectory

RIGHT, WRONG = "<think>count</think> \\boxed{3}", "<think>count</think> \\boxed{4}"


def _traj(role, text, group=0, k=None):
    return Trajectory(role=role, task_uid="t", group_id=group, prompt_ids=[1], response_ids=[2, 3],
                      rollout_logprobs=[-1.0, -1.0], text=text, caption_index=k)


def _prco_rollout():
    task = Task(uid="t", question="How many red circles?", answer="3")
    obs = [_traj(Role.OBSERVER, "- three red circles", k=0), _traj(Role.OBSERVER, "- red circles", k=1)]
    sol = [[_traj(Role.SOLVER, RIGHT, k=0), _traj(Role.SOLVER, WRONG, k=0)],
           [_traj(Role.SOLVER, RIGHT, k=1), _traj(Role.SOLVER, RIGHT, k=1)]]
    return TaskRollout(task, obs, sol)


def test_well_formed_answers_get_full_format_score():
    assert format_score(RIGHT) == 1.0 and format_score(WRONG) == 1.0


def test_prco_hand_computed_step():
    # V = [[1, 0], [1, 1]]; r_S = 0.9 V + 0.1 -> [[1.0, 0.1], [1.0, 1.0]].
    # Caption 1 leaks: r_O = [(1-0)*0.5, (1-1)*1.0] = [0.5, 0.0] -> A_O = [0.25, -0.25].
    # Only caption 0 has Var>0, so its answers form the Solver group: A_S = [0.45, -0.45].
    r = _prco_rollout()
    scored = PRCOCredit(leakage=lambda q, c, a: [0, 1], generator=torch.Generator().manual_seed(0))([r])
    assert [t.role for t in scored.train] == [Role.OBSERVER] * 2 + [Role.SOLVER] * 2
    assert [c.reward for c in r.observer] == pytest.approx([0.5, 0.0])
    assert [t.advantage for t in scored.train] == pytest.approx([0.25, -0.25, 0.45, -0.45])
    assert scored.train[2] is r.solver[0][0]
    assert scored.metrics["solver/accuracy"] == pytest.approx(0.75)
    assert scored.metrics["observer/leak_rate"] == pytest.approx(0.5)


def test_shared_reward_ablation_gives_observer_the_outcome_reward():
    r = _prco_rollout()
    PRCOCredit(leakage=lambda q, c, a: [0, 1], generator=torch.Generator(), shared=True)([r])
    assert [c.reward for c in r.observer] == pytest.approx([0.55, 1.0])  # mean r_S, no leak term


def test_prompt_without_solver_signal_contributes_only_captions():
    r = _prco_rollout()
    r.solver[0][1].text = RIGHT  # now every caption's answers agree
    scored = PRCOCredit(leakage=lambda q, c, a: [0, 0], generator=torch.Generator())([r])
    assert all(t.role is Role.OBSERVER for t in scored.train)


def test_grpo_and_dapo_baselines():
    task = Task(uid="t", question="q", answer="3")
    same = [_traj(Role.SINGLE, RIGHT, group=1) for _ in range(2)]
    mixed = [_traj(Role.SINGLE, RIGHT, group=0), _traj(Role.SINGLE, WRONG, group=0)]
    rollouts = [TaskRollout(task, single=mixed), TaskRollout(task, single=same)]
    grpo = SingleRoleCredit()(rollouts)
    # r = [1.0, 0.1]: mean 0.55, population std 0.45 -> A = +-0.45 / (0.45 + 1e-6)
    assert [t.advantage for t in grpo.train[:2]] == pytest.approx([1.0, -1.0], abs=1e-5)
    assert len(grpo.train) == 4
    dapo = SingleRoleCredit(dynamic_sampling=True)(rollouts)
    assert dapo.train == mixed  # the all-equal group carries no signal and is dropped


def _single_group(group, texts, lengths):
    return [Trajectory(role=Role.SINGLE, task_uid="t", group_id=group, prompt_ids=[1],
                       response_ids=[2] * n, rollout_logprobs=[-1.0] * n, text=text)
            for text, n in zip(texts, lengths)]


def test_dapo_soft_overlong_penalty_enters_the_reward():
    # L_max 16, L_cache 4: free up to 12 tokens, -(L - 12) / 4 up to 16, -1 beyond
    task = Task(uid="t", question="q", answer="3")
    answers = _single_group(0, [RIGHT] * 4, [10, 14, 16, 20])
    credit = SingleRoleCredit(overlong=(16, 4), scale_by_std=False)
    scored = credit([TaskRollout(task, single=answers)])
    assert [a.reward for a in answers] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert [a.meta["overlong_penalty"] for a in answers] == pytest.approx([0.0, -0.5, -1.0, -1.0])
    # centred on the penalised rewards: a correct but overlong answer is pushed down
    assert [a.advantage for a in scored.train] == pytest.approx([0.625, 0.125, -0.375, -0.375])


def test_dynamic_sampling_keeps_only_the_informative_groups_it_is_given():
    task = Task(uid="t", question="q", answer="3")
    groups = [_single_group(g, [RIGHT, WRONG], [2, 2]) for g in range(3)]
    groups.append(_single_group(3, [RIGHT, RIGHT], [2, 2]))
    credit = SingleRoleCredit(dynamic_sampling=True)
    flat = credit.reward([TaskRollout(task, single=g) for g in groups])
    assert credit.informative_groups(flat) == [0, 1, 2]
    scored = credit.assign(flat, keep_groups={0, 1, 3})
    assert {t.group_id for t in scored.train} == {0, 1}
    assert scored.metrics["train/trajectories"] == 4.0


def test_caption_metrics_score_the_sampled_captions_against_the_scene():
    # red hexagon (6), blue pentagon (5); the question asks 6 - 5 = 1.
    items = [{"name": "red shape", "color": "red", "kind": "hexagon", "value": 6},
             {"name": "blue shape", "color": "blue", "kind": "pentagon", "value": 5}]
    facts = {"family": "polygons", "items": items, "needed": ["red shape", "blue shape"],
             "query": {"op": "diff", "args": ["red shape", "blue shape"]}}
    task = Task(uid="t", question="How many more corners does the red shape have than the blue "
                "shape?", answer="1", facts=facts)
    texts = ["- red shape: 6 corners\n- blue shape: 5 corners",  # right
             "- red shape: 5 corners\n- blue shape: 4 corners",  # both wrong, answer kept
             "- red shape: 6 corners\n- blue shape: 3 corners"]  # half right, answer lost
    obs = [_traj(Role.OBSERVER, t, k=k) for k, t in enumerate(texts)]
    sol = [[_traj(Role.SOLVER, RIGHT, k=k)] * 2 for k in range(3)]
    scored = PRCOCredit(leakage=lambda q, c, a: [0] * 3, generator=torch.Generator())(
        [TaskRollout(task, obs, sol)])
    assert scored.metrics["observer/perception_acc"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert scored.metrics["observer/misread_kept_answer_rate"] == pytest.approx(1 / 3)

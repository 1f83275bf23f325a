"""Saved rollouts hold what a person needs to judge a step (image, question, gold answer, each
caption's perception, leak flag, reward and advantage, each answer's reward, the trained Solver
group), are the same whichever engine scored the tasks, and stay within their storage bound."""
from __future__ import annotations

import io

from PIL import Image
from rollout_fixtures import scored_block, step_tasks

from prco_mega.data.captions import perception_accuracy
from prco_mega.rollout.placement import EnginePlacement, Shard, single_engine
from prco_mega.tracking.config import SavedRolloutsSection
from prco_mega.tracking.rollouts import (RolloutSaver, folder_bytes, read_step, sample_positions,
                                         saved_steps, task_record)


def test_the_sample_is_spread_over_the_step():
    assert sample_positions(8, 4) == [0, 2, 4, 6]
    assert sample_positions(8, 3) == [0, 2, 5]
    assert sample_positions(2, 4) == [0, 1]


def test_a_saved_task_holds_everything_to_judge_it(tmp_path):
    tasks = step_tasks(6)
    scored = scored_block(tasks, range(6))
    saver = RolloutSaver(SavedRolloutsSection(every=1, tasks=3), tmp_path, single_engine(), 6)
    saver.save(0, scored)
    saved = read_step(tmp_path / "step_00000000")
    assert [t["index"] for t in saved["tasks"]] == [0, 2, 4]
    trained = {id(t) for t in scored.train}
    for rec, rollout in zip(saved["tasks"], [scored.rollouts[i] for i in (0, 2, 4)]):
        task = rollout.task
        assert (rec["question"], rec["answer"], rec["uid"]) == (task.question, task.answer,
                                                                task.uid)
        png = Image.open(io.BytesIO((tmp_path / "step_00000000" / rec["images"][0]).read_bytes()))
        assert png.tobytes() == task.images[0].tobytes()  # lossless, once per task
        for c, caption, answers in zip(rec["captions"], rollout.observer, rollout.solver):
            assert c["text"] == caption.text
            assert c["perception"] == perception_accuracy(caption.text, task.facts)
            assert (c["leak"], c["reward"], c["advantage"]) == (caption.meta["leak"],
                                                                caption.reward, caption.advantage)
            assert c["solver_group_trained"] == all(id(y) in trained for y in answers)
            assert [a["reward"] for a in c["answers"]] == [y.reward for y in answers]
            assert [a["correct"] for a in c["answers"]] == [y.meta["correct"] for y in answers]
        # PRCO trains one Solver group per task, and only when some group has reward variance
        groups = sum(c["solver_group_trained"] for c in rec["captions"])
        informative = not all(c["solver_zero_variance"] for c in rec["captions"])
        assert groups == int(informative)
    leaks = [c["leak"] for t in saved["tasks"] for c in t["captions"]]
    assert any(leaks), "the fixture leaks on every third task: the flag must show"


def test_a_step_split_over_two_engines_saves_what_one_engine_saves(tmp_path):
    """Each engine records the sampled tasks of its own block; gathering them in engine order
    gives the one-engine record (the gather is stubbed: `Shard.gather` is the collective)."""
    tasks = step_tasks(5)
    one = task_records(scored_block(tasks, range(5)), single_engine(), 5)
    parts = []
    for e in range(2):
        shard = Shard(EnginePlacement(world_size=2, rank=e, engine_tp=1))
        parts += task_records(scored_block(tasks, shard.block(5)), shard, 5)
    assert [r["index"] for r in one] == [0, 1, 2, 3]
    assert parts == one


def task_records(scored, shard, batch):
    chosen = sample_positions(batch, 4)
    trained = {id(t) for t in scored.train}
    return [task_record(r, trained, 0) for r in scored.rollouts if r.index in chosen]


def test_old_steps_are_rotated_and_a_resumed_run_drops_later_ones(tmp_path, capsys):
    tasks = step_tasks(4)
    saver = RolloutSaver(SavedRolloutsSection(every=2, tasks=2, keep=2), tmp_path,
                         single_engine(), 4)
    for step in range(7):
        saver.save(step, scored_block(tasks, range(4), step=step))
    assert [p.name for p in saved_steps(tmp_path)] == ["step_00000004", "step_00000006"]
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "saved rollouts of step 6: 2 tasks" in line and "2 saved steps use" in line
    assert f"{folder_bytes(tmp_path) / 1e3:.1f} kB" in line
    assert folder_bytes(tmp_path) < 2 * 60_000  # two steps of 2 tasks: PNGs + texts
    saver.start(5)  # resuming at step 5: step 6 of the killed attempt is redone
    assert [p.name for p in saved_steps(tmp_path)] == ["step_00000004"]

"""The task stream: reproducible order, epochs reshuffled, position restored exactly."""
import pytest

from prco_mega.data.stream import TaskStream, list_stream
from prco_mega.types import Task

TASKS = [Task(uid=str(i), question="q", answer="1") for i in range(10)]


def test_epoch_visits_every_task_once_and_reshuffles():
    s = list_stream(TASKS, batch_size=5, seed=3)
    first = [t.uid for t in s.next_batch() + s.next_batch()]
    second = [t.uid for t in s.next_batch() + s.next_batch()]
    assert sorted(first) == sorted(second) == sorted(t.uid for t in TASKS)
    assert first != second


def test_restored_stream_continues_where_the_saved_one_was():
    a = list_stream(TASKS, batch_size=3, seed=1)
    a.next_batch(); a.next_batch()
    b = list_stream(TASKS, batch_size=3, seed=1)
    b.load_state_dict(a.state_dict())
    assert [t.uid for t in a.next_batch()] == [t.uid for t in b.next_batch()]


def test_state_of_another_data_set_is_refused():
    s = TaskStream(lambda i: TASKS[0], batch_size=1, size=None, seed=1)
    with pytest.raises(ValueError, match="another data set"):
        s.load_state_dict({"position": 3, "seed": 2, "size": None})

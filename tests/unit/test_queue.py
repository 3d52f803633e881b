"""ReadyQueue (priority, then FIFO) and DelayHeap (due times), both with lazy removal."""

from __future__ import annotations

from taskpool.queue import DelayHeap, ReadyQueue


def drain(queue: ReadyQueue) -> list[str]:
    out = []
    while (task_id := queue.pop()) is not None:
        out.append(task_id)
    return out


# -- ReadyQueue ----------------------------------------------------------------


def test_empty_ready_queue():
    queue = ReadyQueue()
    assert len(queue) == 0
    assert not queue
    assert queue.pop() is None
    assert "a" not in queue


def test_higher_priority_first_then_fifo():
    queue = ReadyQueue()
    for task_id, priority in [("low1", -5), ("mid1", 0), ("high1", 10), ("mid2", 0), ("low2", -5), ("high2", 10), ("mid3", 0)]:
        queue.push(task_id, priority)
    assert len(queue) == 7
    assert drain(queue) == ["high1", "high2", "mid1", "mid2", "mid3", "low1", "low2"]
    assert len(queue) == 0


def test_fifo_within_one_priority_for_many_items():
    queue = ReadyQueue()
    ids = [f"t{i}" for i in range(200)]
    for task_id in ids:
        queue.push(task_id, 3)
    assert drain(queue) == ids


def test_extreme_priorities_order():
    queue = ReadyQueue()
    queue.push("min", -100)
    queue.push("max", 100)
    queue.push("zero", 0)
    assert drain(queue) == ["max", "zero", "min"]


def test_contains_tracks_live_ids():
    queue = ReadyQueue()
    queue.push("a", 0)
    assert "a" in queue
    assert queue.pop() == "a"
    assert "a" not in queue


def test_discard_is_lazy_but_len_is_exact():
    queue = ReadyQueue()
    for task_id in ("a", "b", "c", "d"):
        queue.push(task_id, 0)
    assert queue.discard("b") is True
    assert queue.discard("d") is True
    assert len(queue) == 2
    assert "b" not in queue
    assert queue.discard("b") is False  # already gone
    assert queue.discard("never") is False
    assert len(queue) == 2
    assert drain(queue) == ["a", "c"]
    assert len(queue) == 0


def test_discard_of_every_item_leaves_an_empty_queue():
    queue = ReadyQueue()
    queue.push("a", 1)
    queue.push("b", 2)
    queue.discard("a")
    queue.discard("b")
    assert len(queue) == 0
    assert not queue
    assert queue.pop() is None


def test_push_of_a_duplicate_id_is_ignored():
    queue = ReadyQueue()
    queue.push("a", 0)
    queue.push("b", 0)
    queue.push("a", 50)  # ignored: neither a second entry nor a new priority
    assert len(queue) == 2
    assert drain(queue) == ["a", "b"]


def test_duplicate_push_keeps_the_first_priority():
    queue = ReadyQueue()
    queue.push("a", -10)
    queue.push("b", 0)
    queue.push("a", 100)
    assert drain(queue) == ["b", "a"]


def test_id_can_be_pushed_again_after_it_was_popped():
    queue = ReadyQueue()
    queue.push("a", 0)
    assert queue.pop() == "a"
    queue.push("a", 0)
    assert len(queue) == 1
    assert drain(queue) == ["a"]


def test_id_pushed_again_after_discard_takes_its_new_place():
    # Discard then push again (a task put back in the queue): the id must be
    # ordered by its new push, not by the stale heap entry of the discarded one.
    queue = ReadyQueue()
    queue.push("a", 0)
    queue.push("b", 0)
    queue.discard("a")
    queue.push("a", 0)
    assert len(queue) == 2
    assert drain(queue) == ["b", "a"]


# -- DelayHeap -------------------------------------------------------------------


def test_empty_delay_heap():
    heap = DelayHeap()
    assert len(heap) == 0
    assert heap.next_due() is None
    assert heap.pop_due(1e12) == []


def test_pop_due_returns_due_ids_in_due_order():
    heap = DelayHeap()
    heap.push("late", 30.0)
    heap.push("early", 10.0)
    heap.push("mid", 20.0)
    heap.push("mid-again", 20.0)
    assert heap.next_due() == 10.0
    assert heap.pop_due(9.999) == []
    assert len(heap) == 4
    assert heap.pop_due(10.0) == ["early"]  # due exactly now counts
    assert heap.next_due() == 20.0
    assert heap.pop_due(25.0) == ["mid", "mid-again"]
    assert len(heap) == 1
    assert heap.next_due() == 30.0
    assert heap.pop_due(1000.0) == ["late"]
    assert heap.next_due() is None
    assert len(heap) == 0


def test_pop_due_with_time_far_past_everything_takes_all():
    heap = DelayHeap()
    for i, due in enumerate([5.0, 1.0, 3.0, 2.0, 4.0]):
        heap.push(f"t{i}", due)
    assert heap.pop_due(100.0) == ["t1", "t3", "t2", "t4", "t0"]


def test_discard_skips_the_id_and_updates_next_due():
    heap = DelayHeap()
    heap.push("a", 1.0)
    heap.push("b", 2.0)
    heap.push("c", 3.0)
    assert heap.discard("a") is True
    assert heap.discard("a") is False
    assert heap.discard("unknown") is False
    assert len(heap) == 2
    assert heap.next_due() == 2.0
    heap.discard("c")
    assert heap.pop_due(10.0) == ["b"]
    assert heap.next_due() is None
    assert len(heap) == 0


def test_next_due_is_none_when_everything_was_discarded():
    heap = DelayHeap()
    heap.push("a", 1.0)
    heap.push("b", 2.0)
    heap.discard("a")
    heap.discard("b")
    assert heap.next_due() is None
    assert len(heap) == 0
    assert heap.pop_due(10.0) == []


def test_pop_due_drops_ids_the_predicate_rejects():
    heap = DelayHeap()
    heap.push("keep", 1.0)
    heap.push("drop", 2.0)
    heap.push("later", 50.0)
    assert heap.pop_due(5.0, accept=lambda task_id: task_id != "drop") == ["keep"]
    assert len(heap) == 1
    assert heap.pop_due(5.0) == []  # "drop" does not come back
    assert heap.next_due() == 50.0


def test_id_pushed_again_after_discard_is_due_at_its_new_time():
    heap = DelayHeap()
    heap.push("a", 10.0)
    heap.discard("a")
    heap.push("a", 20.0)
    assert len(heap) == 1
    assert heap.next_due() == 20.0
    assert heap.pop_due(15.0) == []
    assert heap.pop_due(20.0) == ["a"]


def test_id_pushed_again_at_another_priority_after_discard_keeps_only_the_new_entry():
    queue = ReadyQueue()
    queue.push("a", 0)
    queue.push("b", 0)
    queue.discard("a")
    queue.push("a", 5)  # its old entry at 0 is stale; the new one comes first
    queue.discard("a")
    queue.push("a", 0)  # behind b now: two stale entries (0 and 5) and one live
    assert len(queue) == 2
    assert drain(queue) == ["b", "a"]
    assert len(queue) == 0
    assert queue.pop() is None


def test_ready_queue_matches_a_reference_model_under_random_operations():
    import random

    rng = random.Random(5)
    queue, model, seq = ReadyQueue(), {}, 0  # model: id -> (-priority, push order)
    for _ in range(5000):
        op, task_id = rng.random(), f"t{rng.randrange(40)}"
        if op < 0.5:
            if task_id not in model:
                seq += 1
                model[task_id] = (-rng.randrange(-3, 4), seq)
                queue.push(task_id, -model[task_id][0])
        elif op < 0.7:
            assert queue.discard(task_id) is (model.pop(task_id, None) is not None)
        else:
            expected = min(model, key=model.get) if model else None
            assert queue.peek() == expected
            assert queue.pop() == expected
            model.pop(expected, None)
        assert len(queue) == len(model)
    assert drain(queue) == sorted(model, key=model.get)


def test_peek_shows_what_pop_returns_and_leaves_it():
    queue = ReadyQueue()
    assert queue.peek() is None
    queue.push("low", -1)
    queue.push("high", 1)
    queue.push("gone", 2)
    queue.discard("gone")
    assert queue.peek() == "high"
    assert queue.peek() == "high" and len(queue) == 2
    assert drain(queue) == ["high", "low"]
    assert queue.peek() is None

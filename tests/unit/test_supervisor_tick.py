"""The supervisor's loop driven one ``tick(events, now)`` at a time with a chosen clock.

No worker is forked. After ``open()`` the worker pool's target is set to 0:
``WorkerPool.manage`` forks only while fewer serving workers of the current
generation exist than ``target`` (``len(current) < self.target``), and retires
only when there are more, so with an empty table and a target of 0 it does
nothing. As a guard, ``os.fork`` raises for the length of each test, and every
test ends by checking that the worker table is still empty. Requests go straight
to ``handle_request``; Submit, Cancel and a Query without wait never touch the
client argument, so it is None here.
"""

from __future__ import annotations

import os
import socket
import time

import pytest

from taskpool.children import WorkerProc
from taskpool.config import load_config
from taskpool.protocol import CANCELLED, READY, Accepted, Cancel, Error, Query, Ready, Submit, TaskInfo
from taskpool.supervisor import Supervisor

try:
    from setproctitle import getproctitle, setproctitle
except ImportError:  # optional dependency; Supervisor.open() sets the title when present
    getproctitle = setproctitle = None

NOW = 1000.0  # the supervisor's monotonic clock, as these tests choose it


def _no_fork():
    raise AssertionError("a unit test supervisor tried to fork a worker")


@pytest.fixture
def make_supervisor(tmp_path, monkeypatch):
    """Factory: an opened Supervisor with no workers; every one made is closed afterwards."""
    monkeypatch.setattr(os, "fork", _no_fork)
    made: list[Supervisor] = []
    title = getproctitle() if getproctitle else None

    def make(**settings) -> Supervisor:
        explicit = {"spool": str(tmp_path / f"s{len(made)}"), "workers": 1, "store": "memory", **settings}
        sup = Supervisor(load_config(explicit, environ={}))
        made.append(sup)
        sup.open()
        sup.workers.target = 0
        return sup

    yield make
    try:
        assert all(len(sup.workers) == 0 for sup in made), "a worker was added to the table"
    finally:
        for sup in made:
            sup.close()
        if title is not None:
            setproctitle(title)


@pytest.fixture
def sup(make_supervisor) -> Supervisor:
    return make_supervisor()


def submit(sup: Supervisor, task_id: str, now: float = NOW, name: str = "mod.task", **options):
    return sup.handle_request(None, Submit(task_id, name, [1], {"k": "v"}, **options), now)


def status(sup: Supervisor, task_id: str) -> str | None:
    task = sup.scheduler.ledger.get(task_id)
    return task.status if task is not None else None


def pop_all(sup: Supervisor) -> list[str]:
    out = []
    while (task_id := sup.scheduler.ready.pop()) is not None:
        out.append(task_id)
    return out


# -- the harness itself -----------------------------------------------------------


def test_ticks_with_target_zero_fork_no_worker(sup):
    assert sup.config.workers == 1
    assert sup.workers.target == 0
    assert sup.phase == "running"
    for step in range(5):
        sup.tick([], NOW + step)
    assert len(sup.workers) == 0
    assert sup.phase == "running"


def test_ready_task_stays_queued_without_workers(sup):
    assert submit(sup, "a") == Accepted("a")
    sup.tick([], NOW)
    sup.tick([], NOW + 60)
    assert "a" in sup.scheduler.ready
    assert status(sup, "a") == READY
    assert len(sup.workers) == 0


# -- submit --------------------------------------------------------------------------


def test_submit_without_run_after_goes_to_the_ready_queue(sup):
    assert submit(sup, "a") == Accepted("a")
    assert "a" in sup.scheduler.ready
    assert len(sup.scheduler.ready) == 1
    assert len(sup.scheduler.delayed) == 0
    task = sup.scheduler.ledger.get("a")
    assert (task.status, task.name, list(task.args), task.kwargs) == (READY, "mod.task", [1], {"k": "v"})
    assert (task.priority, task.max_attempts, task.timeout, task.queue) == (0, 3, None, "default")
    assert sup.scheduler.ledger.counters["submitted"] == 1


def test_submit_with_run_after_in_the_past_is_ready_at_once(sup):
    assert submit(sup, "a", run_after=time.time() - 5) == Accepted("a")
    assert "a" in sup.scheduler.ready
    assert len(sup.scheduler.delayed) == 0


def test_delayed_submit_moves_to_ready_only_when_due(sup):
    assert submit(sup, "later", run_after=time.time() + 30) == Accepted("later")
    assert len(sup.scheduler.delayed) == 1
    assert "later" not in sup.scheduler.ready
    due = sup.scheduler.delayed.next_due()
    assert NOW + 29 < due <= NOW + 30

    sup.tick([], NOW + 10)
    sup.tick([], due - 0.01)
    assert "later" not in sup.scheduler.ready
    assert len(sup.scheduler.delayed) == 1
    assert status(sup, "later") == READY

    sup.tick([], due)
    assert "later" in sup.scheduler.ready
    assert len(sup.scheduler.delayed) == 0
    assert status(sup, "later") == READY


def test_delayed_tasks_become_ready_in_due_order_with_their_priority(sup):
    wall = time.time()
    submit(sup, "second", run_after=wall + 20, priority=-1)
    submit(sup, "first", run_after=wall + 10, priority=5)
    submit(sup, "now", priority=0)
    sup.tick([], NOW + 15)
    assert "first" in sup.scheduler.ready and "second" not in sup.scheduler.ready
    sup.tick([], NOW + 25)
    assert len(sup.scheduler.delayed) == 0
    assert pop_all(sup) == ["first", "now", "second"]


def test_queue_full_when_max_ready_is_reached(make_supervisor):
    sup = make_supervisor(max_ready=2)
    assert submit(sup, "a") == Accepted("a")
    assert submit(sup, "b") == Accepted("b")
    reply = submit(sup, "c")
    assert isinstance(reply, Error)
    assert reply.code == "queue_full"
    assert reply.task_id == "c"
    assert sup.scheduler.ledger.get("c") is None
    assert len(sup.scheduler.ready) == 2


def test_delayed_tasks_count_toward_max_ready(make_supervisor):
    sup = make_supervisor(max_ready=2)
    assert submit(sup, "a") == Accepted("a")
    assert submit(sup, "b", run_after=time.time() + 60) == Accepted("b")
    reply = submit(sup, "c", run_after=time.time() + 60)
    assert isinstance(reply, Error) and reply.code == "queue_full"


def test_cancel_frees_room_below_max_ready(make_supervisor):
    sup = make_supervisor(max_ready=1)
    assert submit(sup, "a") == Accepted("a")
    assert submit(sup, "b").code == "queue_full"
    sup.handle_request(None, Cancel("a"), NOW)
    assert submit(sup, "b") == Accepted("b")


@pytest.mark.parametrize(
    ("task_id", "name", "options"),
    [
        ("t", "mod.task", {"priority": 101}),
        ("t", "mod.task", {"priority": -101}),
        ("t", "mod.task", {"priority": 10**6}),
        ("t", "mod.task", {"max_attempts": 0}),
        ("t", "mod.task", {"max_attempts": -3}),
        ("t", "mod.task", {"timeout": 0}),
        ("t", "mod.task", {"timeout": 0.0}),
        ("t", "mod.task", {"timeout": -1.5}),
        ("", "mod.task", {}),
        ("t", "", {}),
        ("x" * 201, "mod.task", {}),
        ("t", "m" * 201, {}),
    ],
    ids=str,
)
def test_bad_submit_values_give_invalid_arguments(sup, task_id, name, options):
    reply = sup.handle_request(None, Submit(task_id, name, [], {}, **options), NOW)
    assert isinstance(reply, Error)
    assert reply.code == "invalid_arguments"
    assert reply.task_id == task_id
    assert sup.scheduler.ledger.get(task_id) is None
    assert len(sup.scheduler.ready) == 0 and len(sup.scheduler.delayed) == 0
    assert sup.scheduler.ledger.counters["submitted"] == 0


@pytest.mark.parametrize(
    "options",
    [{"priority": 100}, {"priority": -100}, {"max_attempts": 1}, {"timeout": 0.001}, {"timeout": 5}],
    ids=str,
)
def test_boundary_submit_values_are_accepted(sup, options):
    assert submit(sup, "t", **options) == Accepted("t")
    task = sup.scheduler.ledger.get("t")
    for key, value in options.items():
        assert getattr(task, key) == value


def test_submit_options_override_worker_defaults_and_none_takes_them(sup):
    ready = Ready(4242, sup.workers.generation, {"mod.task": {"priority": 9, "queue": "q", "max_attempts": 7, "timeout": 3.0}})
    worker = WorkerProc(wid=1, pid=4242, generation=sup.workers.generation, conn=None, started=NOW)
    sup.worker_events.handle(worker, ready, NOW)  # a record only: not in the worker table
    assert submit(sup, "defaults") == Accepted("defaults")
    task = sup.scheduler.ledger.get("defaults")
    assert (task.priority, task.queue, task.max_attempts, task.timeout) == (9, "q", 7, 3.0)
    assert submit(sup, "explicit", priority=-2, max_attempts=1, timeout=0.5, queue="other") == Accepted("explicit")
    task = sup.scheduler.ledger.get("explicit")
    assert (task.priority, task.queue, task.max_attempts, task.timeout) == (-2, "other", 1, 0.5)
    reply = submit(sup, "unknown", name="mod.other")
    assert isinstance(reply, Error) and reply.code == "unknown_task"
    assert sup.scheduler.ledger.get("unknown") is None


def test_submit_while_stopping_is_refused(sup):
    sup.begin_stop(NOW, graceful=True)
    reply = submit(sup, "late")
    assert isinstance(reply, Error) and reply.code == "shutting_down"
    sup.tick([], NOW)
    assert sup.phase == "stopped"  # no workers to wait for


# -- idempotent submit -------------------------------------------------------------


def test_repeated_submit_with_the_same_id_is_accepted_once(sup):
    assert submit(sup, "same") == Accepted("same")
    again = sup.handle_request(None, Submit("same", "mod.task", ["other"], {}, priority=50), NOW)
    assert again == Accepted("same")
    assert sup.scheduler.ledger.counters["submitted"] == 1
    assert len(sup.scheduler.ready) == 1
    task = sup.scheduler.ledger.get("same")
    assert list(task.args) == [1]  # kept as a tuple
    assert task.priority == 0
    assert pop_all(sup) == ["same"]


def test_repeated_delayed_submit_is_queued_once(sup):
    run_after = time.time() + 5
    assert submit(sup, "d", run_after=run_after) == Accepted("d")
    assert submit(sup, "d", run_after=run_after) == Accepted("d")
    assert len(sup.scheduler.delayed) == 1
    sup.tick([], NOW + 10)
    assert pop_all(sup) == ["d"]


def test_repeated_submit_of_a_cancelled_task_does_not_queue_it_again(sup):
    submit(sup, "c")
    sup.handle_request(None, Cancel("c"), NOW)
    assert submit(sup, "c") == Accepted("c")
    assert status(sup, "c") == CANCELLED
    assert len(sup.scheduler.ready) == 0
    assert sup.scheduler.ledger.counters["submitted"] == 1


def test_repeated_submit_is_accepted_even_when_the_queue_is_full(make_supervisor):
    # The client re-sends a Submit after a lost connection (client.py: "a re-sent
    # Submit is recognised"). The task is already accepted; refusing the retry
    # with queue_full tells the caller it failed while it will in fact run.
    sup = make_supervisor(max_ready=1)
    assert submit(sup, "only") == Accepted("only")
    assert submit(sup, "only") == Accepted("only")
    assert sup.scheduler.ledger.counters["submitted"] == 1


# -- cancel ----------------------------------------------------------------------------


def test_cancel_of_a_ready_task_removes_it_and_sets_cancelled(sup):
    for task_id in ("a", "b", "c"):
        submit(sup, task_id)
    reply = sup.handle_request(None, Cancel("b"), NOW)
    assert isinstance(reply, TaskInfo)
    assert reply.task_id == "b"
    assert reply.status == CANCELLED
    assert reply.attempts == 0
    assert status(sup, "b") == CANCELLED
    assert "b" not in sup.scheduler.ready
    assert len(sup.scheduler.ready) == 2
    assert sup.scheduler.ledger.counters["cancelled"] == 1
    assert "b" not in sup.scheduler.ledger.active
    sup.tick([], NOW + 1)
    assert status(sup, "b") == CANCELLED
    assert pop_all(sup) == ["a", "c"]


def test_cancel_of_a_delayed_task_removes_it_from_the_delay_heap(sup):
    submit(sup, "d", run_after=time.time() + 0.5)
    assert sup.next_timeout(NOW) < 1.0
    reply = sup.handle_request(None, Cancel("d"), NOW)
    assert reply.status == CANCELLED
    assert len(sup.scheduler.delayed) == 0
    assert sup.next_timeout(NOW) == 1.0
    sup.tick([], NOW + 10)
    assert "d" not in sup.scheduler.ready
    assert status(sup, "d") == CANCELLED


def test_cancel_twice_keeps_cancelled(sup):
    submit(sup, "a")
    sup.handle_request(None, Cancel("a"), NOW)
    reply = sup.handle_request(None, Cancel("a"), NOW)
    assert isinstance(reply, TaskInfo) and reply.status == CANCELLED
    assert sup.scheduler.ledger.counters["cancelled"] == 1


def test_cancel_of_an_unknown_task_is_not_found(sup):
    reply = sup.handle_request(None, Cancel("nope"), NOW)
    assert isinstance(reply, Error)
    assert (reply.code, reply.task_id) == ("not_found", "nope")


def test_query_without_wait_reports_the_state(sup):
    submit(sup, "a")
    reply = sup.handle_request(None, Query("a"), NOW)
    assert isinstance(reply, TaskInfo) and (reply.task_id, reply.status) == ("a", READY)
    missing = sup.handle_request(None, Query("missing"), NOW)
    assert isinstance(missing, Error) and missing.code == "not_found"


# -- next_timeout ----------------------------------------------------------------------


def test_next_timeout_is_one_second_when_idle(sup):
    assert sup.next_timeout(NOW) == 1.0


def test_next_timeout_reflects_the_nearest_delay(sup):
    wall = time.time()
    submit(sup, "far", run_after=wall + 0.8)
    far_due = sup.scheduler.delayed.next_due()
    assert sup.next_timeout(NOW) == pytest.approx(far_due - NOW)
    assert 0.7 < sup.next_timeout(NOW) <= 0.8

    submit(sup, "near", run_after=wall + 0.3)
    near_due = sup.scheduler.delayed.next_due()
    assert near_due < far_due
    assert sup.next_timeout(NOW) == pytest.approx(near_due - NOW)
    assert 0.2 < sup.next_timeout(NOW) <= 0.3
    assert sup.next_timeout(near_due - 0.1) == pytest.approx(0.1)


def test_next_timeout_is_capped_at_one_second(sup):
    submit(sup, "hour", run_after=time.time() + 3600)
    assert sup.next_timeout(NOW) == 1.0


def test_next_timeout_is_zero_once_a_delay_is_due(sup):
    submit(sup, "soon", run_after=time.time() + 0.5)
    due = sup.scheduler.delayed.next_due()
    assert sup.next_timeout(due) == 0.0
    assert sup.next_timeout(due + 5) == 0.0


def test_next_timeout_moves_on_after_the_nearest_delay_is_taken(sup):
    wall = time.time()
    submit(sup, "near", run_after=wall + 0.2)
    submit(sup, "far", run_after=wall + 0.9)
    near_due = sup.scheduler.delayed.next_due()
    sup.tick([], near_due)
    assert "near" in sup.scheduler.ready
    far_due = sup.scheduler.delayed.next_due()
    assert far_due > near_due
    assert sup.next_timeout(near_due) == pytest.approx(far_due - near_due)
    sup.tick([], far_due)
    assert sup.next_timeout(far_due) == 1.0


def test_a_burst_of_requests_is_handled_a_pass_at_a_time_and_fully(sup):

    from taskpool.connections import REQUESTS_PER_PASS
    from taskpool.protocol import MAGIC, PROTOCOL_VERSION, Hello, encode
    from taskpool.transport import Channel

    n = REQUESTS_PER_PASS * 2 + 5
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sup.socket_path)
    burst = encode(Hello(MAGIC, PROTOCOL_VERSION)) + b"".join(encode(Submit(f"t{i}", "mod.task", [], {})) for i in range(n))
    sock.sendall(burst)
    held, timeouts = [], []
    for _ in range(50):
        sup.tick(sup.selector.select(0.2), NOW)
        held.append(len(sup.scheduler.ledger.active))
        timeouts.append(sup.next_timeout(NOW))
        if held[-1] == n:
            break
    steps = [b - a for a, b in zip([0, *held], held, strict=False)]
    assert held[-1] == n
    assert max(steps) <= REQUESTS_PER_PASS and sum(1 for s in steps if s) >= 3  # three passes at least
    assert timeouts[-2] == 0.0  # more were waiting: the loop did not sleep between passes
    channel = Channel(sock, 1 << 20)
    replies = [channel.recv() for _ in range(n + 1)]
    assert [type(r).__name__ for r in replies[1:]] == ["Accepted"] * n
    assert [r.task_id for r in replies[1:]] == [f"t{i}" for i in range(n)]
    sock.close()


def dead_worker(sup: Supervisor, state: str) -> tuple[WorkerProc, socket.socket]:
    """A worker in the table with a real channel and no process: its far end is returned."""
    from taskpool.children import WorkerState
    from taskpool.transport import FramedConnection

    ours, theirs = socket.socketpair()
    worker = WorkerProc(wid=1, pid=999_999, generation=sup.workers.generation,
                        conn=FramedConnection(ours, 1 << 20, 1 << 20), started=NOW)
    worker.state = WorkerState(state)
    sup.workers.table[worker.pid] = worker
    return worker, theirs


def test_a_done_written_just_before_the_worker_died_is_honoured(sup):
    """The SIGCHLD may be handled before the frames the worker wrote: its Done still counts,
    and the finished task is not run again."""
    from taskpool.protocol import SUCCESSFUL, Done, encode

    assert submit(sup, "t") == Accepted("t")
    worker, far = dead_worker(sup, "idle")
    sup.scheduler.ledger.names = {"mod.task": "mod.task"}
    sup.dispatcher.dispatch(NOW)  # the task goes to the worker
    assert worker.task_id == "t" and status(sup, "t") == "RUNNING"
    far.sendall(encode(Done("t", True, 42, None, 0)))
    far.close()  # then it died
    sup._on_child_exit(worker.pid, 9, NOW)  # killed by SIGKILL
    task = sup.scheduler.ledger.get("t")
    assert (task.status, task.result, task.attempts) == (SUCCESSFUL, 42, 1)
    assert worker.conn is None  # closed once read


def test_a_boot_error_written_just_before_the_worker_died_gives_the_reason(sup):
    from taskpool.protocol import encode
    from taskpool.worker_events import SupervisorExit

    worker, far = dead_worker(sup, "booting")
    far.sendall(encode(Error("boot_failed", "worker could not import its task modules: SyntaxError: bad", None)))
    far.close()
    with pytest.raises(SupervisorExit, match="SyntaxError: bad"):
        sup._on_child_exit(worker.pid, 3 << 8, NOW)


def _wakeup_events(sup: Supervisor) -> list:
    """Real events for a pass: a byte on the supervisor's own wakeup socket."""
    sup._wake_w.send(b"x")
    events = sup.selector.select(5)
    assert events, "the wakeup socket did not become readable"
    return events


def test_timers_run_at_most_every_housekeeping_interval_while_events_come(sup):
    """A pass with events skips the timers when the last housekeeping was under
    HOUSEKEEPING_INTERVAL ago; a pass without events (a wait that timed out) never does."""
    from taskpool.supervisor import HOUSEKEEPING_INTERVAL

    submit(sup, "later", run_after=time.time() + 30)
    due = sup.scheduler.delayed.next_due()
    sup.tick([], due - HOUSEKEEPING_INTERVAL / 2)  # housekeeping ran just before it was due
    assert "later" not in sup.scheduler.ready

    sup.tick(_wakeup_events(sup), due)  # due now, but events keep coming within the interval
    assert "later" not in sup.scheduler.ready

    sup.tick(_wakeup_events(sup), due - HOUSEKEEPING_INTERVAL / 2 + HOUSEKEEPING_INTERVAL)
    assert "later" in sup.scheduler.ready  # at most one interval late


def test_a_pass_without_events_always_runs_the_timers(sup):
    submit(sup, "later", run_after=time.time() + 30)
    due = sup.scheduler.delayed.next_due()
    sup.tick(_wakeup_events(sup), due - 0.0001)
    sup.tick([], due)  # within the interval of the last pass, but the wait timed out
    assert "later" in sup.scheduler.ready


def test_a_signal_runs_the_housekeeping_in_its_pass(sup):
    import signal

    submit(sup, "later", run_after=time.time() + 30)
    due = sup.scheduler.delayed.next_due()
    sup.tick([], due - 0.0001)
    sup.pending_signals.append(signal.SIGUSR1)  # what the handler records (USR1: reopen logs)
    sup.tick(_wakeup_events(sup), due)
    assert not sup.pending_signals
    assert "later" in sup.scheduler.ready


def test_a_pass_that_skipped_the_housekeeping_bounds_the_next_wait_by_it(sup):
    """Not all housekeeping is a timer next_timeout knows of (a stop's recorder drain, a store
    pull): a pass with events that skipped it ends the next wait in time for it."""
    from taskpool.supervisor import HOUSEKEEPING_INTERVAL

    sup.tick([], NOW)
    assert sup.next_timeout(NOW) == 1.0  # nothing owed, nothing due: the 1 s cap
    sup.tick(_wakeup_events(sup), NOW + HOUSEKEEPING_INTERVAL / 4)  # skipped
    assert sup.next_timeout(NOW + HOUSEKEEPING_INTERVAL / 4) == pytest.approx(HOUSEKEEPING_INTERVAL * 3 / 4)
    sup.tick([], NOW + HOUSEKEEPING_INTERVAL)  # the wait timed out: the housekeeping runs, nothing owed
    assert sup.next_timeout(NOW + HOUSEKEEPING_INTERVAL) == 1.0

"""The @task decorator, Task.using() and the Registry."""

from __future__ import annotations

import datetime as dt
import time

import pytest

import taskpool
from taskpool.errors import ConfigError
from taskpool.registry import Registry, Task, TaskOptions, default_registry, task


@task
def module_level_add(a, b=1):
    """Adds."""
    return a + b


@task(name="tests.unit.registry.custom", priority=7, queue_name="slow", max_attempts=5, timeout=12.5)
def custom_options():
    return "custom"


# -- names and registration ----------------------------------------------------


def test_default_name_is_module_and_qualname():
    assert isinstance(module_level_add, Task)
    assert module_level_add.name == f"{__name__}.module_level_add"
    assert default_registry.get(module_level_add.name) is module_level_add


def test_default_name_of_a_nested_function_uses_its_qualname():
    @task
    def inner():
        return 1

    assert inner.name == f"{__name__}.test_default_name_of_a_nested_function_uses_its_qualname.<locals>.inner"
    assert default_registry.get(inner.name) is inner


def test_name_override():
    assert custom_options.name == "tests.unit.registry.custom"
    assert default_registry.get("tests.unit.registry.custom") is custom_options
    assert default_registry.get(f"{__name__}.custom_options") is None


def test_public_decorator_is_the_registry_decorator():
    assert taskpool.task is task
    assert taskpool.Task is Task


def test_decorator_options_become_task_options():
    assert custom_options.options == TaskOptions(priority=7, queue="slow", max_attempts=5, timeout=12.5)
    assert module_level_add.options == TaskOptions()
    assert module_level_add.options.priority == 0
    assert module_level_add.options.queue == "default"
    assert module_level_add.options.max_attempts == 3
    assert module_level_add.options.timeout is None
    assert module_level_add.options.run_after is None


def test_registry_reports_defaults_by_name():
    registry = Registry()
    registry.register(custom_options)
    registry.register(module_level_add)
    assert registry.names() == sorted([custom_options.name, module_level_add.name])
    retry = {"retry_on_timeout": False, "retry_backoff": 1.0, "retry_backoff_max": 600.0}
    assert registry.defaults()[custom_options.name] == {
        "priority": 7, "queue": "slow", "max_attempts": 5, "timeout": 12.5, **retry,
    }
    assert registry.defaults()[module_level_add.name] == {
        "priority": 0, "queue": "default", "max_attempts": 3, "timeout": None, **retry,
    }


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"priority": 101}, "priority"),
        ({"priority": -101}, "priority"),
        ({"priority": 1.5}, "priority"),
        ({"priority": True}, "priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.0}, "max_attempts"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"queue_name": ""}, "queue"),
    ],
    ids=str,
)
def test_decorator_rejects_bad_options(options, match):
    with pytest.raises(ConfigError, match=match):

        @task(name=f"tests.unit.registry.bad.{match}", **options)
        def bad():
            pass

    assert default_registry.get(f"tests.unit.registry.bad.{match}") is None


def test_decorator_rejects_a_non_callable():
    with pytest.raises(ConfigError):
        task(name="tests.unit.registry.not_callable")(42)


def test_registering_a_different_function_under_an_existing_name_is_an_error():
    @task(name="tests.unit.registry.duplicate")
    def first():
        return 1

    with pytest.raises(ConfigError, match="tests.unit.registry.duplicate"):

        @task(name="tests.unit.registry.duplicate")
        def second():
            return 2

    assert default_registry.get("tests.unit.registry.duplicate") is first


def test_registering_a_different_function_in_a_fresh_registry_is_an_error():
    registry = Registry()
    registry.register(Task(lambda: 1, "name", TaskOptions()))
    with pytest.raises(ConfigError, match="'name'"):
        registry.register(Task(lambda: 2, "name", TaskOptions()))


def test_registering_the_same_function_again_is_allowed():
    registry = Registry()
    original = registry.register(Task(module_level_add.func, "again", TaskOptions()))
    replacement = registry.register(Task(module_level_add.func, "again", TaskOptions(priority=5)))
    assert registry.get("again") is replacement is not original
    assert registry.names() == ["again"]


# -- calling -------------------------------------------------------------------


def test_calling_a_task_runs_the_function_directly():
    assert module_level_add(2, 3) == 5
    assert module_level_add(2) == 3
    assert module_level_add(a=4, b=5) == 9


def test_calling_a_task_propagates_its_exceptions():
    @task(name="tests.unit.registry.raises")
    def raises(x):
        raise ValueError(f"bad {x}")

    with pytest.raises(ValueError, match="bad 7"):
        raises(7)


def test_calling_a_task_runs_in_this_process_each_time():
    calls = []

    @task(name="tests.unit.registry.records")
    def records(x):
        calls.append(x)
        return len(calls)

    assert records("a") == 1
    assert records("b") == 2
    assert calls == ["a", "b"]


def test_task_keeps_doc_and_wrapped_function():
    assert module_level_add.__doc__ == "Adds."
    assert module_level_add.__wrapped__ is module_level_add.func
    assert repr(module_level_add) == f"<taskpool.Task {module_level_add.name}>"


# -- using() -------------------------------------------------------------------


def test_using_returns_a_copy_with_overrides():
    copy = custom_options.using(priority=-3, queue_name="fast", timeout=1.5, max_attempts=1)
    assert copy is not custom_options
    assert isinstance(copy, Task)
    assert copy.name == custom_options.name
    assert copy.func is custom_options.func
    assert copy.options == TaskOptions(priority=-3, queue="fast", max_attempts=1, timeout=1.5)
    assert custom_options.options == TaskOptions(priority=7, queue="slow", max_attempts=5, timeout=12.5)
    assert copy() == "custom"


def test_using_without_arguments_keeps_the_options():
    copy = custom_options.using()
    assert copy is not custom_options
    assert copy.options == custom_options.options


def test_using_keeps_options_not_overridden():
    copy = custom_options.using(priority=100)
    assert copy.options.priority == 100
    assert copy.options.queue == "slow"
    assert copy.options.max_attempts == 5
    assert copy.options.timeout == 12.5


def test_using_priority_bounds_are_inclusive():
    assert module_level_add.using(priority=100).options.priority == 100
    assert module_level_add.using(priority=-100).options.priority == -100


def test_using_run_after_aware_datetime_becomes_epoch_seconds():
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    copy = module_level_add.using(run_after=when)
    assert copy.options.run_after == when.timestamp()
    assert copy.options.run_after == dt.datetime(2030, 1, 2, 1, 4, 5, tzinfo=dt.UTC).timestamp()


def test_using_run_after_epoch_seconds():
    assert module_level_add.using(run_after=1_900_000_000).options.run_after == 1_900_000_000.0


def test_using_delay_sets_run_after_from_now():
    before = time.time()
    copy = module_level_add.using(delay=60)
    after = time.time()
    assert before + 60 <= copy.options.run_after <= after + 60


def test_using_zero_delay_is_allowed():
    before = time.time()
    assert module_level_add.using(delay=0).options.run_after >= before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"priority": 101}, "priority"),
        ({"priority": -101}, "priority"),
        ({"priority": 1000}, "priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"timeout": 0}, "timeout"),
        ({"delay": -1}, "delay"),
        ({"delay": -0.001}, "delay"),
        ({"delay": "10"}, "delay"),
        ({"delay": 5, "run_after": 1_900_000_000}, "delay or run_after"),
        ({"delay": 0, "run_after": dt.datetime(2030, 1, 1, tzinfo=dt.UTC)}, "delay or run_after"),
        ({"run_after": dt.datetime(2030, 1, 1)}, "timezone-aware"),
        ({"run_after": "2030-01-01"}, "run_after"),
        ({"run_after": True}, "run_after"),
    ],
    ids=str,
)
def test_using_validates(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        module_level_add.using(**kwargs)


def test_failed_using_leaves_the_task_unchanged():
    with pytest.raises(ConfigError):
        module_level_add.using(priority=500)
    assert module_level_add.options == TaskOptions()

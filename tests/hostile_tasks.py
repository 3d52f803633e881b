"""Tasks that misbehave on purpose: values that cannot cross the wire, hostile exceptions.

Imported by the supervisor's workers in the bad-input tests, next to sample_tasks.
"""

import taskpool


@taskpool.task
def returns_nan():
    return float("nan")


@taskpool.task
def returns_bytes():
    return b"\x00\x01raw"


@taskpool.task
def returns_set():
    return {1, 2, 3}


@taskpool.task
def returns_big_int():
    return 2**70


@taskpool.task
def returns_int_keys():
    return {1: "one"}


class UnprintableError(Exception):
    """An exception whose str() itself raises."""

    def __str__(self):
        raise RuntimeError("str() of this exception fails")


@taskpool.task(max_attempts=1)
def raises_unprintable():
    raise UnprintableError("boom")

"""A task with registered options, imported only by supervisors (never by the test process),
so that a test can submit it by name with the options unknown to the client."""

import taskpool


@taskpool.task(max_attempts=1, priority=7, timeout=9.0)
def with_options(x):
    return x

"""The exceptions taskpool raises, in one small module every layer may import."""

from __future__ import annotations


class TaskpoolError(Exception):
    """Base of every error taskpool raises on purpose."""


class ConfigError(TaskpoolError):
    """A setting has a bad value; the message names the setting."""


class ProtocolError(TaskpoolError):
    """A frame could not be decoded or broke the protocol's rules."""


class SupervisorUnavailable(TaskpoolError):
    """Nothing answers on the supervisor's socket."""


class RemoteError(TaskpoolError):
    """The supervisor refused a request; ``code`` is from protocol.ERROR_CODES."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class UnknownTask(RemoteError):
    """The task name is not registered in the workers."""


class InvalidArguments(TaskpoolError, TypeError):
    """Task arguments or results are not JSON-compatible values."""


class TaskNotFound(RemoteError):
    """No task with that id is known."""


class ResultTimeout(TaskpoolError, TimeoutError):
    """``TaskHandle.result(timeout)`` ran out of time before a final status."""


class TaskTimeout(TaskpoolError):
    """A task ran past its ``timeout`` and its worker was stopped.

    Named in ``retry_for`` to make timeouts retryable."""


class TaskFailed(TaskpoolError):
    """A task ended FAILED or CANCELLED; carries the remote exception's details."""

    def __init__(self, task_id: str, status: str, error: dict | None) -> None:
        error = error or {}
        self.task_id = task_id
        self.status = status
        self.exception_type: str = error.get("type", "")
        self.remote_message: str = error.get("message", "")
        self.remote_traceback: str = error.get("traceback", "")
        summary = f"{self.exception_type}: {self.remote_message}" if self.exception_type else status
        super().__init__(f"task {task_id} {status.lower()}: {summary}")

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback
        return text


class WorkerLost(TaskpoolError):
    """Recorded (as ``taskpool.errors.WorkerLost``) when a worker died mid-task."""


class Cancelled(TaskpoolError):
    """Recorded (as ``taskpool.errors.Cancelled``) when a running task was cancelled."""


class StoreError(TaskpoolError):
    """The task store could not be read or written (locked, disk full, read-only...).

    Raised by ``submit()`` before anything is half-written: the transaction is rolled back."""


class Retry(Exception):  # noqa: N818 - the name users write: raise taskpool.Retry(delay=30)
    """Raised inside a task to ask for another attempt, after ``delay`` seconds.

    Counts toward ``max_attempts``; once they are spent the task is FAILED."""

    def __init__(self, delay: float | None = None, message: str = "retry requested") -> None:
        super().__init__(message)
        self.delay = delay

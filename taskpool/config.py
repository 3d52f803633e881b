"""Settings, declared once each: name, parser, default, check and help.

The one table below feeds the CLI flags (``taskpool-supervisor --help``), the
environment variables, the Django ``TASKPOOL`` setting (by upper-case name), the
settings reference in docs/operations.md and the frozen ``Config`` the supervisor
runs on. A SIGHUP reload builds a new ``Config`` from the same sources.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping

from .errors import ConfigError
from .records import Factory, record

TYPE_CHECKING = False  # typing stays unimported at run time (docs/performance.md, idle RSS)
if TYPE_CHECKING:
    from typing import Any

SOCKET_NAME = "taskpool.sock"


@record(frozen=True)
class Setting:
    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    check: Callable[[Any], str | None] = lambda value: None  # returns a problem or None
    env: str | None = None
    many: bool = False  # may be given more than once (a list)

    @property
    def kind(self) -> tuple[type, ...]:
        """Python types accepted when the value is not a string (e.g. from Django settings)."""
        if self.parse in (int, _octal):
            return (int,)
        if self.parse is float:
            return (int, float)
        return (str,)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


MAX_SPIN = 0.01  # seconds: past this, spinning is burning a core, not saving a wake-up


def _spin(value: float) -> str | None:
    if not 0 <= value <= MAX_SPIN:  # also refuses nan and inf
        return f"must be between 0 and {MAX_SPIN} seconds"
    return None


def _octal(text: str) -> int:
    return int(text, 8)


def _positive(value: Any) -> str | None:
    return None if value is None or value > 0 else "must be greater than 0"


def _not_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _mode(value: int) -> str | None:
    if value & ~0o777:
        return "must be a permission mode such as 600 or 660"
    if value & 0o007:
        return "must not give access to others (the last digit must be 0)"
    return None if value & 0o600 == 0o600 else "must give the owner read and write (6xx)"


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda text: None if text in ("", "none", "None") else parse(text)


SETTINGS: tuple[Setting, ...] = (
    Setting("workers", int, os.cpu_count() or 2, "worker processes to fork", _positive, "TASKPOOL_WORKERS"),
    Setting("spool", str, "spool", "spool directory: holds the socket (and the store)", env="TASKPOOL_SPOOL"),
    Setting("socket", _optional(str), None, "socket path (default: SPOOL/taskpool.sock)", env="TASKPOOL_SOCKET"),
    Setting("store", str, "sqlite", "where task rows live: sqlite (in the spool), memory (not durable) or django",
            lambda v: None if v in ("sqlite", "memory", "django") else "must be sqlite, memory or django", "TASKPOOL_STORE"),
    Setting("retention_days", float, 7.0, "days finished tasks are kept in the store", _not_negative),
    Setting("post_fork", _optional(str), None,
            "module:function called in each worker after fork, before the task modules are imported"),
    Setting("import_", str, (), "module that registers tasks, imported by each worker after fork", many=True),
    Setting("socket_mode", _octal, 0o600, "permission bits of the socket file, in octal", _mode),
    Setting("socket_group", _optional(str), None, "group that owns the socket (with --socket-mode 660)"),
    Setting("allow_uid", int, (), "another uid allowed to connect (own uid and root always are)", many=True),
    Setting("max_tasks_per_worker", int, 0, "retire a worker after this many tasks (0: never)", _not_negative),
    Setting("max_memory_per_worker", int, 0, "retire a worker whose RSS passes this many MB (0: never)", _not_negative),
    Setting("prefetch", int, 8,
            "tasks sent ahead to each busy worker when all are busy and more wait: faster for many short tasks, "
            "but a task sent ahead waits behind its worker's current one (0: none)", _not_negative),
    Setting("prefetch_below", float, 0.005,
            "seconds: only tasks whose name has averaged less than this are sent ahead, and only to a worker "
            "whose current task is such a one and has run less than this (inf: any task)", _positive),
    Setting("spin", float, 0.0002,
            "seconds the supervisor, each worker and each client (from $TASKPOOL_SPIN) keep polling for their "
            "next message before they sleep: cuts a quick task's round trip several times where waking a process "
            "is slow (VMs), for at most this much CPU each time one runs out of work (0: sleep at once)",
            _spin, "TASKPOOL_SPIN"),
    Setting("graceful_timeout", float, 30.0, "seconds a graceful stop waits for running tasks before killing them",
            _not_negative),
    Setting("max_ready", int, 10_000,
            "READY tasks held in memory; beyond it a durable store keeps them on disk (memory store: refused)", _positive),
    Setting("result_cache", int, 10_000, "finished tasks kept in memory for status queries", _positive),
    Setting("max_frame", int, 4 * 1024 * 1024, "largest frame accepted, in bytes", _positive),
    Setting("client_buffer", int, 8 * 1024 * 1024, "unsent bytes a client may owe before it is dropped", _positive),
    Setting("pidfile", _optional(str), None, "write the supervisor's pid to this file"),
    Setting("log_file", _optional(str), None, "log here instead of stderr (reopened on SIGUSR1)"),
    Setting("log_level", str.upper, "INFO", "DEBUG, INFO, WARNING or ERROR",
            lambda v: None if v in ("DEBUG", "INFO", "WARNING", "ERROR") else "must be DEBUG, INFO, WARNING or ERROR"),
)
BY_NAME = {s.name: s for s in SETTINGS}


@record(frozen=True)
class Config:
    """The supervisor's settings; built by ``load_config`` and never changed."""

    workers: int
    spool: str
    socket: str | None
    store: str
    retention_days: float
    post_fork: str | None
    import_: tuple[str, ...]
    socket_mode: int
    socket_group: str | None
    allow_uid: tuple[int, ...]
    max_tasks_per_worker: int
    max_memory_per_worker: int
    prefetch: int
    prefetch_below: float
    spin: float
    graceful_timeout: float
    max_ready: int
    result_cache: int
    max_frame: int
    client_buffer: int
    pidfile: str | None
    log_file: str | None
    log_level: str
    sources: dict = Factory(dict, compare=False)  # the settings given explicitly (CLI or Django), as given

    @property
    def socket_path(self) -> str:
        return resolve_socket(self.spool, self.socket)


def resolve_socket(spool: str | None, socket: str | None) -> str:
    """The socket path both sides agree on: explicit socket, else SPOOL/taskpool.sock."""
    if socket:
        return os.path.abspath(socket)
    return os.path.abspath(os.path.join(spool or BY_NAME["spool"].default, SOCKET_NAME))


def client_spin(environ: Mapping[str, str] | None = None) -> float:
    """The spin of a client process (see the ``spin`` setting): $TASKPOOL_SPIN, else the default."""
    raw = (os.environ if environ is None else environ).get("TASKPOOL_SPIN")
    if not raw:
        return BY_NAME["spin"].default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"spin ($TASKPOOL_SPIN): {raw!r} is not a number of seconds") from None
    problem = _spin(value)
    if problem:
        raise ConfigError(f"spin ($TASKPOOL_SPIN): {raw!r} {problem}")
    return value


def _coerce(setting: Setting, raw: Any) -> Any:
    if setting.many:
        items = raw if isinstance(raw, (list, tuple)) else [raw]
        return tuple(_coerce_one(setting, item) for item in items)
    return _coerce_one(setting, raw)


def _coerce_one(setting: Setting, raw: Any) -> Any:
    if isinstance(raw, str):
        return setting.parse(raw)
    if isinstance(raw, bool) or not isinstance(raw, setting.kind):
        names = " or ".join(k.__name__ for k in setting.kind)
        raise TypeError(f"expected {names}, got {type(raw).__name__}")
    return raw


def load_config(explicit: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build a Config from explicit values (CLI or Django), then env, then defaults.

    Raises ConfigError naming the setting and the bad value."""
    explicit = {k: v for k, v in (explicit or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.name in explicit:
            raw, source = explicit[setting.name], "argument"
        elif setting.env and environ.get(setting.env):
            raw, source = environ[setting.env], f"${setting.env}"
        else:
            values[setting.name] = setting.default
            continue
        try:
            value = _coerce(setting, raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{setting.name} ({source}): {raw!r} is not valid: {exc}") from None
        checked = value if setting.many else (value,)
        for item in checked:
            problem = setting.check(item)
            if problem:
                raise ConfigError(f"{setting.name} ({source}): {raw!r} {problem}")
        values[setting.name] = value
    unknown = set(explicit) - set(BY_NAME)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    return Config(**values, sources=dict(explicit))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; defaults stay None so load_config can tell them apart."""
    for setting in SETTINGS:
        flag = "--import" if setting.name == "import_" else setting.flag
        kwargs: dict[str, Any] = {"dest": setting.name, "default": None, "help": setting.help}
        if setting.many:
            kwargs["action"] = "append"
        parser.add_argument(flag, **kwargs)

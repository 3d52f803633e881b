"""``taskpool-supervisor``: run the supervisor, or print a running one's status.

    taskpool-supervisor --workers 4 --spool ./spool --import mytasks
    taskpool-supervisor status --spool ./spool [--json]

Exit codes: 0 clean stop, 1 runtime error, 2 bad usage or configuration,
3 workers could not import their task modules, or the recorder could not open the store.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__
from .config import Config, add_arguments, load_config, resolve_socket
from .errors import ConfigError, RemoteError, SupervisorUnavailable
from .protocol import StatsRequest

LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def _help_formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's default formatter at the width it would pick itself, measured without
    argparse's ``import shutil``: that brings zlib, bz2 and lzma into the supervisor, and
    whatever the supervisor has imported when it forks counts again in each child's RSS."""
    try:
        columns = int(os.environ["COLUMNS"])  # the order shutil.get_terminal_size() uses
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return argparse.HelpFormatter(prog, width=(columns or 80) - 2)


def run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskpool-supervisor",
        description="Run the taskpool supervisor (use 'taskpool-supervisor status' to query one).",
        formatter_class=_help_formatter,
    )
    parser.add_argument("--version", action="version", version=f"taskpool {__version__}")
    add_arguments(parser)
    return parser


def status_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskpool-supervisor status", description="Show a running supervisor's status.",
                                     formatter_class=_help_formatter)
    parser.add_argument("--spool", default=None, help="spool directory (socket at SPOOL/taskpool.sock)")
    parser.add_argument("--socket", default=None, help="socket path")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    return parser


def setup_logging(config: Config) -> None:
    handler: logging.Handler
    if config.log_file:
        handler = logging.FileHandler(config.log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level)


def write_pidfile(path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_pidfile(path: str) -> None:
    try:
        with open(path) as fh:
            if fh.read().strip() == str(os.getpid()):
                os.unlink(path)
    except FileNotFoundError:
        pass


def django_defaults() -> dict:
    """With DJANGO_SETTINGS_MODULE set: settings.TASKPOOL (flags override it), the django
    store, and workers that call django.setup() after the fork. Only the settings module
    is imported here; apps and task modules are imported in the workers."""
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return {}
    from django_integration.conf import explicit_values  # the integration layer, above the core

    return {"post_fork": "django_integration.runtime:setup_worker", **explicit_values()}


def run(argv: list[str]) -> int:
    from .supervisor import Supervisor

    args = run_parser().parse_args(argv)
    explicit = {k: v for k, v in vars(args).items() if v is not None}
    try:
        explicit = {**django_defaults(), **explicit}
        config = load_config(explicit)
    except ConfigError as exc:
        print(f"taskpool-supervisor: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # --import finds modules next to the caller, as gunicorn does
    try:
        supervisor = Supervisor(config, explicit)
        supervisor.open()
    except ConfigError as exc:
        print(f"taskpool-supervisor: error: {exc}", file=sys.stderr)
        return 2
    if config.pidfile:
        try:
            write_pidfile(config.pidfile)
        except OSError as exc:
            supervisor.close()
            print(f"taskpool-supervisor: error: cannot write the pidfile {config.pidfile}: {exc.strerror}", file=sys.stderr)
            return 2
    log = logging.getLogger("taskpool.supervisor")
    log.info("taskpool %s listening on %s with %d workers", __version__, config.socket_path, config.workers)
    try:
        return supervisor.run()
    finally:
        if config.pidfile:
            remove_pidfile(config.pidfile)
        log.info("stopped")


def format_table(data: dict) -> str:
    lines = [
        f"supervisor pid {data['pid']}  version {data['version']}  generation {data['generation']}  "
        f"phase {data['phase']}  uptime {data['uptime']:.0f}s",
        f"socket {data['socket']}",
        "queue     " + "  ".join(f"{k} {v}" for k, v in data["queue"].items()),
        "counters  " + "  ".join(f"{k} {v}" for k, v in data["counters"].items()),
        f"workers   {len(data['workers'])} (target {data['target_workers']})",
        "",
        f"{'WID':>4} {'PID':>8} {'GEN':>4} {'STATE':<9} {'DONE':>7} {'RSS MB':>7} {'CPU%':>6}  TASK",
    ]
    for w in data["workers"]:
        task = f"{w['task_name']} {w['task_id']}" if w["task_id"] else ""
        if w.get("progress") is not None:
            task += f" ({w['progress']:.0f}%)"
        lines.append(
            f"{w['wid']:>4} {w['pid']:>8} {w['generation']:>4} {w['state']:<9} {w['tasks_done']:>7} "
            f"{w['rss'] / 2**20:>7.1f} {w['cpu_percent']:>6.1f}  {task}"
        )
    return "\n".join(lines)


def status(argv: list[str]) -> int:
    import json  # the client side is imported here: a supervisor (run) never needs it

    from .connection import Client

    args = status_parser().parse_args(argv)
    spool = args.spool or os.environ.get("TASKPOOL_SPOOL") or django_defaults().get("spool")
    path = resolve_socket(spool, args.socket or os.environ.get("TASKPOOL_SOCKET") or django_defaults().get("socket"))
    try:
        data = Client(path, timeout=args.timeout).request(StatsRequest()).data  # type: ignore[attr-defined]
    except (SupervisorUnavailable, RemoteError) as exc:
        print(f"taskpool-supervisor status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else format_table(data))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:
        return status(argv[1:])
    if argv[:1] == ["run"]:
        argv = argv[1:]
    return run(argv)

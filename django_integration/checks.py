"""System checks for ``settings.TASKPOOL``: clear messages at ``manage.py check`` time."""

from __future__ import annotations

from django.core import checks

from taskpool.errors import ConfigError

from .conf import explicit_values, raw_settings, unknown_keys


@checks.register("taskpool")
def check_settings(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    raw = raw_settings()
    if not isinstance(raw, dict):
        return [checks.Error("TASKPOOL must be a dict", hint="TASKPOOL = {'SPOOL': BASE_DIR / 'spool'}", id="taskpool.E001")]
    problems: list[checks.CheckMessage] = []
    unknown = unknown_keys(raw)
    if unknown:
        problems.append(checks.Error(f"TASKPOOL has unknown key(s): {', '.join(unknown)}",
                                     hint="See docs/django.md for the settings reference.", id="taskpool.E002"))
    if "IMMEDIATE" in raw and not isinstance(raw["IMMEDIATE"], bool):
        problems.append(checks.Error(f"TASKPOOL['IMMEDIATE'] must be True or False, got {raw['IMMEDIATE']!r}",
                                     id="taskpool.E003"))
    try:
        from taskpool.config import load_config

        load_config({k: v for k, v in explicit_values(raw).items() if k not in {u.lower() for u in unknown}},
                    environ={})
    except ConfigError as exc:
        problems.append(checks.Error(f"TASKPOOL: {exc}", id="taskpool.E004"))
    if raw.get("STORE", "django") != "django":
        problems.append(checks.Warning(
            f"TASKPOOL['STORE'] is {raw['STORE']!r}: submit() is then not part of the view's database "
            "transaction (a rolled-back view's task still runs)",
            hint="Use the default 'django' store for transactional submit.", id="taskpool.W002"))
    if raw.get("STORE", "django") == "django":
        problems += _sqlite_warnings()
    if "SPOOL" not in raw and "SOCKET" not in raw:
        problems.append(checks.Warning(
            "TASKPOOL does not set SPOOL; the supervisor's socket is looked for in ./spool relative to the "
            "working directory", hint="Set TASKPOOL = {'SPOOL': BASE_DIR / 'spool'}", id="taskpool.W001"))
    return problems


def _sqlite_warnings() -> list[checks.CheckMessage]:
    """The recorder writes task status into the project's database from its own process.
    On SQLite, a transaction that reads and then writes (a typical view) is refused at
    once with "database is locked" when another process committed in between, whatever
    the timeout; beginning transactions IMMEDIATE makes it wait for the lock instead."""
    from django.conf import settings

    database = settings.DATABASES.get("default", {})
    if database.get("ENGINE") != "django.db.backends.sqlite3":
        return []
    if str(database.get("OPTIONS", {}).get("transaction_mode", "")).upper() == "IMMEDIATE":
        return []
    return [checks.Warning(
        "the default database is SQLite without OPTIONS['transaction_mode'] = 'IMMEDIATE': with taskpool's "
        "recorder writing to it, a view that reads and then writes may fail with 'database is locked'",
        hint="Set DATABASES['default']['OPTIONS'] = {'transaction_mode': 'IMMEDIATE', 'timeout': 20, "
             "'init_command': 'PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;'} (docs/django.md, 'SQLite').",
        id="taskpool.W003")]

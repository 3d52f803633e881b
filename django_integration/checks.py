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
    if "SPOOL" not in raw and "SOCKET" not in raw:
        problems.append(checks.Warning(
            "TASKPOOL does not set SPOOL; the supervisor's socket is looked for in ./spool relative to the "
            "working directory", hint="Set TASKPOOL = {'SPOOL': BASE_DIR / 'spool'}", id="taskpool.W001"))
    return problems

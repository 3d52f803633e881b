"""``settings.TASKPOOL``: read, validated, and applied to the taskpool client.

Keys are the upper-case names of taskpool's settings (``SPOOL``, ``SOCKET``,
``WORKERS``, ``IMPORT``, ``STORE``...; see docs/operations.md) plus ``IMMEDIATE``
(run tasks inline in the caller, recording the row: for tests and ``runserver``
without a supervisor). With Django the default store is ``django``.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings

from taskpool import client
from taskpool.config import BY_NAME, Config, load_config

DJANGO_ONLY = {"IMMEDIATE"}
DEFAULTS = {"STORE": "django"}


def raw_settings() -> dict[str, Any]:
    value = getattr(settings, "TASKPOOL", {})
    return dict(value) if isinstance(value, dict) else value


def explicit_values(raw: dict[str, Any] | None = None) -> dict[str, Any]:
    """TASKPOOL as load_config() arguments (lower-case names; IMPORT -> import_)."""
    raw = {**DEFAULTS, **(raw_settings() if raw is None else raw)}
    values = {}
    for key, value in raw.items():
        if key in DJANGO_ONLY:
            continue
        name = "import_" if key == "IMPORT" else key.lower()
        values[name] = os.fspath(value) if isinstance(value, os.PathLike) else value
    return values


def load() -> Config:
    """The supervisor's Config from TASKPOOL (raises taskpool.ConfigError)."""
    return load_config(explicit_values())


def immediate() -> bool:
    return bool(raw_settings().get("IMMEDIATE", False))


def unknown_keys(raw: dict[str, Any]) -> list[str]:
    known = {("IMPORT" if s.name == "import_" else s.name.upper()) for s in BY_NAME.values()} | DJANGO_ONLY
    return sorted(k for k in raw if k not in known)


def configure_client() -> None:
    """Point submit()/handles at the store and socket the settings name."""
    raw = raw_settings()
    if not isinstance(raw, dict):
        return  # the system check reports it
    client.configure(
        spool=str(raw.get("SPOOL") or ""),
        socket=str(raw.get("SOCKET") or ""),
        store=str(raw.get("STORE") or DEFAULTS["STORE"]),
        immediate=bool(raw.get("IMMEDIATE", False)),
    )

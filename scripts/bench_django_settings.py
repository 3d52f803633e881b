"""Django settings for scripts/bench's ``taskpool (django)`` runner: the smallest project that
uses the django store the way a site does (task rows in the project's SQLite database, through
the ORM), so the figures include what Django costs.

Everything lives under $TASKPOOL_BENCH_DIR (a temp dir the bench makes per run): the database
file, shared by the bench process, the recorder and the workers, and the supervisor's spool.
"""

import os
from pathlib import Path

try:
    DATA_DIR = Path(os.environ["TASKPOOL_BENCH_DIR"]).resolve()
except KeyError:
    raise RuntimeError("bench_django_settings needs TASKPOOL_BENCH_DIR (scripts/bench.py sets it)") from None

SECRET_KEY = "bench-only-not-secret"  # noqa: S105 - never served
DEBUG = False  # DEBUG on would record every query in memory and slow the ORM down
ALLOWED_HOSTS: list[str] = []
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",  # the view-like W3 looks a user up, as a view behind a login would
    "django_integration",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA_DIR / "db.sqlite3",
        # as in example/ (docs/django.md, "SQLite"): the bench process, the recorder and the workers
        # share the file, so wait for locks, take the write lock when a transaction begins, use WAL
        # with synchronous=NORMAL (as the sqlite store does)
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE",
                    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
TASKPOOL = {"SPOOL": DATA_DIR / "spool"}

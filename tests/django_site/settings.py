"""Django settings for the integration tests: a real SQLite file the supervisor's
processes share with the test process (not pytest-django's in-memory default)."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if not os.environ.get("TASKPOOL_TEST_DIR"):
    # One directory per test session, inherited by the supervisors it starts: two sessions
    # (or two checkouts) never share, or delete, each other's test database.
    os.environ["TASKPOOL_TEST_DIR"] = tempfile.mkdtemp(prefix="taskpool-tests-")
    atexit.register(shutil.rmtree, os.environ["TASKPOOL_TEST_DIR"], True)
RUN_DIR = Path(os.environ["TASKPOOL_TEST_DIR"])
RUN_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = "tests-only"
DEBUG = True
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "django_site.urls"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_integration",
    "django_site.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        # the supervisor's processes are told the test database's name by the tests
        "NAME": os.environ.get("TASKPOOL_TEST_DB", str(RUN_DIR / "db.sqlite3")),
        "TEST": {"NAME": str(RUN_DIR / "test-db.sqlite3")},
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE",
                    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"},
    }
}
STATIC_URL = "/static/"
TASKPOOL = {"SPOOL": str(RUN_DIR / "spool")}
TASKS = {"default": {"BACKEND": "django_integration.backend.TaskpoolBackend", "QUEUES": []}}

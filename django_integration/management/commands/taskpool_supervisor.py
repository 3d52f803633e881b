"""``manage.py taskpool_supervisor --workers 4``: the same as ``taskpool-supervisor``.

It replaces itself (exec) with a fresh ``python -m taskpool`` process, so the
supervisor starts without the apps this command's process has already imported
and a SIGHUP reload still loads new code in the workers.
"""

from __future__ import annotations

import os
import sys

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the taskpool supervisor for this project (flags as for taskpool-supervisor; --help lists them)."

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.add_argument("args", nargs="*", help="taskpool-supervisor flags, e.g. --workers 4")
        return parser

    def run_from_argv(self, argv: list[str]) -> None:
        flags = argv[2:]
        if flags[:1] in (["-h"], ["--help"]):
            flags = ["--help"]
        # `python -m taskpool` puts the working directory first on sys.path, not manage.py's
        # folder: carry that folder over so the settings module still imports.
        project_dir = sys.path[0] or os.getcwd()
        paths = [project_dir, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        os.execv(sys.executable, [sys.executable, "-m", "taskpool", *flags])

    def handle(self, *args, **options) -> None:  # pragma: no cover - run_from_argv execs first
        self.run_from_argv(["manage.py", "taskpool_supervisor", *args])

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
        os.execv(sys.executable, [sys.executable, "-m", "taskpool", *flags])

    def handle(self, *args, **options) -> None:  # pragma: no cover - run_from_argv execs first
        self.run_from_argv(["manage.py", "taskpool_supervisor", *args])

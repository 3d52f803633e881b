#!/usr/bin/env python
"""The example project's manage.py (run from anywhere: python example/manage.py ...)."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_site.settings")
    # `taskpool_supervisor` replaces this process with `python -m taskpool`, which finds
    # example_site through PYTHONPATH, not through this script's directory.
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(HERE) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), *paths])
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()

"""Process titles (``ps`` shows ``taskpool: worker 3 gen 2 busy mytasks.add``).

Uses the optional ``setproctitle`` package when it is installed, as gunicorn and
uWSGI do; without it titles are silently left alone.
"""

from __future__ import annotations

try:
    from setproctitle import setproctitle as _set
except ImportError:  # optional dependency
    _set = None


def set_title(text: str) -> None:
    if _set is not None:
        _set(f"taskpool: {text}")


def available() -> bool:
    return _set is not None

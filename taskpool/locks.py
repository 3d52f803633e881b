"""Each supervisor's lock file: how anyone on the host can tell it is gone.

A supervisor holds an exclusive flock on ``SPOOL/locks/<id>.lock`` for its whole life;
its workers and recorder inherit it. The lock is free exactly when that supervisor and
all its children are dead, so the next supervisor (or a client cancelling a row) knows
at once, without waiting out a lease.
"""

from __future__ import annotations

import fcntl
import os


def lock_path(spool: str, supervisor_id: str) -> str:
    return os.path.join(spool, "locks", f"{supervisor_id}.lock")


def hold_lock(spool: str, supervisor_id: str) -> int:
    """Create and flock this supervisor's lock file; the fd stays open for life."""
    from .transport import ensure_private_dir

    ensure_private_dir(os.path.join(spool, "locks"))
    fd = os.open(lock_path(spool, supervisor_id), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.set_inheritable(fd, False)  # not across exec; forked children keep it, which is the point
    return fd


def lock_is_free(spool: str, supervisor_id: str) -> bool | None:
    """True when nobody holds that supervisor's lock; None when there is no lock file."""
    path = lock_path(spool, supervisor_id)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    except OSError:  # e.g. another user's private spool: we cannot tell
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True

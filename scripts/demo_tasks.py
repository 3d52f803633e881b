"""Tasks for the standalone demo (scripts/demo)."""

import os
import random
import time

import taskpool


@taskpool.task(timeout=60)
def build_report(report_id: int, pages: int = 10) -> dict:
    """Pretend to render a report page by page, reporting progress."""
    for page in range(pages):
        taskpool.progress(100 * page / pages, f"rendering page {page + 1} of {pages}")
        time.sleep(random.uniform(0.05, 0.25))
    return {"url": f"/media/reports/{report_id}.pdf", "pages": pages}


@taskpool.task
def flaky_import(rows: int) -> int:
    """Fails with a clear error, as a real task would on bad data."""
    time.sleep(0.3)
    raise ValueError(f"row {rows // 2} has no customer id")


@taskpool.task(max_attempts=3)
def crashes_once(marker: str) -> str:
    """Kills its worker on the first attempt; the supervisor re-runs it."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return "recovered after a worker crash"

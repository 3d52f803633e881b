"""The example's task: found by the Django-mode workers, which import every app's tasks.py."""

import time

from django.conf import settings

import taskpool

SECONDS_PER_PAGE = 0.4


@taskpool.task(timeout=300)
def build_report(report_id: int, pages: int = 10) -> dict:
    """Render a report page by page (pretend work), reporting progress; returns its URL."""
    lines = []
    for page in range(pages):
        taskpool.progress(100 * page / pages, f"rendering page {page + 1} of {pages}")
        time.sleep(SECONDS_PER_PAGE)
        lines.append(f"Report {report_id}, page {page + 1} of {pages}\n")
    folder = settings.MEDIA_ROOT / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"report-{report_id}.txt"
    (folder / name).write_text("".join(lines))
    return {"url": f"{settings.MEDIA_URL}reports/{name}", "pages": pages}

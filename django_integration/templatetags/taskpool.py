"""``{% load taskpool %}{% taskpool_progress task_id %}``: a live progress bar for one task.

Renders taskpool/progress.html: a ``<progress>`` bar, a status line (``role="status"``,
announced politely by screen readers) and a result/error area, plus
``static/taskpool/progress.js``, which polls the task endpoint (``taskpool-task``)
about once a second and stops when the task is final. Any number of widgets may
share a page; the script loads once. When a task ends the widget fires a bubbling
``taskpool:final`` event whose ``detail`` is the endpoint's JSON, for pages that
show the result their own way.

Options: ``label="Report"`` (the bar's accessible name), ``interval=1000`` (ms).
The status endpoint's access rule applies (see django_integration/views.py).
"""

from __future__ import annotations

import uuid

from django import template
from django.urls import reverse

register = template.Library()


@register.inclusion_tag("taskpool/progress.html")
def taskpool_progress(task_id, label: str = "Task progress", interval: int = 1000) -> dict:
    task_id = str(getattr(task_id, "id", task_id))  # a TaskHandle works too
    return {
        "task_id": task_id,
        "status_url": reverse("taskpool-task", kwargs={"task_id": task_id}),
        "widget_id": f"taskpool-{uuid.uuid4().hex[:12]}",
        "label": label,
        "interval": max(250, int(interval)),
    }

"""The task table in the Django admin: browse, inspect, re-run failed tasks, cancel waiting ones.

Rows are written by the supervisor's recorder only, so the admin never edits one:
there is no add form and the detail page is read-only (args, kwargs, result and
every attempt's error with its traceback, pretty-printed). Deleting rows is
allowed (a delete of a READY or RUNNING row does not stop the task: cancel it
first). The two actions need the "change task" permission:

* "Re-run selected failed tasks" submits a NEW task with the same name, args and
  kwargs (by name, so the workers' current code and defaults apply) for each
  selected FAILED row, and reports the new ids; the old row stays as it was.
* "Cancel selected ready tasks" calls ``taskpool.cancel`` for each selected READY
  row (through the supervisor, or in the table directly when none is running).
"""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.translation import ngettext

import taskpool
from taskpool.client import submit_many
from taskpool.errors import TaskpoolError
from taskpool.protocol import FAILED, READY

from .models import TaskRecord


def pretty_json(value) -> str:
    return format_html('<pre class="taskpool-json">{}</pre>', json.dumps(value, indent=2, sort_keys=True,
                                                                       ensure_ascii=False, default=str))


def short_ids(ids: list[str], limit: int = 5) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


@admin.register(TaskRecord)
class TaskRecordAdmin(admin.ModelAdmin):
    list_display = ("task_id", "name", "status", "progress_display", "attempts", "queue", "enqueued_at", "finished_at")
    list_display_links = ("task_id",)
    list_filter = ("status", "name", "queue")
    search_fields = ("^task_id", "name")
    date_hierarchy = "enqueued_at"
    list_per_page = 50
    actions = ["rerun_failed", "cancel_ready"]
    readonly_fields = ("args_display", "kwargs_display", "result_display", "errors_display", "worker_ids_display")
    fieldsets = (
        (None, {"fields": ("task_id", "name", "status", "progress", "progress_message", "attempts", "max_attempts")}),
        ("Call", {"fields": ("args_display", "kwargs_display", "queue", "priority", "timeout", "run_after")}),
        ("Outcome", {"fields": ("result_display", "errors_display")}),
        ("Times and workers", {"fields": ("enqueued_at", "started_at", "last_attempted_at", "finished_at",
                                          "worker_ids_display", "held_by")}),
    )

    # -- read-only: the recorder owns the rows ---------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # the detail page is a read-only view

    def has_run_permission(self, request: HttpRequest) -> bool:
        """Re-running and cancelling: users who could change tasks (the model's change permission)."""
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")

    # -- columns and detail fields -----------------------------------------------------

    @admin.display(description="progress", ordering="progress")
    def progress_display(self, obj: TaskRecord) -> str:
        return "" if obj.progress is None else f"{obj.progress:.0f}%"

    @admin.display(description="args")
    def args_display(self, obj: TaskRecord) -> str:
        return pretty_json(obj.args)

    @admin.display(description="kwargs")
    def kwargs_display(self, obj: TaskRecord) -> str:
        return pretty_json(obj.kwargs)

    @admin.display(description="result")
    def result_display(self, obj: TaskRecord) -> str:
        return pretty_json(obj.result) if obj.status == "SUCCESSFUL" else "-"

    @admin.display(description="worker pids")
    def worker_ids_display(self, obj: TaskRecord) -> str:
        return ", ".join(str(w) for w in obj.worker_ids or []) or "-"

    @admin.display(description="errors (oldest first)")
    def errors_display(self, obj: TaskRecord) -> str:
        if not obj.errors:
            return "-"
        return format_html_join(
            "", '<div class="taskpool-error"><p><strong>Attempt {}: {}</strong>: {}</p><pre>{}</pre></div>',
            ((i, e.get("type", "?"), e.get("message", ""), e.get("traceback") or "(no traceback)")
             for i, e in enumerate(obj.errors, 1)),
        )

    def get_fieldsets(self, request: HttpRequest, obj=None):
        return self.fieldsets

    # -- actions -------------------------------------------------------------------------

    @admin.action(description="Re-run selected failed tasks (as new tasks)", permissions=["run"])
    def rerun_failed(self, request: HttpRequest, queryset: QuerySet[TaskRecord]) -> None:
        failed = list(queryset.filter(status=FAILED).order_by("enqueued_at"))
        skipped = queryset.count() - len(failed)
        if failed:
            try:
                handles = submit_many([(r.name, r.args, r.kwargs) for r in failed])
            except TaskpoolError as exc:
                self.message_user(request, f"Could not re-run the tasks: {exc}", messages.ERROR)
                return
            new_ids = [h.id for h in handles]
            self.message_user(request, ngettext(
                "Re-ran %(n)d failed task as a new task: %(ids)s.",
                "Re-ran %(n)d failed tasks as new tasks: %(ids)s.", len(failed),
            ) % {"n": len(failed), "ids": short_ids(new_ids)}, messages.SUCCESS)
        if skipped:
            self.message_user(request, ngettext(
                "Skipped %(n)d selected task that is not FAILED.",
                "Skipped %(n)d selected tasks that are not FAILED.", skipped) % {"n": skipped}, messages.WARNING)
        if not failed and not skipped:
            self.message_user(request, "No tasks selected.", messages.WARNING)

    @admin.action(description="Cancel selected ready tasks", permissions=["run"])
    def cancel_ready(self, request: HttpRequest, queryset: QuerySet[TaskRecord]) -> None:
        ready = list(queryset.filter(status=READY).values_list("task_id", flat=True))
        skipped = queryset.count() - len(ready)
        cancelled, late, errors = 0, [], []
        for task_id in ready:
            try:
                status = taskpool.cancel(task_id)
            except TaskpoolError as exc:
                errors.append(f"{task_id}: {exc}")
                continue
            if status == "CANCELLED":
                cancelled += 1
            else:
                late.append(f"{task_id} ({status})")
        self.message_user(request, ngettext("Cancelled %(n)d ready task.", "Cancelled %(n)d ready tasks.", cancelled)
                          % {"n": cancelled}, messages.SUCCESS if cancelled else messages.WARNING)
        if late:
            self.message_user(request, f"Already started or finished before the cancel arrived: {short_ids(late)}",
                              messages.WARNING)
        if errors:
            self.message_user(request, f"Could not cancel: {short_ids(errors)}", messages.ERROR)
        if skipped:
            self.message_user(request, ngettext(
                "Skipped %(n)d selected task that is not READY.",
                "Skipped %(n)d selected tasks that are not READY.", skipped) % {"n": skipped}, messages.WARNING)

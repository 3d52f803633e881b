"""``TaskRecord``: one row per task in the project's own database (the ``django`` store).

The row owns its state names (Django's Tasks framework vocabulary plus CANCELLED);
QuerySet methods are named for states. Status is written only by the recorder
(through django_integration.store); views, the admin and handles read it.
"""

from __future__ import annotations

import datetime as dt

from django.db import models

from taskpool.protocol import CANCELLED, FAILED, READY, RUNNING, SUCCESSFUL

FINAL = (SUCCESSFUL, FAILED, CANCELLED)


class TaskStatus(models.TextChoices):
    READY = READY, "Ready"
    RUNNING = RUNNING, "Running"
    SUCCESSFUL = SUCCESSFUL, "Successful"
    FAILED = FAILED, "Failed"
    CANCELLED = CANCELLED, "Cancelled"


class TaskRecordQuerySet(models.QuerySet):
    def ready(self) -> TaskRecordQuerySet:
        return self.filter(status=READY)

    def running(self) -> TaskRecordQuerySet:
        return self.filter(status=RUNNING)

    def finished(self) -> TaskRecordQuerySet:
        return self.filter(status__in=FINAL)

    def failed(self) -> TaskRecordQuerySet:
        return self.filter(status=FAILED)

    def due(self, horizon: float) -> TaskRecordQuerySet:
        moment = dt.datetime.fromtimestamp(horizon, tz=dt.UTC)
        return self.ready().filter(models.Q(run_after__isnull=True) | models.Q(run_after__lte=moment))


class TaskRecord(models.Model):
    task_id = models.CharField(max_length=64, primary_key=True)
    name = models.CharField(max_length=200, db_index=True)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    queue = models.CharField(max_length=100, default="default", db_index=True)
    priority = models.IntegerField(default=0)
    run_after = models.DateTimeField(null=True, blank=True)
    timeout = models.FloatField(null=True, blank=True)
    max_attempts = models.PositiveIntegerField(default=3)
    status = models.CharField(max_length=10, choices=TaskStatus.choices, default=READY, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    enqueued_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_attempted_at = models.DateTimeField(null=True, blank=True)
    worker_ids = models.JSONField(default=list, blank=True)
    progress = models.FloatField(null=True, blank=True)
    progress_message = models.TextField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    errors = models.JSONField(default=list, blank=True)
    held_by = models.CharField(max_length=64, null=True, blank=True, db_index=True)

    objects = TaskRecordQuerySet.as_manager()

    class Meta:
        ordering = ["-enqueued_at"]
        indexes = [models.Index(fields=["status", "held_by", "-priority", "enqueued_at"], name="taskpool_ready_idx")]
        verbose_name = "task"

    def __str__(self) -> str:
        return f"{self.name} {self.task_id} {self.status}"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL

    @property
    def last_error(self) -> dict | None:
        return self.errors[-1] if self.errors else None


class SupervisorHeartbeat(models.Model):
    supervisor_id = models.CharField(max_length=64, primary_key=True)
    host = models.CharField(max_length=255)
    pid = models.IntegerField()
    started_at = models.FloatField()
    heartbeat_at = models.FloatField()

    class Meta:
        verbose_name = "supervisor heartbeat"

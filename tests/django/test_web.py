"""The web side: health and task endpoints, the progress widget, the admin, the example project."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders
from django.template import Context, Template
from django.urls import reverse
from django_site.testapp import tasks
from helpers import ROOT, wait_until

import taskpool
from django_integration import views
from django_integration.models import TaskRecord
from taskpool.protocol import Stats

CHANGELIST = "/admin/taskpool/taskrecord/"


def task_url(task_id: str) -> str:
    return reverse("taskpool-task", kwargs={"task_id": task_id})


def get_task(client, task_id: str) -> dict:
    response = client.get(task_url(task_id))
    assert response.status_code == 200, response.content
    assert response["Cache-Control"].startswith("max-age=0") and "no-store" in response["Cache-Control"]
    return response.json()


def make_record(**fields) -> TaskRecord:
    values = {"task_id": uuid.uuid4().hex, "name": tasks.add.name, "args": [2, 3], "kwargs": {},
              "status": "SUCCESSFUL", "enqueued_at": dt.datetime.now(dt.UTC), **fields}
    return TaskRecord.objects.create(**values)


@pytest.fixture
def hung_socket(taskpool_settings, django_spool):
    """Something listening on the supervisor's socket that never answers."""
    django_spool.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(django_spool / "taskpool.sock"))
    sock.listen(16)
    try:
        yield sock
    finally:
        sock.close()


# -- health ---------------------------------------------------------------------------------


def test_health_is_200_with_the_supervisors_stats_and_worker_figures(django_supervisor, client):
    response = client.get(reverse("taskpool-health"))
    assert response.status_code == 200, response.content
    assert "no-store" in response["Cache-Control"]
    body = response.json()
    assert body["healthy"] is True and body["problems"] == []
    assert body["socket"] == django_supervisor.socket
    stats = body["stats"]
    for key in ("pid", "uptime", "generation", "phase", "workers", "queue", "counters", "recorder", "target_workers"):
        assert key in stats, key
    assert stats["pid"] == django_supervisor.pid and stats["phase"] == "running"
    assert len(stats["workers"]) == 2
    for worker in stats["workers"]:
        assert worker["state"] in ("idle", "busy")
        assert worker["rss"] > 1_000_000 and isinstance(worker["cpu_percent"], float)
    assert set(stats["recorder"]) >= {"pid", "lag", "pending", "in_flight", "restarts"}
    assert stats["recorder"]["pid"] is not None


def test_health_is_503_when_no_supervisor_listens(taskpool_settings, django_spool, client):
    response = client.get(reverse("taskpool-health"))
    assert response.status_code == 503
    body = response.json()
    assert body["healthy"] is False and body["stats"] is None
    assert len(body["problems"]) == 1
    assert body["problems"][0].startswith("supervisor unreachable: no supervisor is listening on")
    assert str(django_spool / "taskpool.sock") in body["problems"][0]


def test_health_gives_up_after_its_short_timeout(hung_socket, client):
    started = time.monotonic()
    response = client.get(reverse("taskpool-health"))
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert "did not answer the handshake" in response.json()["problems"][0]
    assert 0.9 <= elapsed < 3.0


def test_health_is_503_when_the_recorder_is_stuck(django_supervisor, client, settings, tmp_path):
    settings.TASKPOOL_HEALTH_MAX_RECORDER_LAG = 0.5
    recorder_pid = django_supervisor.stats()["recorder"]["pid"]
    gate = tmp_path / "gate"
    # submitted before the recorder stops: a recorder stopped inside one of its transactions
    # holds SQLite's write lock, and an insert from this process would wait for it
    handle = taskpool.submit(tasks.wait_for_file, str(gate))
    wait_until(lambda: handle.status == "RUNNING", timeout=15, message="the task running")
    os.kill(recorder_pid, 19)  # SIGSTOP: batches go out and are never acknowledged
    try:
        gate.touch()
        assert handle.result(timeout=15) == "released"  # the supervisor still runs tasks

        def stuck():
            response = client.get(reverse("taskpool-health"))
            return response if response.status_code == 503 else None

        body = wait_until(stuck, timeout=15, message="health to report the stuck recorder").json()
        assert body["healthy"] is False
        assert any(p.startswith("recorder stuck") for p in body["problems"])  # a batch or a sweep never answered
        assert body["stats"]["recorder"]["in_flight"] >= 1
    finally:
        os.kill(recorder_pid, 18)  # SIGCONT
    wait_until(lambda: client.get(reverse("taskpool-health")).status_code == 200, timeout=15, message="recovery")
    wait_until(lambda: TaskRecord.objects.filter(pk=handle.id, status="SUCCESSFUL").exists(), timeout=15)


def crafted_stats(**changes) -> dict:
    stats = {
        "pid": 10, "supervisor_id": "s1", "phase": "running", "target_workers": 2, "uptime": 100.0,
        "workers": [{"wid": 1, "pid": 11, "state": "idle", "rss": 1, "cpu_percent": 0.0},
                    {"wid": 2, "pid": 12, "state": "busy", "rss": 1, "cpu_percent": 0.0}],
        "recorder": {"pid": 13, "lag": 0.0, "pending": 0, "in_flight": 0, "restarts": 0},
    }
    stats.update(changes)
    return stats


def test_health_judgement_on_crafted_stats():
    judge = views.health_problems
    assert judge(crafted_stats()) == []
    assert judge(crafted_stats(recorder=None)) == []  # the memory store has no recorder
    assert judge(None, "no supervisor is listening on /x") == ["supervisor unreachable: no supervisor is listening on /x"]

    booting = crafted_stats(workers=[{"state": "booting"}, {"state": "killed"}])
    assert judge(booting) == ["no live worker: 0 of 2 idle or busy (states: booting, killed; target 2)"]
    assert judge(crafted_stats(workers=[]))[0].startswith("no live worker: 0 of 0")
    assert judge(crafted_stats(workers=[{"state": "retiring"}, {"state": "busy"}])) == []

    assert judge(crafted_stats(phase="stopping")) == ["supervisor is stopping, not running"]

    lagging = crafted_stats(recorder={"pid": 13, "lag": 45.0, "pending": 7, "in_flight": 500, "restarts": 0})
    assert judge(lagging) == ["recorder stuck: its oldest unwritten batch has waited 45.0s (limit 30s); "
                              "7 task state(s) pending"]
    assert judge(lagging, max_recorder_lag=60) == []

    down = crafted_stats(recorder={"pid": None, "lag": 0.0, "pending": 3, "in_flight": 0, "restarts": 4})
    assert judge(down, recorder_down_for=5) == []  # being respawned: not yet a problem
    assert judge(down, recorder_down_for=31) == ["recorder down: no recorder process for 31s (limit 30s; 4 restart(s))"]


def test_recorder_watch_measures_how_long_the_recorder_has_been_gone():
    watch = views.RecorderWatch()
    down = crafted_stats(recorder={"pid": None, "lag": 0.0})
    assert watch.down_for(down, 100.0) == 0.0
    assert watch.down_for(down, 140.0) == 40.0
    other = crafted_stats(pid=99, supervisor_id="s2", recorder={"pid": None, "lag": 0.0})
    assert watch.down_for(other, 140.0) == 0.0  # another supervisor: its own clock
    assert watch.down_for(crafted_stats(), 150.0) == 0.0  # a recorder again
    assert watch.down_for(down, 160.0) == 0.0  # gone again: counting starts over


def test_health_view_reports_no_live_worker_from_the_supervisors_stats(monkeypatch, client):
    class FakeClient:
        def request(self, msg):
            return Stats(crafted_stats(workers=[{"wid": 1, "pid": 5, "state": "booting", "rss": 0, "cpu_percent": 0.0}]))

    monkeypatch.setattr(views, "short_client", lambda timeout: FakeClient())
    response = client.get(reverse("taskpool-health"))
    assert response.status_code == 503
    assert response.json()["problems"] == ["no live worker: 0 of 1 idle or busy (states: booting; target 2)"]


def test_health_access_can_be_restricted_to_staff(taskpool_settings, client, admin_client, settings):
    settings.TASKPOOL_HEALTH_ACCESS = "staff"
    assert client.get(reverse("taskpool-health")).status_code == 403
    assert admin_client.get(reverse("taskpool-health")).status_code == 503  # allowed; nothing is running


# -- the task endpoint --------------------------------------------------------------------


def test_task_endpoint_follows_a_task_from_ready_through_running_to_successful(django_supervisor, client):
    waiting = tasks.add.using(delay=60).submit(1, 2)
    body = get_task(client, waiting.id)
    assert body == {"id": waiting.id, "name": tasks.add.name, "status": "READY", "final": False, "progress": None,
                    "progress_message": None, "attempts": 0, "result": None, "error": None}

    handle = taskpool.submit(tasks.report, 40, 0.05)

    def running_with_progress():
        data = get_task(client, handle.id)
        return data if data["status"] == "RUNNING" and (data["progress"] or 0) > 0 else None

    running = wait_until(running_with_progress, timeout=15, message="RUNNING with progress")
    assert running["final"] is False and running["attempts"] == 1 and running["result"] is None
    assert running["progress_message"].startswith("step ") and running["progress_message"].endswith(" of 40")

    assert handle.result(timeout=15) == {"steps": 40}
    done = get_task(client, handle.id)
    assert done["status"] == "SUCCESSFUL" and done["final"] is True
    assert done["result"] == {"steps": 40} and done["progress"] == 100.0 and done["error"] is None


def test_task_endpoint_shows_the_last_error_of_a_failed_task(django_supervisor, client):
    handle = taskpool.submit(tasks.add, 1, "x")
    with pytest.raises(taskpool.TaskFailed):
        handle.result(timeout=15)
    body = get_task(client, handle.id)
    assert body["status"] == "FAILED" and body["final"] is True and body["result"] is None
    assert body["error"]["type"] == "builtins.TypeError"
    assert "unsupported operand" in body["error"]["message"]
    assert "traceback" not in body["error"]  # tracebacks are for the admin


def test_task_endpoint_is_404_for_unknown_or_malformed_ids(django_supervisor, client):
    for task_id in (uuid.uuid4().hex, "x" * 65, "not.an.id"):
        response = client.get(f"/taskpool/tasks/{task_id}/")
        assert response.status_code == 404, task_id
        assert response.json()["error"] == "no such task"


def test_task_endpoint_reads_the_table_when_no_supervisor_is_up(taskpool_settings, db, client):
    record = make_record(status="FAILED", attempts=3, errors=[
        {"type": "builtins.OSError", "message": "disk full", "traceback": "Traceback..."},
        {"type": "builtins.ValueError", "message": "bad row 7", "traceback": "Traceback..."},
    ])
    body = get_task(client, record.task_id)
    assert body["status"] == "FAILED" and body["attempts"] == 3
    assert body["error"] == {"type": "builtins.ValueError", "message": "bad row 7"}
    assert client.get(task_url(uuid.uuid4().hex)).status_code == 404  # no supervisor, no row


def test_task_endpoint_does_not_wait_long_for_a_hung_supervisor(hung_socket, db, client):
    record = make_record(result=5, progress=100.0)
    started = time.monotonic()
    body = get_task(client, record.task_id)
    assert time.monotonic() - started < 3.0
    assert body["status"] == "SUCCESSFUL" and body["result"] == 5


def test_task_endpoint_access_setting(taskpool_settings, db, client, admin_client, django_user_model, settings):
    record = make_record(result=5)
    assert client.get(task_url(record.task_id)).status_code == 200  # default: the id is the permission
    settings.TASKPOOL_TASK_ACCESS = "login"
    assert client.get(task_url(record.task_id)).status_code == 403
    user = django_user_model.objects.create_user("someone", password="pw")
    client.force_login(user)
    assert client.get(task_url(record.task_id)).status_code == 200
    settings.TASKPOOL_TASK_ACCESS = "staff"
    response = client.get(task_url(record.task_id))
    assert response.status_code == 403 and response.json() == {"error": "only staff users may see this"}
    assert admin_client.get(task_url(record.task_id)).json()["result"] == 5


# -- the progress widget ------------------------------------------------------------------


def test_progress_tag_renders_an_accessible_widget_polling_the_status_url():
    task_id = uuid.uuid4().hex
    other = uuid.uuid4().hex
    html = Template("{% load taskpool %}{% taskpool_progress a %}{% taskpool_progress b label='Export' %}").render(
        Context({"a": task_id, "b": other}))
    assert html.count('class="taskpool-progress"') == 2
    assert f'data-taskpool-task="{task_id}" data-status-url="/taskpool/tasks/{task_id}/"' in html
    assert f'data-status-url="/taskpool/tasks/{other}/"' in html
    assert html.count('<progress class="taskpool-progress-bar" max="100"') == 2
    assert html.count('role="status" aria-live="polite"') == 2
    assert html.count('role="alert"') == 2
    assert 'role="group"' in html and ">Export</div>" in html and ">Task progress</div>" in html
    assert html.count('<script src="/static/taskpool/progress.js" defer></script>') == 2
    widget_ids = [part.split('"')[0] for part in html.split('class="taskpool-progress" id="')[1:]]
    assert len(set(widget_ids)) == 2  # several widgets on one page do not share element ids
    for widget_id in widget_ids:
        assert f'aria-labelledby="{widget_id}-label"' in html and f'aria-describedby="{widget_id}-status"' in html


def test_progress_tag_accepts_a_handle_and_its_script_is_a_static_file():
    handle = taskpool.TaskHandle("abc123")
    html = Template("{% load taskpool %}{% taskpool_progress h %}").render(Context({"h": handle}))
    assert 'data-status-url="/taskpool/tasks/abc123/"' in html
    script = finders.find("taskpool/progress.js")
    assert script is not None
    source = Path(script).read_text()
    assert "data-taskpool-task" in source and "taskpool:final" in source and "fetch(" in source


# -- the admin ----------------------------------------------------------------------------


def test_admin_changelist_filters_and_search(taskpool_settings, db, admin_client):
    failed = make_record(name="reports.build", status="FAILED", queue="slow")
    done = make_record(name="mail.send", status="SUCCESSFUL", queue="default", progress=100.0)
    ready = make_record(name="mail.send", status="READY", queue="slow")

    def ids(query: str = "") -> set[str]:
        response = admin_client.get(CHANGELIST + query)
        assert response.status_code == 200, response.content
        return {r.pk for r in response.context["cl"].result_list}

    assert ids() == {failed.pk, done.pk, ready.pk}
    page = admin_client.get(CHANGELIST).content.decode()
    for column in ("column-task_id", "column-name", "column-status", "column-progress_display", "column-attempts",
                   "column-queue", "column-enqueued_at", "column-finished_at"):
        assert column in page, column
    assert "100%" in page
    assert ids("?status__exact=FAILED") == {failed.pk}
    assert ids("?name=mail.send") == {done.pk, ready.pk}
    assert ids("?queue=slow") == {failed.pk, ready.pk}
    assert ids("?queue=slow&status__exact=READY") == {ready.pk}
    assert ids(f"?q={ready.pk[:10]}") == {ready.pk}
    assert ids("?q=reports") == {failed.pk}
    assert admin_client.get(CHANGELIST + "add/").status_code == 403


def test_admin_detail_is_read_only_and_shows_args_result_and_tracebacks(django_supervisor, admin_client):
    handle = taskpool.submit(tasks.add, 1, "x")
    record = wait_until(lambda: TaskRecord.objects.filter(pk=handle.id, status="FAILED").first(), timeout=15,
                        message="the FAILED row")
    page = admin_client.get(f"{CHANGELIST}{record.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert page.context["adminform"].form.fields == {}  # every field read-only
    assert 'name="_save"' not in html and 'class="closelink"' in html and 'class="deletelink"' in html
    assert '<pre class="taskpool-json">[\n  1,\n  &quot;x&quot;\n]</pre>' in html
    assert "Attempt 1: builtins.TypeError" in html
    traceback = record.errors[-1]["traceback"]
    assert traceback.startswith("Traceback (most recent call last)")
    assert "<pre>Traceback (most recent call last)" in html and "TypeError: unsupported operand" in html

    done = make_record(result={"url": "/r/1.pdf", "pages": 3})
    html = admin_client.get(f"{CHANGELIST}{done.pk}/change/").content.decode()
    assert "&quot;pages&quot;: 3" in html and "&quot;url&quot;: &quot;/r/1.pdf&quot;" in html

    assert admin_client.post(f"{CHANGELIST}{done.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not TaskRecord.objects.filter(pk=done.pk).exists()


def run_action(admin_client, action: str, ids: list[str]) -> list[str]:
    response = admin_client.post(CHANGELIST, {"action": action, "_selected_action": ids, "index": 0}, follow=True)
    assert response.status_code == 200
    return [str(m) for m in response.context["messages"]]


def test_admin_rerun_failed_tasks_submits_new_tasks_that_run(django_supervisor, admin_client):
    failed = make_record(status="FAILED", args=[20, 22], attempts=3, errors=[
        {"type": "builtins.ConnectionError", "message": "database went away", "traceback": "Traceback..."}])
    ok = make_record(result=5)
    messages = run_action(admin_client, "rerun_failed", [failed.pk, ok.pk])
    rerun = TaskRecord.objects.exclude(pk__in=[failed.pk, ok.pk]).get()
    assert messages == [f"Re-ran 1 failed task as a new task: {rerun.pk}.",
                        "Skipped 1 selected task that is not FAILED."]
    assert (rerun.name, rerun.args, rerun.kwargs) == (tasks.add.name, [20, 22], {})
    assert taskpool.get(rerun.pk).result(timeout=15) == 42
    wait_until(lambda: TaskRecord.objects.filter(pk=rerun.pk, status="SUCCESSFUL", result=42).exists(), timeout=15)
    assert TaskRecord.objects.get(pk=failed.pk).status == "FAILED"  # the old row is left as it was


def test_admin_cancel_ready_tasks(django_supervisor, admin_client):
    waiting = tasks.add.using(delay=60).submit(1, 2)
    done = taskpool.submit(tasks.add, 2, 2)
    assert done.result(timeout=15) == 4
    wait_until(lambda: TaskRecord.objects.filter(pk=done.id, status="SUCCESSFUL").exists(), timeout=15)
    assert TaskRecord.objects.get(pk=waiting.id).status == "READY"
    messages = run_action(admin_client, "cancel_ready", [waiting.id, done.id])
    assert messages == ["Cancelled 1 ready task.", "Skipped 1 selected task that is not READY."]
    assert waiting.status == "CANCELLED"
    wait_until(lambda: TaskRecord.objects.filter(pk=waiting.id, status="CANCELLED").exists(), timeout=15,
               message="the CANCELLED row")
    assert django_supervisor.stats()["counters"]["cancelled"] == 1


def test_admin_actions_need_the_change_permission(taskpool_settings, db, client, django_user_model):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_taskrecord"))
    client.force_login(viewer)
    record = make_record(status="FAILED")
    response = client.get(CHANGELIST)
    assert response.status_code == 200
    assert "rerun_failed" not in response.content.decode()
    assert client.get(f"{CHANGELIST}{record.pk}/change/").status_code == 200
    assert client.post(f"{CHANGELIST}{record.pk}/delete/", {"post": "yes"}).status_code == 403


# -- the example project --------------------------------------------------------------------


def test_example_project_passes_manage_py_check(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TASKPOOL_"))}
    env["TASKPOOL_EXAMPLE_DIR"] = str(tmp_path)
    proc = subprocess.run([sys.executable, str(ROOT / "example" / "manage.py"), "check", "--fail-level", "WARNING"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "System check identified no issues" in proc.stdout


def test_health_judges_a_recorder_stuck_in_a_sweep_or_reported_down_by_the_supervisor():
    from django_integration.views import health_problems

    base = {"phase": "running", "workers": [{"state": "idle"}], "target_workers": 1}
    sweeping = {**base, "recorder": {"pid": 7, "lag": 0.0, "last_pull_age": 45.0, "down_for": 0.0}}
    assert any("sweep" in p for p in health_problems(sweeping))
    down = {**base, "recorder": {"pid": None, "lag": 0.0, "last_pull_age": None, "down_for": 31.0}}
    assert any("recorder down" in p for p in health_problems(down))
    fine = {**base, "recorder": {"pid": 7, "lag": 0.5, "last_pull_age": 0.1, "down_for": 0.0}}
    assert health_problems(fine) == []

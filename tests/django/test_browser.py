"""The example site for real: scripts/demo (supervisor + runserver), a headless Chromium, Ctrl-C.

scripts/demo runs with TASKPOOL_DEMO_PYTHON (this interpreter, no virtualenv), a free
PORT and a temporary TASKPOOL_EXAMPLE_DIR (database, spool, logs, reports). The browser
test needs Debian's chromium and chromium-driver (apt-get install chromium
chromium-driver) and the selenium package; it is skipped, saying so, without them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import psutil
import pytest
from helpers import ROOT, pid_gone, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class DemoSite:
    """./scripts/demo in its own session, output in a file; every descendant pid remembered."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output_path = workdir / "demo-output.txt"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TASKPOOL_"))}
        env.update(PORT=str(self.port), TASKPOOL_EXAMPLE_DIR=str(workdir / "site"), TASKPOOL_DEMO_PYTHON=sys.executable)
        self.output = open(self.output_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "demo")], stdout=self.output,
                                     stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True)
        self.pids: set[int] = {self.proc.pid}

    def text(self) -> str:
        self.output.flush()
        return self.output_path.read_text()

    def remember_pids(self) -> None:
        try:
            self.pids.update(p.pid for p in psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass

    def wait_started(self, timeout: float = 90.0) -> None:
        def started() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"scripts/demo exited with {self.proc.returncode}:\n{self.text()}")
            self.remember_pids()
            return "Press Ctrl-C to stop." in self.text()

        wait_until(started, timeout, "scripts/demo to print its URL")
        self.remember_pids()

    def interrupt(self, timeout: float = 60.0) -> int:
        """Ctrl-C, as a terminal sends it to the script."""
        self.remember_pids()
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Clean up whatever is left, by pid."""
        self.remember_pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in self.pids:
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    proc.kill()
            except psutil.NoSuchProcess:
                pass
        self.output.close()


@pytest.fixture
def demo_site(tmp_path_factory):
    site = DemoSite(tmp_path_factory.mktemp("demo"))
    try:
        site.wait_started()
        yield site
    finally:
        site.stop()


def test_demo_script_serves_the_example_and_stops_cleanly_on_ctrl_c(demo_site):
    output = demo_site.text()
    assert "admin user: created admin with password admin" in output
    assert f"taskpool example is running at {demo_site.url}/" in output
    status, body = fetch(f"{demo_site.url}/taskpool/health/")
    assert status == 200
    health = json.loads(body)
    assert health["healthy"] is True and len(health["stats"]["workers"]) == 2
    assert health["stats"]["known_tasks"] == ["reports.tasks.build_report"]
    assert health["stats"]["socket"] == str(demo_site.dir / "site" / "spool" / "taskpool.sock")
    status, page = fetch(f"{demo_site.url}/")
    assert status == 200 and 'name="pages"' in page and "/admin/" in page and "/taskpool/health/" in page
    assert (demo_site.dir / "site" / "db.sqlite3").exists()
    pids = set(demo_site.pids) | {health["stats"]["pid"], *(w["pid"] for w in health["stats"]["workers"])}
    assert len(pids) >= 6  # bash, supervisor, 2 workers, recorder, runserver (and its reloader child)

    assert demo_site.interrupt() == 0
    assert "stopping the web server and the supervisor" in demo_site.text()
    assert demo_site.text().rstrip().endswith("stopped")
    for pid in pids:
        assert pid_gone(pid), f"pid {pid} outlived scripts/demo"
    assert "stopped" in (demo_site.dir / "site" / "logs" / "supervisor.log").read_text()


def browser_missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} is missing: apt-get install {package}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return 'selenium is not installed: pip install -e ".[test]"'
    return None


@pytest.fixture
def browser():
    reason = browser_missing()
    if reason:
        pytest.skip(f"no headless browser: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="taskpool-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER)  # an explicit driver: selenium-manager downloads nothing
    driver = webdriver.Chrome(service=service, options=options)
    driver_pid = service.process.pid if service.process else None
    try:
        yield driver
    finally:
        driver.quit()
        if driver_pid is not None:
            wait_until(lambda: pid_gone(driver_pid), 10, "chromedriver to exit")
        shutil.rmtree(profile, ignore_errors=True)


def test_browser_submits_a_report_and_watches_it_reach_100_percent(browser, demo_site):
    from selenium.webdriver.common.by import By

    browser.get(f"{demo_site.url}/")
    pages = browser.find_element(By.NAME, "pages")
    pages.clear()
    pages.send_keys("6")
    report_id = browser.find_element(By.NAME, "report_id")
    report_id.clear()
    report_id.send_keys("42")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    wait_until(lambda: "/reports/" in browser.current_url, 15, "the redirect to the report page")
    task_id = browser.current_url.rstrip("/").rsplit("/", 1)[1]
    widget = browser.find_element(By.CSS_SELECTOR, ".taskpool-progress")
    assert widget.get_attribute("data-taskpool-task") == task_id
    assert browser.find_element(By.CSS_SELECTOR, ".taskpool-progress-status").get_attribute("aria-live") == "polite"

    seen: list[str] = []

    def finished() -> bool:
        status = widget.get_attribute("data-status")
        if status and (not seen or seen[-1] != status):
            seen.append(status)
        return status in ("SUCCESSFUL", "FAILED", "CANCELLED", "UNKNOWN")

    wait_until(finished, 60, "the widget to show a final status")
    assert seen[-1] == "SUCCESSFUL", (seen, browser.find_element(By.CSS_SELECTOR, ".taskpool-progress-status").text)
    assert "RUNNING" in seen  # the bar moved through the running state on its way
    bar = browser.find_element(By.CSS_SELECTOR, "progress")
    assert bar.get_property("value") == 100
    assert browser.find_element(By.CSS_SELECTOR, ".taskpool-progress-percent").text == "100%"
    assert browser.find_element(By.CSS_SELECTOR, ".taskpool-progress-status").text == "Finished"

    result = browser.find_element(By.CSS_SELECTOR, ".taskpool-progress-result")
    assert result.is_displayed()
    assert json.loads(result.text) == {"url": "/media/reports/report-42.txt", "pages": 6}
    assert not browser.find_element(By.CSS_SELECTOR, ".taskpool-progress-error").is_displayed()
    link = browser.find_element(By.ID, "report-link")
    assert link.is_displayed()
    status, report = fetch(link.get_attribute("href"))
    assert status == 200 and report.splitlines()[-1] == "Report 42, page 6 of 6"

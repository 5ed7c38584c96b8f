"""The real-portal fixture itself: start, stop, reset, queue, runstatus, settings, and the
leftovers check seeing a portal left running."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest
import requests

from testing.real_portal.leftovers import leftovers
from testing.real_portal.portal import RealPortal

pytestmark = [pytest.mark.real_portal, pytest.mark.timeout(900)]


def pop(portal: RealPortal) -> dict:
    answer = requests.get(portal.url + "/pop_queue", auth=portal.auth, timeout=30)
    assert answer.status_code == 200, answer.text[:300]
    return answer.json()


def test_queued_jobs_pop_oldest_first_and_their_states_are_read(real_portal):
    jobs = real_portal.queue("job-a", "job-b")
    assert [j.url for j in jobs] == [f"{real_portal.url}/job-a", f"{real_portal.url}/job-b"]
    assert real_portal.status() == {"scenario-1": "queued", "job-a": "queued", "job-b": "queued"}
    assert pop(real_portal)["id"] == "scenario-1"
    assert pop(real_portal)["id"] == "job-a"
    assert real_portal.status() == {"scenario-1": "running", "job-a": "running", "job-b": "queued"}


def test_reset_brings_back_the_fresh_database(real_portal):
    real_portal.queue("job-a")
    pop(real_portal)
    with pytest.raises(RuntimeError, match="running"):
        real_portal.reset()
    real_portal.stop()
    real_portal.reset().start()
    assert real_portal.status() == {"scenario-1": "queued"}


def test_settings_shape_each_pop_and_unset_they_answer_500(real_portal):
    real_portal.set_settings("svn co file:///srv/svn/{id}/trunk", "run --config {url}/config")
    job = pop(real_portal)
    assert job["repository"] == "svn co file:///srv/svn/scenario-1/trunk"
    assert job["cmdline"] == f"run --config {real_portal.url}/scenario-1/config"
    real_portal.queue("job-a")
    real_portal.set_settings(None, None)
    answer = requests.get(real_portal.url + "/pop_queue", auth=real_portal.auth, timeout=30)
    assert answer.status_code == 500
    assert "AttributeError" in answer.text
    assert real_portal.status()["job-a"] == "queued"


def test_the_server_runs_as_plone_in_the_chroot_and_stop_ends_it(real_portal):
    pid = real_portal.pid()
    assert pid is not None
    proc = psutil.Process(pid)
    assert os.readlink(f"/proc/{pid}/root") == str(real_portal.build.root)
    assert proc.uids().effective != 0  # Zope dropped to the chroot's `plone`
    assert any(f"process {pid} " in line for line in leftovers())
    real_portal.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not any(f"process {pid} " in line for line in leftovers())


def test_cli_starts_reports_and_stops_a_portal(real_portal_build, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    cli = [sys.executable, "-m", "testing.real_portal"]
    portal = RealPortal(real_portal_build)  # a free port, used by the CLI below
    port = ["--port", str(portal.port)]
    try:
        out = subprocess.run(
            [*cli, "start", *port], env=env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == portal.url
        queued = subprocess.run(
            [*cli, "queue", *port, "job-x"], env=env, capture_output=True, text=True, timeout=60
        )
        assert queued.stdout.strip() == f"{portal.url}/job-x", queued.stderr
        status = subprocess.run(
            [*cli, "status", *port], env=env, capture_output=True, text=True, timeout=60
        )
        assert '"job-x": "queued"' in status.stdout, status.stderr
        pid = portal.pid()
        assert pid is not None
        stop = subprocess.run([*cli, "stop", *port], env=env, timeout=120)
        assert stop.returncode == 0
        assert portal.pid() is None
    finally:
        portal.close()

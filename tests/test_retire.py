"""`leampoll retire` against real pollers under a real supervisord on this machine.

The final action is a harmless command (touching a file) here; the sandbox
host tests (tests/test_cloud_hosts.py) power a whole host off.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from testing.outcomes import job_state, report_kinds, wait_job_state
from testing.portal_standin import PortalStandin
from testing.supervisord import Supervisord
from tests.conftest import LEAMPOLL, PASSWORD, USER, sh, wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def portals():
    with PortalStandin(USER, PASSWORD) as a, PortalStandin(USER, PASSWORD) as b:
        yield a, b


@pytest.fixture
def fleet(tmp_path, portals, env):
    """Two pollers (projects a and b, each its own portal) under one supervisord."""
    a, b = portals
    (tmp_path / "sup").mkdir()
    sup = Supervisord(
        tmp_path / "sup",
        {"a": (a.url, tmp_path / "jobs" / "a"), "b": (b.url, tmp_path / "jobs" / "b")},
        env,
    )
    with sup:
        yield sup
    for proc in psutil.process_iter(["cwd"]):  # a job a failed test left running
        if (proc.info["cwd"] or "").startswith(str(tmp_path / "jobs")):
            proc.kill()


class Retire:
    """A `leampoll retire` process, its output in a file."""

    def __init__(self, sup: Supervisord, env: dict, log: Path, *args: str) -> None:
        self.log_path = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [*LEAMPOLL, "retire", "--poll", "0.2", *args],
                env=sup.env(env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait(self, timeout: float = 90) -> int:
        return self.proc.wait(timeout)


def idle_for(workdir: Path) -> float:
    """Seconds the poller's status.json says its queue has been found empty."""
    try:
        since = json.loads((workdir / ".leampoll" / "status.json").read_text())["idle_since"]
    except (OSError, ValueError, KeyError):
        return 0.0
    return time.time() - since if since else 0.0


def run_retire(sup, env, tmp_path, *args) -> tuple[int, str]:
    r = Retire(sup, env, tmp_path / "retire.log", *args)
    return r.wait(), r.log


def test_retire_lets_the_running_job_finish_pops_nothing_then_acts(fleet, portals, env, tmp_path):
    a, b = portals
    release, done = tmp_path / "release", tmp_path / "powered-off"
    a.queue("long", sh(f"touch started; while [ ! -e {release} ]; do sleep 0.1; done"))
    a.queue("next", "true")
    b.queue("next-b", "true")
    wait_until((tmp_path / "jobs" / "a" / "long" / "started").exists, what="job start")
    wait_job_state(b, "next-b", "success")

    r = Retire(fleet, env, tmp_path / "retire.log", "--timeout", "120", "--action", f"touch {done}")
    wait_until(
        lambda: "draining leampoll-a" in r.log and "draining leampoll-b" in r.log,
        what="retire draining",
    )
    wait_until(lambda: fleet.states()["leampoll-b"] == "EXITED", what="idle b exited")
    assert r.proc.poll() is None and not done.exists()  # waits for a's job
    assert fleet.states()["leampoll-a"] == "RUNNING"

    release.touch()
    assert r.wait() == 0, r.log
    assert done.exists()
    assert job_state(a, "long") == "success"
    assert job_state(a, "next") == "queued"  # waiting behind "long": never popped
    assert report_kinds(a, "long") == ["success"] and report_kinds(a, "next") == []
    assert fleet.states() == {"leampoll-a": "EXITED", "leampoll-b": "EXITED"}
    assert "a: last job long success" in r.log


def test_retire_requeues_a_job_that_outlasts_the_bound_then_acts(fleet, portals, env, tmp_path):
    a, _ = portals
    done = tmp_path / "powered-off"
    a.queue("endless", sh("echo $$ > job.pid; sleep 600"))
    pidfile = tmp_path / "jobs" / "a" / "endless" / "job.pid"
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), what="job start")
    job_pid = int(pidfile.read_text())

    rc, log = run_retire(fleet, env, tmp_path, "--timeout", "1", "--action", f"touch {done}")
    assert rc == 0, log
    assert "leampoll-a still busy after 1s" in log
    assert job_state(a, "endless") == "queued"  # handed back
    assert report_kinds(a, "endless") == ["requeue"]
    assert not psutil.pid_exists(job_pid)
    assert done.exists()
    assert fleet.states() == {"leampoll-a": "STOPPED", "leampoll-b": "EXITED"}


def test_retire_keeps_the_host_when_a_report_is_not_delivered(fleet, portals, env, tmp_path):
    a, _ = portals
    release, done = tmp_path / "release", tmp_path / "powered-off"
    a.queue("long", sh(f"touch started; while [ ! -e {release} ]; do sleep 0.1; done"))
    wait_until((tmp_path / "jobs" / "a" / "long" / "started").exists, what="job start")
    a.report_status = 503
    r = Retire(fleet, env, tmp_path / "retire.log", "--timeout", "60", "--action", f"touch {done}")
    wait_until(lambda: "draining leampoll-a" in r.log, what="retire draining")
    release.touch()
    assert r.wait() == 1
    assert "1 report(s) NOT delivered" in r.log and "no final action" in r.log
    assert not done.exists()


def test_idle_retire_acts_on_an_idle_host(fleet, env, tmp_path):
    done = tmp_path / "powered-off"
    rc, log = run_retire(
        fleet, env, tmp_path, "--when-idle", "1", "--watch", "0.2", "--action", f"touch {done}"
    )
    assert rc == 0, log
    assert "every poller idle for 1s" in log and done.exists()
    assert fleet.states() == {"leampoll-a": "EXITED", "leampoll-b": "EXITED"}


def test_idle_retire_leaves_a_busy_host_alone(fleet, portals, env, tmp_path):
    a, _ = portals
    done = tmp_path / "powered-off"
    a.queue("long", sh("touch started; sleep 600"))
    wait_until((tmp_path / "jobs" / "a" / "long" / "started").exists, what="job start")
    wait_until(lambda: idle_for(tmp_path / "jobs" / "b") >= 0.5, what="b idle for 0.5s")
    rc, log = run_retire(fleet, env, tmp_path, "--when-idle", "0.5", "--action", f"touch {done}")
    assert rc == 0 and "not idle: a: running job long" in log
    assert not done.exists()
    assert fleet.states() == {"leampoll-a": "RUNNING", "leampoll-b": "RUNNING"}
    assert job_state(a, "long") == "running"


def test_retire_without_supervisor_does_nothing_final(fleet, env, tmp_path):
    done = tmp_path / "powered-off"
    environment = {
        **fleet.env(env),
        "LEAMPOLL_SUPERVISORCTL": f"{fleet.ctl_argv()[0]} -s unix://{tmp_path}/nowhere.sock",
    }
    out = subprocess.run(
        [*LEAMPOLL, "retire", "--action", f"touch {done}"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "Supervisor does not answer" in out.stderr
    assert not done.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--watch", "5"], "--watch needs --when-idle"),
        (["--timeout", "-1"], "--timeout must be positive"),
    ],
)
def test_retire_bad_options(args, needle, env):
    out = subprocess.run(
        [*LEAMPOLL, "retire", *args], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2 and needle in out.stderr


def test_idle_retire_waits_while_a_poller_is_drained(fleet, env, tmp_path):
    done = tmp_path / "powered-off"
    subprocess.run(
        [*fleet.ctl_argv(), "signal", "USR1", "leampoll-b"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    wait_until(lambda: fleet.states()["leampoll-b"] == "EXITED", what="b drained")
    rc, log = run_retire(fleet, env, tmp_path, "--when-idle", "0", "--action", f"touch {done}")
    assert rc == 0 and "b: poller not running (EXITED)" in log
    assert not done.exists() and fleet.states()["leampoll-a"] == "RUNNING"

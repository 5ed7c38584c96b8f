"""Every job in a cgroup of its own on systemd hosts: stopped whole, bounded, measured.

Three sandbox hosts converge with the real `site.yml`, real Supervisor and
real pollers: `cg-a` (Debian 12, systemd 252; the jobs' slice bounded to
450M; `rio` with memory_max 100M and a 20 s job timeout, `lima`, `cusco`),
`cg-b` (Debian 13, systemd 257; `quito`) and `cg-box` (Debian 12 without an
init: process groups). Each job here starts a daemon in a session of its own
that ignores SIGTERM; whatever ends the job, nothing of it may be left.

Nothing here depends on the cgroup version: on this machine's kernel the
hosts run cgroup v1; on a host booting cgroup v2 the same tests hold.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.fleet import Inventory, Stand, leam_project, stand
from testing.marks import sandbox_hosts
from testing.playbook import recap
from testing.portal_standin import PortalStandin
from testing.sandbox import TEST_STATE_DIR, Host
from tests.conftest import wait_until

PASSWORD = "s3cret-for-cgroups"
PROJECTS = {"cg-a": ["rio", "lima", "cusco"], "cg-b": ["quito"], "cg-box": ["bogota"]}
GRACE = 3
MiB = 1 << 20
SLICE_MAX = 450 * MiB

pytestmark = sandbox_hosts(1200)

# leam-test-daemon PIDFILE [SECONDS]: a daemon in a new session that ignores
# TERM (pid in PIDFILE), then the job itself stays SECONDS (or ends at once).
DAEMON = """#!/bin/sh
setsid sh -c 'trap "" TERM; echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; exec sleep 1000' sh "$1" \
  </dev/null >/dev/null 2>&1 &
while [ ! -s "$1" ]; do sleep 0.1; done
if [ -n "$2" ]; then exec sleep "$2"; fi
"""


class Fleet:
    def __init__(self, s: Stand, workdir: Path) -> None:
        self.stand, self.hosts, self.portals = s, s.hosts, s.portals
        self.dir = workdir
        extra = {"rio": {"memory_max": "100M", "tasks_max": 64, "job_timeout": 20}}
        self.inventory = Inventory(
            s.sandbox,
            workdir / "inventory.yml",
            projects={
                host: [
                    leam_project(p, self.portals[p].url, PASSWORD, **extra.get(p, {}))
                    for p in projects
                ]
                for host, projects in PROJECTS.items()
            },
            host_vars={"cg-a": {"leampoll_jobs_memory_max": str(SLICE_MAX)}},
            group_vars={"leampoll_grace": GRACE},
            log_dir=workdir,
        )

    def play(self) -> subprocess.CompletedProcess:
        self.inventory.write()
        return self.inventory.play()

    def host_of(self, project: str) -> Host:
        return next(self.hosts[h] for h, ps in PROJECTS.items() if project in ps)

    def poller_pid(self, project: str) -> int:
        out = self.host_of(project).ssh(f"supervisorctl pid leampoll-{project}").stdout.strip()
        return int(out) if out.isdigit() else 0

    def alive(self, project: str, pidfile: str) -> bool:
        """The daemon a job wrote to pidfile still runs."""
        cmd = f"test -s {pidfile} && kill -0 $(cat {pidfile})"
        return self.host_of(project).ssh(cmd).returncode == 0

    def units(self, project: str) -> str:
        return (
            self.host_of(project)
            .ssh("systemctl list-units --all --plain --no-legend 'leam-job-*' || true")
            .stdout.strip()
        )

    def history(self, project: str) -> list[dict]:
        out = self.host_of(project).ssh(f"cat /mnt/jobdir/{project}/.leampoll/history.jsonl")
        return [json.loads(line) for line in out.stdout.splitlines()]

    def message(self, project: str, job: str) -> str:
        ending = self.portals[project].ending(job)
        return ending.form.get("message", "") if ending else ""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    names = [p for ps in PROJECTS.values() for p in ps]
    with stand(TEST_STATE_DIR, names, PASSWORD) as s:
        s.up(["cg-a", "cg-b"], suites={"cg-b": "trixie"})
        s.up(["cg-box"], init="none")
        f = Fleet(s, tmp_path_factory.mktemp("cgroup-fleet"))
        out = f.play()
        assert out.returncode == 0, out.stdout[-4000:]
        assert all(r["failed"] == 0 for r in recap(out.stdout).values())
        for host in f.hosts.values():
            script = shlex.quote(DAEMON)
            host.ssh(
                f"printf %s {script} > /usr/local/bin/leam-test-daemon && "
                "chmod 755 /usr/local/bin/leam-test-daemon",
                check=True,
            )
        yield f


def daemon_job(portal: PortalStandin, job: str, pidfile: str, stay: int | None = None) -> None:
    portal.queue(job, f"leam-test-daemon {pidfile}" + (f" {stay}" if stay else ""))


def once_job(portal: PortalStandin, job: str, pidfile: str) -> None:
    """Long with its daemon the first time; at once when run again."""
    marker = pidfile + ".ran"
    portal.queue(
        job,
        f"sh -c 'if [ -e {marker} ]; then exit 0; fi; touch {marker}; "
        f"exec leam-test-daemon {pidfile} 900'",
    )


def ended(portal: PortalStandin, job: str, outcome: str | None, timeout: float = 60) -> None:
    """Wait until the job is ended (success or error, not handed back); check how."""
    portal.wait_for(lambda p: p.outcome(job) in ("success", "error"), timeout)
    if outcome is not None:
        assert portal.outcome(job) == outcome, portal.events(job)


def running(fleet: Fleet, project: str, job: str, pidfile: str) -> None:
    fleet.portals[project].wait_for(lambda p: p.status.get(job) == "running", timeout=60)
    wait_until(lambda: fleet.alive(project, pidfile), 30, f"{job}'s daemon running")


def gone(fleet: Fleet, project: str, pidfile: str, timeout: float = GRACE + 30) -> None:
    wait_until(lambda: not fleet.alive(project, pidfile), timeout, f"{pidfile}'s daemon gone")


def expected_mode(host: Host) -> str:
    v2 = host.ssh("test -e /sys/fs/cgroup/cgroup.controllers").returncode == 0
    return "cgroup-v2" if v2 else "cgroup-v1"


@pytest.mark.parametrize("host", ["cg-a", "cg-b", "cg-box"])
def test_status_and_check_say_how_jobs_are_contained(fleet, host):
    h = fleet.hosts[host]
    out = h.ssh("leampoll status").stdout
    if host == "cg-box":
        assert "jobs: process groups (no systemd as PID 1)" in out, out
    else:
        mode = expected_mode(h)
        assert f"jobs: {mode} (systemd " in out and "leam-jobs.slice)" in out, out


@pytest.mark.parametrize("project", ["lima", "quito"])
def test_a_daemon_left_by_a_job_is_gone_after_the_grace(fleet, project):
    pidfile = f"/var/tmp/{project}-left.pid"
    daemon_job(fleet.portals[project], f"{project}-left", pidfile)
    ended(fleet.portals[project], f"{project}-left", "success")
    gone(fleet, project, pidfile)
    assert fleet.portals[project].ended_once(f"{project}-left")
    message = fleet.message(project, f"{project}-left")
    assert "usage: wall" in message and f"({expected_mode(fleet.host_of(project))})" in message
    wait_until(lambda: not fleet.units(project), 30, "no job unit left")


def test_a_timed_out_job_leaves_nothing(fleet):
    pidfile = "/var/tmp/rio-timeout.pid"
    daemon_job(fleet.portals["rio"], "rio-timeout", pidfile, stay=900)
    running(fleet, "rio", "rio-timeout", pidfile)
    ended(fleet.portals["rio"], "rio-timeout", "error", 90)
    assert "timed out" in fleet.message("rio", "rio-timeout")
    gone(fleet, "rio", pidfile, timeout=5)  # gone by the time it is reported
    assert fleet.portals["rio"].ended_once("rio-timeout")
    assert fleet.history("rio")[-1]["ended"] == "timeout"


def test_a_drained_poller_reports_the_job_and_leaves_no_daemon(fleet):
    pidfile = "/var/tmp/quito-drain.pid"
    h = fleet.hosts["cg-b"]
    daemon_job(fleet.portals["quito"], "quito-drain", pidfile, stay=5)
    running(fleet, "quito", "quito-drain", pidfile)
    h.ssh("supervisorctl signal USR1 leampoll-quito", check=True)
    ended(fleet.portals["quito"], "quito-drain", "success")
    gone(fleet, "quito", pidfile)
    wait_until(lambda: fleet.poller_pid("quito") == 0, 30, "the drained poller exited")
    assert fleet.portals["quito"].ended_once("quito-drain")
    h.ssh("supervisorctl start leampoll-quito", check=True)


@pytest.mark.parametrize(
    ("project", "how"),
    [("lima", "sigterm"), ("quito", "retire"), ("cusco", "kill-9")],
)
def test_a_stopped_poller_hands_the_job_back_once_and_leaves_nothing(fleet, project, how):
    job, pidfile = f"{project}-{how}", f"/var/tmp/{project}-{how}.pid"
    h, portal = fleet.host_of(project), fleet.portals[project]
    once_job(portal, job, pidfile)
    running(fleet, project, job, pidfile)
    pid = fleet.poller_pid(project)
    if how == "sigterm":
        h.ssh(f"supervisorctl stop leampoll-{project}", check=True)
    elif how == "retire":
        h.ssh("leampoll retire --timeout 2 --action true", check=True, timeout=120)
    else:
        h.ssh(f"kill -9 {pid}", check=True)  # Supervisor starts it again: recovery
    gone(fleet, project, pidfile)
    portal.wait_for(lambda p: len([r for r in p.reports("requeue") if job in r.path]) == 1, 60)
    if how != "kill-9":
        h.ssh(f"supervisorctl start leampoll-{project}", check=True)
    ended(portal, job, "success", 90)
    assert len([r for r in portal.reports("requeue") if job in r.path]) == 1
    assert portal.ended_once(job)
    wait_until(lambda: not fleet.units(project), 30, "no job unit left")


def test_a_job_over_its_memory_max_is_reported_as_oom_and_the_next_runs(fleet):
    portal, pid = fleet.portals["rio"], fleet.poller_pid("rio")
    portal.queue("rio-big", "python3 -c \"b = bytearray(b'1') * (300 << 20)\"")
    portal.queue("rio-next", "true")
    ended(portal, "rio-next", "success", 90)
    assert portal.outcome("rio-big") == "error"
    message = fleet.message("rio", "rio-big")
    assert "OOM killer" in message and "peak of" in message, message
    record = next(r for r in fleet.history("rio") if r["job_id"] == "rio-big")
    assert record["ended"] == "oom"
    # At its 100M bound: cgroup v1's max_usage_in_bytes was seen a few MiB past it
    # (pages charged as the kernel reclaims), never the 300M the job asked for.
    assert 90 * MiB <= record["peak_memory_bytes"] <= 120 * MiB, record
    assert fleet.poller_pid("rio") == pid


def test_two_projects_at_the_slice_limit_lose_a_job_never_the_host(fleet):
    hog = "python3 -c \"import time; b = bytearray(b'1') * (300 << 20); time.sleep(15)\""
    pids = {p: fleet.poller_pid(p) for p in ("lima", "cusco")}
    for p in pids:
        fleet.portals[p].queue(f"{p}-hog", hog)
    for p in pids:
        ended(fleet.portals[p], f"{p}-hog", None, 90)
    outcomes = {p: fleet.portals[p].outcome(f"{p}-hog") for p in pids}
    assert "error" in outcomes.values(), outcomes  # 600M of jobs in a 450M slice
    for p, outcome in outcomes.items():
        if outcome == "error":
            assert "OOM killer" in fleet.message(p, f"{p}-hog")
    peak = fleet.hosts["cg-a"].ssh(
        "cat /sys/fs/cgroup/memory/leam.slice/leam-jobs.slice/memory.max_usage_in_bytes "
        "2>/dev/null || cat /sys/fs/cgroup/leam.slice/leam-jobs.slice/memory.peak"
    )
    assert int(peak.stdout.split()[0]) <= SLICE_MAX
    assert {p: fleet.poller_pid(p) for p in pids} == pids


def test_a_job_is_measured_within_ten_percent(fleet):
    code = (
        "import os\n"
        "b = bytearray(b'1') * (300 << 20)\n"
        "del b\n"
        "with open('out', 'wb') as f:\n"
        "    for _ in range(200): f.write(b'2' * (1 << 20))\n"
        "    os.fsync(f.fileno())\n"
    )
    portal = fleet.portals["quito"]
    portal.queue("quito-measure", f"python3 -c {shlex.quote(code)}")
    ended(portal, "quito-measure", "success", 120)
    record = next(r for r in fleet.history("quito") if r["job_id"] == "quito-measure")
    assert record["mode"] == expected_mode(fleet.hosts["cg-b"])
    assert 300 * MiB <= record["peak_memory_bytes"] <= 330 * MiB, record
    assert 180 * MiB <= record["peak_disk_bytes"] <= 220 * MiB, record
    assert record["cpu_seconds"] > 0 and record["ended"] == "exit"


def test_without_init_jobs_are_process_groups_and_still_measured(fleet):
    portal = fleet.portals["bogota"]
    portal.queue("bogota-1", "python3 -c \"b = bytearray(b'1') * (50 << 20)\"")
    ended(portal, "bogota-1", "success")
    record = fleet.history("bogota")[-1]
    assert record["mode"] == "pgroup" and record["ended"] == "exit"
    assert record["peak_memory_bytes"] >= 50 * MiB
    assert "(pgroup)" in fleet.message("bogota", "bogota-1")

"""Runs inside the VM only (`make test-cgroup-v2`): the real poller on cgroup v2.

The sandbox hosts of tests/test_job_cgroups.py share this machine's cgroup v1
kernel; only the VM boots the unified hierarchy of a Debian 12 server. Here the
guest is set up as the leampoll role sets up a host (the job-unit helper, its
sudoers line and the jobs' slice, from the role's own files), and the poller
runs unprivileged as that account against a portal stand-in on the guest's
loopback. Each job that leaves something starts a daemon in a session of its
own that ignores SIGTERM: whatever ends the job, nothing of it may be left.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from leampoll import cgroups
from leampoll.executor import rundir_name
from testing.pollers import LEAMPOLL, poller_flags
from testing.portal_standin import PortalStandin
from testing.wait import wait_until

pytestmark = [
    pytest.mark.vm,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        os.environ.get("LEAM_VM_GUEST") != "1", reason="runs inside the VM (make test-cgroup-v2)"
    ),
]

ACCOUNT = "leam"  # the pollers' account, as the role's leam_user
PROJECT = "andes"
PORTAL_USER, PASSWORD = "poller", "s3cret-in-the-vm"
GRACE = 3
MiB = 1 << 20
SLICE_MAX = "600M"
ROLE = Path(__file__).resolve().parent.parent / "roles" / "leampoll_jobs"
SLICE_UNIT = Path("/etc/systemd/system/leam-jobs.slice")
SUDOERS = Path("/etc/sudoers.d/leampoll-job-unit")
DAEMON_BIN = Path("/usr/local/bin/leam-test-daemon")
BASE = Path("/var/tmp/leam-vm-jobs")
# Emulated CPU (TCG): every step is many times slower than on a server.
SLOW = 180

# leam-test-daemon PIDFILE [SECONDS]: a daemon in a new session that ignores
# TERM (pid in PIDFILE), then the job itself stays SECONDS (or ends at once).
DAEMON = """#!/bin/sh
setsid sh -c 'trap "" TERM; echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; exec sleep 1000' sh "$1" \\
  </dev/null >/dev/null 2>&1 &
while [ ! -s "$1" ]; do sleep 0.1; done
if [ -n "$2" ]; then exec sleep "$2"; fi
"""


def render(template: Path, values: dict[str, str]) -> str:
    """The role's template with its variables filled in, as Ansible renders it."""
    text = template.read_text()
    for name, value in values.items():
        text = text.replace("{{ " + name + " }}", value)
    assert "{{" not in text, f"{template.name}: a variable left unrendered"
    return text


def as_account(argv: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True, **_drop(), **kw)


def _drop() -> dict:
    """Popen arguments that run a child as the pollers' account, environment kept."""
    return {"user": ACCOUNT, "group": ACCOUNT, "extra_groups": []}


def root(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=SLOW)


@dataclass
class Guest:
    """The guest set up as the role would, a stand-in portal, the pollers started."""

    portal: PortalStandin
    workdir: Path
    env: dict[str, str]
    pollers: list[subprocess.Popen] = field(default_factory=list)
    daemons: list[Path] = field(default_factory=list)

    def start(self, *extra: str) -> subprocess.Popen:
        argv = [*LEAMPOLL, *poller_flags(self.workdir), "--project", PROJECT]
        argv += ["--grace", str(GRACE), *extra, self.portal.url]
        log = open(BASE / f"poller-{len(self.pollers)}.log", "ab")  # noqa: SIM115
        with log:
            proc = subprocess.Popen(
                argv,
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                **_drop(),
            )
        self.pollers.append(proc)
        wait_until(lambda: self.status_pid() == proc.pid, SLOW, "the poller's status file")
        return proc

    def log(self, proc: subprocess.Popen) -> str:
        return (BASE / f"poller-{self.pollers.index(proc)}.log").read_text(errors="replace")

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(SLOW)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)

    def status_pid(self) -> int | None:
        try:
            return json.loads((self.workdir / ".leampoll" / "status.json").read_text()).get("pid")
        except (OSError, ValueError):
            return None

    def pidfile(self, name: str) -> Path:
        path = BASE / "pids" / f"{name}.pid"
        self.daemons.append(path)
        return path

    def history(self) -> list[dict]:
        path = self.workdir / ".leampoll" / "history.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def record(self, job: str) -> dict:
        return next(r for r in self.history() if r["job_id"] == job)

    def message(self, job: str) -> str:
        ending = self.portal.ending(job)
        return ending.form.get("message", "") if ending else ""


def daemon_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pidfile: Path) -> bool:
    pid = daemon_pid(pidfile)
    return pid is not None and Path(f"/proc/{pid}").exists() and _state(pid) not in ("Z", "X")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def job_units() -> str:
    return subprocess.run(
        ["systemctl", "list-units", "--all", "--plain", "--no-legend", "leam-job-*"],
        capture_output=True,
        text=True,
        timeout=SLOW,
    ).stdout.strip()


def no_units_left() -> None:
    wait_until(lambda: not job_units(), 60, "no job unit left")


def unit_of(job: str) -> str:
    return cgroups.unit_name(PROJECT, rundir_name(job))


@pytest.fixture(scope="module")
def guest() -> Iterator[Guest]:
    """The helper, its sudoers line and the slice as roles/leampoll_jobs/tasks/cgroups.yml
    installs them, an account for the pollers, and a portal; all removed afterwards."""
    root_mode = Path("/root").stat().st_mode & 0o7777
    helper = cgroups.HELPER
    made_helper_dir = not helper.parent.exists()
    values = {
        "ansible_managed": "Managed by tests/test_vm_job_cgroups.py",
        "leam_user": ACCOUNT,
        "__leampoll_jobs_helper": str(helper),
        "leampoll_jobs_memory_max": SLICE_MAX,
    }
    root("useradd", "--system", "--home-dir", str(BASE), "--shell", "/usr/sbin/nologin", ACCOUNT)
    portal = PortalStandin(PORTAL_USER, PASSWORD).start()
    g = None
    try:
        # The checkout and venv live in /root: the account must reach them.
        os.chmod("/root", root_mode | 0o001)
        user = pwd.getpwnam(ACCOUNT)
        for d in (BASE, BASE / "pids", BASE / PROJECT):
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, user.pw_uid, user.pw_gid)
        helper.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.copyfile(ROLE / "files" / "job-unit", helper)
        os.chown(helper, 0, 0)
        helper.chmod(0o755)
        sudoers = render(ROLE / "templates" / "sudoers-job-unit.j2", values)
        candidate = BASE / "sudoers.new"
        candidate.write_text(sudoers)
        root("visudo", "-cf", str(candidate))  # the role's validate
        candidate.unlink()
        SUDOERS.write_text(sudoers)
        SUDOERS.chmod(0o440)
        SLICE_UNIT.write_text(render(ROLE / "templates" / "leam-jobs.slice.j2", values))
        SLICE_UNIT.chmod(0o644)
        root("systemctl", "daemon-reload")
        DAEMON_BIN.write_text(DAEMON)
        DAEMON_BIN.chmod(0o755)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(BASE),
            "LANG": "C.UTF-8",
            "PORTAL_USER": PORTAL_USER,
            "PORTAL_PASSWORD": PASSWORD,
        }
        g = Guest(portal, BASE / PROJECT, env)
        yield g
    finally:
        if g is not None:
            for proc in g.pollers:
                g.stop(proc)
            for pidfile in g.daemons:
                pid = daemon_pid(pidfile)
                if pid is not None and alive(pidfile):
                    os.kill(pid, signal.SIGKILL)
        for unit in job_units().splitlines():
            subprocess.run(["systemctl", "stop", unit.split()[0]], timeout=SLOW, check=False)
        portal.stop()
        for path in (DAEMON_BIN, SUDOERS, SLICE_UNIT, helper):
            path.unlink(missing_ok=True)
        if made_helper_dir:
            shutil.rmtree(helper.parent, ignore_errors=True)
        subprocess.run(["systemctl", "daemon-reload"], timeout=SLOW, check=False)
        subprocess.run(["userdel", ACCOUNT], timeout=SLOW, check=False)
        shutil.rmtree(BASE, ignore_errors=True)
        os.chmod("/root", root_mode)


@pytest.fixture
def poller(guest: Guest) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start pollers of the project; each is stopped (SIGTERM) after the test."""
    mine: list[subprocess.Popen] = []

    def start(*extra: str) -> subprocess.Popen:
        proc = guest.start(*extra)
        mine.append(proc)
        return proc

    yield start
    for proc in mine:
        guest.stop(proc)


def ended(portal: PortalStandin, job: str, outcome: str, timeout: float = SLOW) -> None:
    portal.wait_for(lambda p: p.outcome(job) in ("success", "error"), timeout)
    assert portal.outcome(job) == outcome, portal.events(job)


def running(guest: Guest, job: str, pidfile: Path) -> int:
    """Wait until the job's daemon runs; its pid."""
    guest.portal.wait_for(lambda p: p.status.get(job) == "running", timeout=SLOW)
    wait_until(lambda: alive(pidfile), SLOW, f"{job}'s daemon running")
    pid = daemon_pid(pidfile)
    assert pid is not None
    return pid


def once_job(portal: PortalStandin, job: str, pidfile: Path) -> None:
    """Long with its daemon the first time; at once when run again."""
    marker = f"{pidfile}.ran"
    portal.queue(
        job,
        f"sh -c 'if [ -e {marker} ]; then exit 0; fi; touch {marker}; "
        f"exec leam-test-daemon {pidfile} 900'",
    )


def requeued(portal: PortalStandin, job: str) -> int:
    return len([r for r in portal.reports("requeue") if job in r.path])


def test_check_and_status_say_cgroup_v2(guest, poller, record_property):
    check = as_account(
        [*LEAMPOLL, "--check", *poller_flags(guest.workdir, None, None), guest.portal.url],
        guest.env,
        timeout=SLOW,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "cgroup-v2 (systemd " in check.stdout and "leam-jobs.slice" in check.stdout, check.stdout
    record_property("check", next(x for x in check.stdout.splitlines() if "cgroup-v2" in x))
    poller()

    def status() -> str:
        out = subprocess.run(
            [*LEAMPOLL, "status", str(guest.workdir)], capture_output=True, text=True, timeout=SLOW
        ).stdout
        return out if "jobs: cgroup-v2 (systemd " in out else ""

    assert "leam-jobs.slice" in wait_until(status, SLOW, "cgroup-v2 in leampoll status")


def test_a_daemon_left_by_a_job_is_gone_after_the_grace(guest, poller):
    pidfile = guest.pidfile("left")
    poller()
    guest.portal.queue("v2-left", f"leam-test-daemon {pidfile}")
    ended(guest.portal, "v2-left", "success")
    wait_until(lambda: not alive(pidfile), GRACE + 60, "the job's daemon gone")
    assert guest.portal.ended_once("v2-left")
    assert "(cgroup-v2)" in guest.message("v2-left")
    no_units_left()


def test_a_job_over_its_memory_max_is_reported_as_oom_and_the_next_runs(
    guest, poller, record_property
):
    proc = poller("--memory-max", "100M")
    guest.portal.queue("v2-big", "python3 -c \"b = bytearray(b'1') * (300 << 20)\"")
    guest.portal.queue("v2-next", "true")
    ended(guest.portal, "v2-next", "success", SLOW * 2)
    assert guest.portal.outcome("v2-big") == "error"
    assert guest.portal.ended_once("v2-big")
    message = guest.message("v2-big")
    assert "OOM killer" in message and "peak of" in message, message
    record = guest.record("v2-big")
    record_property("oom_message", message.splitlines()[0])
    record_property("oom_peak_bytes", record["peak_memory_bytes"])
    assert record["ended"] == "oom" and record["mode"] == "cgroup-v2", record
    # At its 100M bound, never the 300M asked for: the kernel lets the dying victim
    # charge past memory.max, and memory.peak showed 104.9 MiB (v1 too: a few MiB past).
    assert 90 * MiB <= record["peak_memory_bytes"] <= 120 * MiB, record
    assert proc.poll() is None and guest.status_pid() == proc.pid
    no_units_left()


def test_a_job_is_measured_within_ten_percent(guest, poller, record_property):
    code = (
        "import os\n"
        "b = bytearray(b'1') * (150 << 20)\n"
        "del b\n"
        "with open('out', 'wb') as f:\n"
        "    for _ in range(100): f.write(b'2' * (1 << 20))\n"
        "    os.fsync(f.fileno())\n"
    )
    poller()
    guest.portal.queue("v2-measure", f"python3 -c {shlex.quote(code)}")
    ended(guest.portal, "v2-measure", "success", SLOW * 2)
    record = guest.record("v2-measure")
    for key in ("peak_memory_bytes", "peak_disk_bytes", "cpu_seconds", "wall_seconds"):
        record_property(key, record[key])
    assert record["mode"] == "cgroup-v2" and record["ended"] == "exit", record
    # memory.peak: the 150 MiB buffer and the interpreter, page cache of the file below it.
    assert 150 * MiB <= record["peak_memory_bytes"] <= 165 * MiB, record
    assert 90 * MiB <= record["peak_disk_bytes"] <= 110 * MiB, record
    assert record["cpu_seconds"] > 0, record


def test_sigterm_of_the_poller_hands_the_job_back_once_and_leaves_nothing(guest, poller):
    job, pidfile = "v2-sigterm", guest.pidfile("sigterm")
    proc = poller()
    once_job(guest.portal, job, pidfile)
    pid = running(guest, job, pidfile)
    cgroup = Path(f"/proc/{pid}/cgroup").read_text().strip()
    assert cgroup == f"0::/{cgroups.SLICE_PATH}/{unit_of(job)}", cgroup
    proc.send_signal(signal.SIGTERM)
    proc.wait(SLOW)
    assert not alive(pidfile)  # stopped before the poller exits
    guest.portal.wait_for(lambda p: requeued(p, job) == 1, SLOW)
    no_units_left()
    poller()
    ended(guest.portal, job, "success")
    assert requeued(guest.portal, job) == 1 and guest.portal.ended_once(job)
    no_units_left()


def test_kill_9_of_the_poller_then_a_restart_stops_the_orphan_unit(guest, poller):
    job, pidfile = "v2-kill9", guest.pidfile("kill9")
    proc = poller()
    once_job(guest.portal, job, pidfile)
    running(guest, job, pidfile)
    proc.send_signal(signal.SIGKILL)
    proc.wait(SLOW)
    # Nothing stops the job meanwhile: its unit outlives the poller.
    assert alive(pidfile)
    assert cgroups.unit_active(unit_of(job)), job_units()
    again = poller()
    wait_until(lambda: not alive(pidfile), GRACE + SLOW, "the orphan's daemon gone")
    guest.portal.wait_for(lambda p: requeued(p, job) == 1, SLOW)
    ended(guest.portal, job, "success")
    assert requeued(guest.portal, job) == 1 and guest.portal.ended_once(job)
    assert "orphaned" in guest.log(again), guest.log(again)
    no_units_left()

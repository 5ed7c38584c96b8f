"""Job servers as they boot in production: systemd as PID 1, reboots, power cuts.

Three sandbox hosts converge with the real `site.yml`: `sys-a` (bookworm,
systemd, two projects, leampoll_grace 95 s: longer than Debian's 90 s stop
timeout of supervisor.service), `sys-b` (trixie, systemd) and `sys-box`
(bookworm without an init: the container case, Supervisor through its init
script). Then Supervisor is restarted, upgraded, the hosts are rebooted and
power-cut with jobs running; each job must be handed back exactly once and
run again, with nothing left over from before.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.fleet import Inventory, Stand, leam_project, stand
from testing.marks import sandbox_hosts
from testing.playbook import recap
from testing.portal_standin import PortalStandin
from testing.sandbox import TEST_STATE_DIR, Host
from testing.wait import wait_until

PASSWORD = "s3cret-for-boots"
ANSIBLE = Path(sys.executable).with_name("ansible")
PROJECTS = {"sys-a": ["rio", "lima"], "sys-b": ["quito"], "sys-box": ["bogota"]}
GRACE_A = 95  # above the 90 s Debian's supervisor.service waits by default

pytestmark = sandbox_hosts(1500)


class Fleet:
    """The hosts, a portal stand-in per project and the inventory."""

    def __init__(self, stand: Stand, workdir: Path) -> None:
        self.stand = stand
        self.sandbox = stand.sandbox
        self.hosts = stand.hosts
        self.portals = stand.portals
        self.dir = workdir
        self.deployed = Inventory(
            stand.sandbox,
            workdir / "inventory.yml",
            host_vars={"sys-a": {"leampoll_grace": GRACE_A}},
            group_vars={"leampoll_drain_timeout": 300},
            log_dir=workdir,
        )
        self.inventory = self.deployed.path
        self.projects = {h: list(p) for h, p in PROJECTS.items()}
        self.absent: dict[str, list[str]] = {h: [] for h in PROJECTS}  # removed by ensure()

    def write(self) -> None:
        self.deployed.projects = {
            host: [leam_project(p, self.portals[p].url, PASSWORD) for p in projects]
            + [
                leam_project(p, f"http://127.0.0.1:9/{p}", PASSWORD, state="absent")
                for p in self.absent[host]
                if p not in projects
            ]
            for host, projects in self.projects.items()
        }
        self.deployed.write()

    def play(self, *args: str) -> subprocess.CompletedProcess:
        return self.deployed.play(*args)

    def ensure(self, host: str, projects: list[str]) -> None:
        """Converge a host to serve `projects` (those it loses absent) unless it does already.

        Tests that need a project, or its absence, ask for it, so each runs
        alone or in any order; in file order this converges nothing.
        """
        if self.projects[host] == projects:
            return
        for gone in set(self.projects[host]) - set(projects):
            self.absent[host].append(gone)
            self.portals.pop(gone).stop()
        for new in set(projects) - set(self.portals):
            self.stand.portal(new)
        self.projects[host] = list(projects)
        self.write()
        out = self.play("--limit", host)
        assert out.returncode == 0, out.stdout[-4000:]
        wait_until(lambda: self.all_running(host), 30, f"the pollers of {host} run")

    def states(self, host: str) -> dict[str, str]:
        """Supervisor state of every program on a host."""
        out = self.hosts[host].ssh("supervisorctl status").stdout
        return {f[0]: f[1] for f in (line.split() for line in out.splitlines()) if len(f) > 1}

    def all_running(self, host: str) -> bool:
        states = self.states(host)
        wanted = {f"leampoll-{p}" for p in self.projects[host]}
        return wanted <= set(states) and all(states[w] == "RUNNING" for w in wanted)


def requeues(portal: PortalStandin, job: str) -> int:
    return len([r for r in portal.reports("requeue") if f"/jobs/{job}/" in r.path])


def once(marker: str, then: str = "") -> str:
    """A job that runs long the first time and ends at once when run again.

    The marker is on the host's disk, which survives reboots and power cuts;
    `then` runs before it is written (a job that has written it has set up
    what `then` sets up).
    """
    return (
        f"sh -c 'if [ -e /var/tmp/{marker} ]; then exit 0; fi; {then}"
        f"touch /var/tmp/{marker}; exec sleep 900'"
    )


def started(portal: PortalStandin, job: str, host: Host, marker: str) -> None:
    """Wait until the job is running on the host (its marker is written)."""
    portal.wait_for(lambda p: p.status.get(job) == "running", timeout=60)
    wait_until(
        lambda: host.ssh(f"test -e /var/tmp/{marker}").returncode == 0,
        30,
        f"{job} started on {host.name}",
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    names = [p for projects in PROJECTS.values() for p in projects]
    with stand(TEST_STATE_DIR, names, PASSWORD) as s:
        s.up(["sys-a", "sys-b"], suites={"sys-b": "trixie"})
        s.up(["sys-box"], init="none")
        f = Fleet(s, tmp_path_factory.mktemp("systemd-fleet"))
        f.write()
        f.first = f.play()
        yield f


@pytest.fixture
def sys_b_as_deployed(fleet) -> None:
    fleet.ensure("sys-b", PROJECTS["sys-b"])


@pytest.fixture
def sys_b_with_cusco(fleet) -> None:
    fleet.ensure("sys-b", [*PROJECTS["sys-b"], "cusco"])


@pytest.mark.usefixtures("sys_b_as_deployed")
def test_bare_hosts_converge_and_every_poller_runs_a_job(fleet):
    out = fleet.first.stdout
    assert fleet.first.returncode == 0, out[-4000:]
    for host, projects in PROJECTS.items():
        assert recap(out)[host]["failed"] == 0
        for project in projects:
            fleet.portals[project].queue(f"{project}-first", "true")
    for project in fleet.portals:
        fleet.portals[project].wait_for(
            lambda p, j=f"{project}-first": p.status.get(j) == "complete", timeout=90
        )
    assert PASSWORD not in out


@pytest.mark.skipif(not ANSIBLE.exists(), reason="ansible is not installed in this venv")
def test_service_manager_fact_is_systemd_where_systemd_boots(fleet):
    out = subprocess.run(
        [
            str(ANSIBLE),
            "leam_jobservers",
            "-i",
            str(fleet.inventory),
            "-o",
            "-m",
            "ansible.builtin.setup",
            "-a",
            "gather_subset=!all,!min,service_mgr",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )
    facts = {
        m.group(1): json.loads(m.group(2))["ansible_facts"]["ansible_service_mgr"]
        for m in re.finditer(r"^(\S+) \| SUCCESS => (\{.*\})$", out.stdout, re.M)
    }
    assert facts["sys-a"] == "systemd" and facts["sys-b"] == "systemd", out.stdout
    assert facts["sys-box"] != "systemd"


@pytest.mark.usefixtures("sys_b_as_deployed")
def test_supervisor_starts_at_boot_with_a_stop_timeout_covering_its_pollers(fleet):
    a, b, box = (fleet.hosts[h] for h in ("sys-a", "sys-b", "sys-box"))
    for host in (a, b):
        assert host.ssh("systemctl is-enabled supervisor").stdout.strip() == "enabled"
        assert host.ssh("systemctl show -P KillMode supervisor").stdout.strip() == "mixed"
    # sys-a: two pollers of stopwaitsecs 95 + 30, stopped one after the other, + 30 s
    dropin = a.ssh("cat /etc/systemd/system/supervisor.service.d/leam-stop.conf").stdout
    assert "TimeoutStopSec=280\n" in dropin and "125 + 125" in dropin
    assert a.ssh("systemctl show -P TimeoutStopUSec supervisor").stdout.strip() == "4min 40s"
    assert "stopwaitsecs=125\n" in a.ssh("cat /etc/supervisor/conf.d/leampoll-rio.conf").stdout
    # sys-b: one poller of 40 s + 30 s: Debian's 90 s stays
    assert b.ssh("systemctl show -P TimeoutStopUSec supervisor").stdout.strip() == "1min 30s"
    # Without systemd: the init script runs Supervisor, and there is no drop-in.
    assert (
        box.ssh("test -e /etc/systemd/system/supervisor.service.d/leam-stop.conf").returncode != 0
    )
    assert box.ssh("service supervisor status").returncode == 0
    assert fleet.all_running("sys-box")


def test_second_run_changes_nothing(fleet):
    out = fleet.play()
    assert out.returncode == 0, out.stdout[-4000:]
    assert {h: c["changed"] for h, c in recap(out.stdout).items()} == {
        "sys-a": 0,
        "sys-b": 0,
        "sys-box": 0,
    }, out.stdout[-4000:]


@pytest.mark.usefixtures("sys_b_as_deployed")
def test_stop_timeout_follows_the_programs_with_a_daemon_reload(fleet):
    b = fleet.hosts["sys-b"]
    fleet.projects["sys-b"] = ["quito", "cusco"]
    fleet.stand.portal("cusco")
    fleet.write()
    out = fleet.play("--limit", "sys-b")
    assert out.returncode == 0, out.stdout[-4000:]
    assert "RUNNING HANDLER [supervisor : Reload systemd units]" in out.stdout
    # two pollers of 40 s, one after the other, + 30 s
    assert b.ssh("systemctl show -P TimeoutStopUSec supervisor").stdout.strip() == "1min 50s"
    assert b.ssh("systemctl show -P NeedDaemonReload supervisor").stdout.strip() == "no"
    wait_until(lambda: fleet.all_running("sys-b"), 30, "both pollers of sys-b run")


def test_unattended_upgrades_leave_supervisor_alone(fleet):
    b = fleet.hosts["sys-b"]
    b.ssh("apt-get install -y -q unattended-upgrades", check=True, timeout=300)
    out = b.ssh("unattended-upgrade --dry-run --debug 2>&1").stdout
    assert re.search(r"^Initial blacklist: .*\^supervisor\$", out, re.M), out[-3000:]


def test_package_upgrade_hands_the_running_job_back_and_it_runs_again(fleet):
    # What an apt upgrade of supervisor does (its postinst restarts the
    # service); a reinstall runs the same maintainer scripts.
    b, quito = fleet.hosts["sys-b"], fleet.portals["quito"]
    quito.queue("during-upgrade", once("upgrade-ran"))
    started(quito, "during-upgrade", b, "upgrade-ran")
    b.ssh("apt-get install -y -q --reinstall supervisor", check=True, timeout=300)
    quito.wait_for(lambda p: p.status.get("during-upgrade") == "complete", timeout=90)
    assert requeues(quito, "during-upgrade") == 1
    wait_until(lambda: fleet.all_running("sys-b"), 30, "sys-b's pollers run again")


def test_restart_with_a_grace_beyond_90_s_hands_the_job_back(fleet):
    # The job ignores TERM: its poller waits the full 95 s grace, kills it,
    # then hands it back. Debian's 90 s would kill Supervisor before that.
    a, rio = fleet.hosts["sys-a"], fleet.portals["rio"]
    a.ssh("journalctl --rotate >/dev/null 2>&1; true")
    since = a.ssh("date +%s").stdout.strip()
    rio.queue("ignores-term", once("restart-ran", then='trap "" TERM; '))
    started(rio, "ignores-term", a, "restart-ran")
    res = a.ssh("systemctl restart supervisor", timeout=400)
    assert res.returncode == 0, res.stderr
    assert requeues(rio, "ignores-term") == 1
    rio.wait_for(lambda p: p.status.get("ignores-term") == "complete", timeout=90)
    assert requeues(rio, "ignores-term") == 1
    journal = a.ssh(f"journalctl -u supervisor --since @{since} --no-pager").stdout
    assert "timed out" not in journal and "Killing" not in journal, journal
    wait_until(lambda: fleet.all_running("sys-a"), 30, "sys-a's pollers run again")


def _pollers_and_jobs(host: Host) -> set[tuple[int, int | None]]:
    return {
        (pid, start)
        for pid, start, cmd in host.processes()
        if "leampoll" in cmd or "sleep 900" in cmd
    }


def test_reboot_hands_the_job_back_once_and_the_pollers_run_it_after_the_boot(fleet):
    a, lima = fleet.hosts["sys-a"], fleet.portals["lima"]
    lima.queue("across-reboot", once("reboot-ran"))
    started(lima, "across-reboot", a, "reboot-ran")
    before = _pollers_and_jobs(a)
    assert len(before) >= 3  # two pollers and the job
    fleet.sandbox.reboot(a)
    # The poller handed it back on its way down, before the host was gone.
    assert requeues(lima, "across-reboot") == 1
    assert a.ssh("systemctl is-active supervisor").stdout.strip() == "active"
    wait_until(lambda: fleet.all_running("sys-a"), 60, "sys-a's pollers run after the boot")
    lima.wait_for(lambda p: p.status.get("across-reboot") == "complete", timeout=90)
    assert requeues(lima, "across-reboot") == 1
    # Nothing from before the reboot is left: every process is of the new boot.
    assert not before & {(pid, start) for pid, start, _ in a.processes()}
    assert all(start >= int(a.boot_id) for _, start, _ in a.processes())


@pytest.mark.usefixtures("sys_b_with_cusco")
def test_power_cut_orphan_is_requeued_once_at_the_next_boot_and_run(fleet):
    b, cusco = fleet.hosts["sys-b"], fleet.portals["cusco"]
    cusco.queue("power-cut", once("cut-ran"))
    started(cusco, "power-cut", b, "cut-ran")
    before = _pollers_and_jobs(b)
    fleet.sandbox.power_cut(b)
    assert requeues(cusco, "power-cut") == 0  # nobody could hand it back
    assert cusco.status["power-cut"] == "running"
    fleet.sandbox.boot(b)
    # Crash recovery of the restarted poller hands the orphan back, then runs it.
    cusco.wait_for(lambda p: p.status.get("power-cut") == "complete", timeout=120)
    assert requeues(cusco, "power-cut") == 1
    wait_until(lambda: fleet.all_running("sys-b"), 60, "sys-b's pollers run after the boot")
    assert not before & {(pid, start) for pid, start, _ in b.processes()}

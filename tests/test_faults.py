"""The fault suite on a real fleet: sandbox hosts, Supervisor, real pollers.

Three hosts with four projects each (twelve pollers) poll one portal stand-in
through the fault proxy; host `fa` also runs a `solo` project on a portal of its
own, the one-poller baseline of the load case, on a small job filesystem for the
disk case; the memory case adds two projects to `fa` on a third portal. Every
case queues its own jobs (the job writes
a ledger beside its run directory) and then checks the promise: every job ended
exactly once, none ran twice at the same time, no job process left on a host,
nothing written outside the job tree. Figures go to RELIABILITY.md (`make faults`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from testing.fault_proxy import FaultProxy
from testing.fleet import Inventory, leam_project
from testing.ledger import Runs, job_cmdline
from testing.playbook import recap
from testing.portal_standin import REPORT_KINDS, PortalStandin
from testing.reliability import Case
from testing.sandbox import TEST_STATE_DIR, Host, Sandbox
from testing.wait import wait_until

# Beside the other suites' hosts of the same state dir (LEAM_SANDBOX_STATE), never another's.
STATE_DIR = TEST_STATE_DIR.with_name(TEST_STATE_DIR.name + "-faults")
PASSWORD = "fault-suite-Pa55"
HOSTS = ["fa", "fb", "fc"]
PROJECTS = ["p1", "p2", "p3", "p4"]
LOAD_JOBS = int(os.environ.get("LEAM_FAULTS_LOAD_JOBS", "1000"))
SOLO_JOBS = max(20, LOAD_JOBS // 10)
GUARDED = ["m1", "m2"]  # the memory case's projects on fa
GIB = 2**30

pytestmark = [
    pytest.mark.faults,
    pytest.mark.sandbox,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("debootstrap"),
        reason="sandbox hosts need root, unshare and debootstrap",
    ),
]


def ended(portal: PortalStandin, job: str) -> bool:
    return portal.status.get(job) in ("complete", "success", "error")


def requeues(portal: PortalStandin, job: str) -> int:
    """Hand-backs of ``job`` the portal took."""
    return sum(1 for e in portal.events(job) if e.startswith("requeue 2"))


def reports_per_pop(portal: PortalStandin, job: str) -> list[int]:
    """For each time the job was popped, how many reports on it the portal took.

    0 would be a job left `running`. More than 1 is a report delivered again
    because its answer was lost on the way back (a reset, a truncated answer):
    the poller cannot know it arrived, and the portal's end_run and requeue
    are idempotent, so the repeat changes nothing.
    """
    taken: list[int] = []
    for event in portal.events(job):
        kind, status = event.split()[:2]
        if kind == "pop" and status == "200":
            taken.append(0)
        elif kind in REPORT_KINDS and status.startswith("2") and taken:
            taken[-1] += 1
    return taken


def running(portal: PortalStandin, jobs: list[str]) -> bool:
    return all(portal.status.get(j) == "running" for j in jobs)


class FaultFleet:
    """The hosts, the portal behind its proxy, and what each case needs to check."""

    def __init__(
        self,
        sandbox: Sandbox,
        hosts: dict[str, Host],
        portal: PortalStandin,
        proxy: FaultProxy,
        solo: PortalStandin,
        mem: PortalStandin,
        workdir: Path,
    ) -> None:
        self.sandbox = sandbox
        self.hosts = hosts
        self.portal = portal
        self.proxy = proxy
        self.solo = solo
        self.mem = mem
        self.dir = workdir
        self.inventory = workdir / "inventory.yml"

    def project(self, name: str, url: str, **settings: object) -> dict:
        return leam_project(name, url, PASSWORD, **settings)

    def converge(self, extra: dict[str, list[dict]] | None = None, *args: str) -> None:
        """Run site.yml; ``extra``: more projects by host, ``args``: for ansible-playbook."""
        projects = {h: [self.project(p, self.proxy.url) for p in PROJECTS] for h in HOSTS}
        # solo's disk-fill case shows the static disk guard and the state's reserve:
        # a learned need would rightly stay above the whole 64 MB filesystem after
        # a job that filled it (test_guard_hosts covers learned needs).
        projects["fa"] += [self.project("solo", self.solo.url, guard_mode="static")]
        for host, more in (extra or {}).items():
            projects[host] += more
        inventory = Inventory(
            self.sandbox,
            self.inventory,
            projects=projects,
            # Metrics on fa, served on its own address (127.0.0.1:9100 may be taken here).
            host_vars={
                "fa": {
                    "leampoll_metrics": True,
                    "leampoll_node_exporter_listen_address": self.metrics_address,
                }
            },
            group_vars={
                "leampoll_drain_timeout": 120,
                "leampoll_extra_args": ["--max-backoff", "4", "--timeout", "3"],
            },
            log_dir=self.dir,
        )
        out = inventory.converge(*args)
        assert all(r["failed"] == 0 for r in recap(out.stdout).values()), out.stdout[-4000:]

    @property
    def metrics_address(self) -> str:
        return f"{self.hosts['fa'].address}:9100"

    # -- what the hosts saw ------------------------------------------------------

    def runs(self, cuts: dict[str, float] | None = None) -> Runs:
        """Every job run the ledgers show; ``cuts``: hosts that lost power, and when."""
        names = list(self.hosts)
        texts = [
            self.hosts[n].ssh("cat /mnt/jobdir/*/ledger.txt 2>/dev/null; true").stdout
            for n in names
        ]
        return Runs.parse(texts, [(cuts or {}).get(n) for n in names])

    def program_states(self, host: str) -> dict[str, str]:
        out = self.hosts[host].ssh("supervisorctl status; true").stdout
        return {f[0]: f[1] for f in (line.split() for line in out.splitlines()) if len(f) > 1}

    def pollers_running(self, host: str) -> bool:
        states = self.program_states(host)
        return len(states) >= len(PROJECTS) and set(states.values()) == {"RUNNING"}

    def job_processes(self) -> dict[str, str]:
        """Processes working in a run directory (pollers work in the project's
        directory, jobs in a run directory below it), by host."""
        found = {}
        for name, host in self.hosts.items():
            out = host.ssh(
                "for p in /proc/[0-9]*; do d=$(readlink $p/cwd 2>/dev/null) && "
                "case $d in /mnt/jobdir/*/*) echo ${p#/proc/} $d;; esac; done; true"
            )
            if out.stdout.strip():
                found[name] = out.stdout.strip()
        return found

    def written_outside(self, since: float) -> dict[str, str]:
        """Files changed since ``since`` outside the job tree and the usual
        places a running system writes (logs, metrics, state, caches)."""
        skip = [
            "/mnt/jobdir/*",
            "/var/log/*",
            "/var/lib/leampoll/*",
            "/proc/*",
            "/sys/*",
            "/run/*",
            "/tmp/*",
            "/var/tmp/*",
            "/dev/*",
            "/root/.ansible/*",
            "/var/lib/systemd/*",
            "/var/cache/*",
            "/var/lib/apt/*",
            "/var/lib/dpkg/*",
            "/var/lib/private/*",
            "/etc/machine-id",
            "/var/lib/dbus/*",
        ]
        cond = " ".join(f"-not -path '{p}'" for p in skip)
        found = {}
        for name, host in self.hosts.items():
            out = host.ssh(f"find / -xdev -type f -newermt @{since:.0f} {cond} 2>/dev/null; true")
            if out.stdout.strip():
                found[name] = out.stdout.strip()
        return found

    def pollers(self, host: str) -> dict[str, dict]:
        """`leampoll status --json` on ``host``, by project."""
        out = self.hosts[host].ssh("leampoll status --json", check=True)
        return {row["project"]: row for row in json.loads(out.stdout)}

    def guard_series(self, guard: str) -> dict[str, float]:
        """``leampoll_guard_hold{guard=...}`` by project, as fa's node_exporter serves it."""
        text = requests.get(f"http://{self.metrics_address}/metrics", timeout=10).text
        return {
            s.labels["project"]: s.value
            for family in text_string_to_metric_families(text)
            if family.name == "leampoll_guard_hold"
            for s in family.samples
            if s.labels.get("guard") == guard
        }

    def settle(self, jobs: list[str], timeout: float, portal: PortalStandin | None = None) -> None:
        portal = portal or self.portal
        wait_until(
            lambda: all(ended(portal, j) for j in jobs),
            timeout,
            f"all {len(jobs)} jobs ended in the portal",
        )
        wait_until(
            lambda: not self.job_processes(),
            30,
            f"no job process left on the hosts ({self.job_processes()})",
        )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[FaultFleet]:
    sandbox = Sandbox(STATE_DIR)
    sandbox.down_all()
    with (
        PortalStandin("poller", PASSWORD) as portal,
        PortalStandin("poller", PASSWORD, base_path="/solo") as solo,
        PortalStandin("poller", PASSWORD, base_path="/mem") as mem,
        FaultProxy(portal.root, site_path=portal.base_path) as proxy,
        sandbox.hosts_up(HOSTS, jobdir_size={"fa": "64M"}) as hosts,
    ):
        f = FaultFleet(
            sandbox,
            {h.name: h for h in hosts},
            portal,
            proxy,
            solo,
            mem,
            tmp_path_factory.mktemp("faults"),
        )
        f.converge()
        yield f


@pytest.fixture
def case(fleet, reliability):
    """Start a case: returns a recorder that checks the promise and keeps the figures."""
    started, wall = time.monotonic(), time.time()
    before = dict(fleet.proxy.injected)

    def finish(
        name: str,
        jobs: list[str],
        note: str = "",
        runs_expected: int | None = 1,
        since: float | None = None,
        portal: PortalStandin | None = None,
        cuts: dict[str, float] | None = None,
        quiet_since: float | None = None,
    ) -> Case:
        """Check the promise for ``jobs`` and keep the case's figures.

        ``runs_expected``: completed runs each job's ledger must show (None: the
        jobs keep no ledger); ``cuts``: hosts that lost power during the case;
        ``quiet_since``: wall-clock time from which nothing may be written outside
        the job tree (after a converge the case itself ran).
        """
        portal = portal or fleet.portal
        runs = fleet.runs(cuts)
        twice = [j for j in runs.overlapping() if j in set(jobs)]
        per_pop = {j: reports_per_pop(portal, j) for j in jobs}
        faults = {k: v - before.get(k, 0) for k, v in fleet.proxy.injected.items()}
        result = reliability.add(
            Case(
                name=name,
                jobs=len(jobs),
                faults={k: v for k, v in faults.items() if v},
                lost=sum(1 for j in jobs if not ended(portal, j)),
                run_twice=sum(1 for j in jobs if runs.completed(j) > (runs_expected or 1))
                + len(twice),
                repeated_reports=sum(max(0, n - 1) for taken in per_pop.values() for n in taken),
                seconds=time.monotonic() - (since or started),
                note=note,
            )
        )
        assert {j: t for j, t in per_pop.items() if not t or 0 in t} == {}  # never left running
        assert twice == []
        if runs_expected is not None:
            assert {j: runs.completed(j) for j in jobs if runs.completed(j) != runs_expected} == {}
        assert result.lost == 0
        assert fleet.written_outside(quiet_since or wall) == {}
        return result

    return finish


def test_portal_down_for_a_minute_then_back(fleet, case):
    fleet.proxy.set("down")
    jobs = [fleet.portal.queue(f"down-{i}", job_cmdline())["id"] for i in range(24)]
    time.sleep(float(os.environ.get("LEAM_FAULTS_OUTAGE", "60")))  # the outage itself
    assert [fleet.portal.status[j] for j in jobs] == ["queued"] * len(jobs)
    back = time.monotonic()
    fleet.proxy.set("none")
    fleet.settle(jobs, 120)
    recovered = time.monotonic() - back
    case(
        "portal down for a minute, then back (12 pollers)",
        jobs,
        note=f"all ended {recovered:.1f} s after the portal came back (backoff cap 4 s)",
    )


def test_portal_flapping_through_every_fault(fleet, case):
    jobs = [
        fleet.portal.queue(f"flap-{i}", job_cmdline(seconds=1 + i % 10))["id"] for i in range(120)
    ]
    minutes = float(os.environ.get("LEAM_FAULTS_FLAP_MINUTES", "2"))
    fleet.proxy.flap(minutes * 60, period=(1, 6), seed=12, slow_seconds=5)
    fleet.settle(jobs, 180)
    case(f"portal flapping {minutes:g} min through every fault mode (12 pollers)", jobs)


def test_load_twelve_pollers_with_random_faults(fleet, case, reliability):
    # The one-poller baseline first, on its own portal.
    solo_jobs = [fleet.solo.queue(f"solo-{i}", job_cmdline())["id"] for i in range(SOLO_JOBS)]
    t0 = time.monotonic()
    wait_until(lambda: all(ended(fleet.solo, j) for j in solo_jobs), 600, "the solo drain")
    solo_rate = len(solo_jobs) / (time.monotonic() - t0)

    jobs = [fleet.portal.queue(f"load-{i}", job_cmdline())["id"] for i in range(LOAD_JOBS)]
    t0 = time.monotonic()
    stop = threading.Event()

    def inject() -> None:
        while not stop.is_set():
            fleet.proxy.flap(8, period=(0.5, 2), seed=int(time.monotonic()))
            stop.wait(4)

    injector = threading.Thread(target=inject, daemon=True)
    injector.start()
    try:
        wait_until(lambda: all(ended(fleet.portal, j) for j in jobs), 1200, "the load drain")
    finally:
        stop.set()
        injector.join(20)
    rate = len(jobs) / (time.monotonic() - t0)
    fleet.settle(jobs, 60)
    result = case(
        f"load: {LOAD_JOBS} short jobs, 12 pollers, random faults",
        jobs,
        since=t0,
        note=f"{rate:.1f} jobs/s vs {solo_rate:.1f} jobs/s for one poller "
        f"without faults ({rate / solo_rate:.1f}x)",
    )
    assert result.jobs == LOAD_JOBS


DISRUPTIONS = [
    "supervisorctl restart all",
    "systemctl restart supervisor",
    "reboot",
    "power cut",
]


@pytest.mark.parametrize("how", DISRUPTIONS)
def test_jobs_running_through_a_disruption_are_handed_back_and_run_once(fleet, case, how):
    """Twelve jobs on twelve pollers; host fb is disrupted while its four run."""
    tag = how.split()[-1]
    jobs = [fleet.portal.queue(f"{tag}-{i}", job_cmdline(seconds=15))["id"] for i in range(12)]
    wait_until(lambda: running(fleet.portal, jobs), 30, "every poller running a job")
    wait_until(lambda: set(jobs) <= set(fleet.runs().by_job), 30, "every job started")
    cut: dict[str, float] = {}
    fb = fleet.hosts["fb"]
    if how == "reboot":
        fleet.sandbox.reboot(fb)
    elif how == "power cut":
        cut["fb"] = time.time()
        fleet.sandbox.power_cut(fb)
        fleet.sandbox.boot(fb)
    else:
        fb.ssh(how)
    wait_until(lambda: fleet.pollers_running("fb"), 90, "fb's pollers RUNNING again")
    fleet.settle(jobs, 120)
    runs = fleet.runs(cut)
    handed_back = sorted(j for j in jobs if runs.interrupted(j))
    assert len(handed_back) == len(PROJECTS), runs.by_job
    assert {j: requeues(fleet.portal, j) for j in handed_back} == dict.fromkeys(handed_back, 1)
    case(
        f"{how} on one host while 12 jobs run",
        jobs,
        cuts=cut,
        note=f"{len(handed_back)} jobs handed back once and run again",
    )


def test_kill_9_twice_ends_the_job_as_an_error(fleet, case):
    """A job whose poller dies under it twice is ended, so it cannot loop for ever."""
    fa = fleet.hosts["fa"]
    fleet.solo.queue("killer", job_cmdline(seconds=120))

    def kill_poller_under_the_job() -> None:
        wait_until(lambda: fleet.solo.status.get("killer") == "running", 30, "the job popped")
        wait_until(lambda: fleet.job_processes().get("fa"), 30, "the job running on fa")
        pid = int(fa.ssh("supervisorctl pid leampoll-solo").stdout.strip())
        fa.ssh(f"kill -9 {pid}")

    kill_poller_under_the_job()
    wait_until(lambda: requeues(fleet.solo, "killer") == 1, 60, "the orphan handed back")
    kill_poller_under_the_job()
    fleet.solo.wait_for(lambda p: ended(p, "killer"), timeout=60)
    wait_until(lambda: not fleet.job_processes(), 30, "no job process left")
    assert requeues(fleet.solo, "killer") == 1
    assert fleet.program_states("fa")["leampoll-solo"] == "RUNNING"
    case(
        "kill -9 of the poller mid-job, twice for one job",
        ["killer"],
        portal=fleet.solo,
        runs_expected=0,
        note="handed back once, then ended as an error",
    )


def test_disk_fills_during_a_job(fleet, case):
    """On fa's 64 MB job filesystem: the job fails and is ended, then the disk
    guard holds pops until space returns; the poller lives through it."""
    fa = fleet.hosts["fa"]
    fleet.solo.queue("fill", "sh -c 'dd if=/dev/zero of=big bs=1M; exit 1'")
    fleet.solo.wait_for(lambda p: ended(p, "fill"), timeout=60)
    fleet.solo.queue("after-fill", "true")
    wait_until(lambda: "disk" in fa.ssh("leampoll status --json").stdout, 30, "a disk hold")
    assert fleet.solo.status["after-fill"] == "queued"
    fa.ssh("rm -rf /mnt/jobdir/solo/fill")
    fleet.solo.wait_for(lambda p: ended(p, "after-fill"), timeout=60)
    assert fleet.program_states("fa")["leampoll-solo"] == "RUNNING"
    case(
        "disk fills during a job",
        ["fill", "after-fill"],
        portal=fleet.solo,
        runs_expected=None,
        note="job ended; pops held until space returned",
    )


def hog_cmdline(size: int, limit: float = 300) -> str:
    """A job that takes ``size`` bytes of memory (written, so the kernel really
    gives them) and keeps them until a file `release` appears in its run
    directory, or for ``limit`` seconds at most; says `allocated` when it has them."""
    script = (
        f"import os, time; hog = b'x' * {size}; open('allocated', 'w').close(); "
        f"any(os.path.exists('release') or time.sleep(0.2) for _ in range({int(limit * 5)}))"
    )
    return "python3 -c " + json.dumps(script)


def test_memory_pressure_holds_pops_until_memory_returns(fleet, case):
    """A job on fa's solo poller takes several GB; fa's pollers m1 and m2, whose
    memory guard sits between the memory available before and during that job
    (the hosts share the machine's memory), hold their pops while it runs and
    take their jobs once it has ended; the pollers live through it."""
    fa = fleet.hosts["fa"]
    available = fleet.pollers("fa")["solo"]["memory_available"]
    # Bounded: the machine is shared with other suites; a third of what is free at most.
    hog = min(6 * GIB, available // 3)
    if hog < GIB:
        pytest.skip(f"only {available / GIB:.1f} GB available: too little to press on")
    need = available - hog // 2  # a margin of hog/2 either side of the guard
    # Set the guard the way a user would: inventory, then converge (fa only).
    fleet.converge(
        {"fa": [fleet.project(m, fleet.mem.url, min_free_mem=f"{need >> 20}M") for m in GUARDED]},
        "--limit",
        "fa",
    )
    quiet, t0 = time.time(), time.monotonic()
    everyone = [*PROJECTS, "solo", *GUARDED]  # fa's pollers

    def holding() -> list[str]:
        rows = fleet.pollers("fa")
        return [m for m in GUARDED if "memory" in rows[m]["guard"]["holding"]]

    def prom_written() -> dict[str, float]:
        out = fa.ssh("stat -c '%n %.3Y' /var/lib/leampoll/metrics/leampoll-m?.prom", check=True)
        return {
            Path(n).stem.removeprefix("leampoll-"): float(t)
            for n, t in (line.split() for line in out.stdout.splitlines())
        }

    def logs() -> dict[str, str]:
        return {m: fa.ssh(f"cat /var/log/supervisor/leampoll-{m}.log").stdout for m in GUARDED}

    wait_until(
        lambda: all(fleet.pollers("fa")[m]["last_poll_ago"] is not None for m in GUARDED),
        60,
        "m1 and m2 polling",
    )
    assert {m: fleet.pollers("fa")[m]["guard"]["holding"] for m in GUARDED} == {
        m: [] for m in GUARDED
    }
    assert fleet.guard_series("memory") == dict.fromkeys(everyone, 0.0)

    pids = {m: fleet.pollers("fa")[m]["pid"] for m in ["solo", *GUARDED]}
    fleet.solo.queue("mem-hog", hog_cmdline(hog))
    rundir = "/mnt/jobdir/solo/mem_hog"
    try:
        wait_until(
            lambda: fa.ssh(f"test -e {rundir}/allocated").returncode == 0,
            120,
            f"the job holding {hog / GIB:.1f} GB",
        )
        wait_until(lambda: holding() == GUARDED, 30, "m1 and m2 holding on memory")
        held_at = time.time()
        pops_before = len(fleet.mem.requests_of("pop"))
        jobs = [fleet.mem.queue(f"mem-{i}", job_cmdline())["id"] for i in range(4)]
        queued_at = time.time()
        # Each holding cycle rewrites its metrics file: a few cycles with the jobs queued.
        wait_until(
            lambda: all(t > queued_at + 3 for t in prom_written().values()),
            30,
            "m1 and m2 checking their guards with jobs queued",
        )
        assert holding() == GUARDED
        assert fleet.mem.requests_of("pop")[pops_before:] == []  # not one pop while held
        assert [fleet.mem.status[j] for j in jobs] == ["queued"] * len(jobs)
        during = fleet.pollers("fa")["m1"]["memory_available"]
        assert {
            m: v for m, v in fleet.guard_series("memory").items() if m in GUARDED
        } == dict.fromkeys(GUARDED, 1.0)
        table = fa.ssh("leampoll status", check=True).stdout
        assert all(re.search(rf"^{m} .* memory \S+<\S+", table, re.M) for m in GUARDED), table
        assert all("guard hold, not popping: memory" in t for t in logs().values()), logs()
    finally:
        released = time.time()  # the job lets its memory go after this, not before
        fa.ssh(f"touch {rundir}/release", check=True)
    fleet.solo.wait_for(lambda p: ended(p, "mem-hog"), timeout=60)
    wait_until(lambda: holding() == [], 60, "the memory holds ended")
    fleet.settle(jobs, 60, portal=fleet.mem)
    assert fleet.guard_series("memory") == dict.fromkeys(everyone, 0.0)
    assert all("guard hold ended" in text for text in logs().values()), logs()
    popped = [r for r in fleet.mem.requests_of("pop") if r.job_id in jobs]
    assert popped and min(r.at for r in popped) > released
    assert reports_per_pop(fleet.solo, "mem-hog") == [1]
    assert fleet.solo.outcome("mem-hog") == "success"
    # The pollers lived through it: the same processes, still RUNNING.
    assert {m: fleet.pollers("fa")[m]["pid"] for m in pids} == pids
    states = fleet.program_states("fa")
    assert {m: states[f"leampoll-{m}"] for m in pids} == dict.fromkeys(pids, "RUNNING")
    case(
        "memory pressure during a job (2 guarded pollers)",
        jobs,
        portal=fleet.mem,
        since=t0,
        quiet_since=quiet,
        note=f"a {hog / GIB:.1f} GB job on the host; guard {need / GIB:.1f} GB, available "
        f"{available / GIB:.1f} GB before, {during / GIB:.1f} GB during; pops held "
        f"{released - held_at:.0f} s, none while held; the job ended once",
    )

"""Learned guards and the shared ledger on a real job server: a systemd sandbox host
converged by `site.yml`, Supervisor, one poller per project, the portal stand-ins.

The host's job filesystem is a 512 MB tmpfs; two projects whose jobs each
write 300 MB cannot run together. With static guards of 100 MB both start
and jobs die on a full disk; with learned needs and the host's ledger, none
die after each project's first run. The same for memory, with the host's
memory cgroup limited to 450 MB above what it uses (so the test never
presses on the machine's memory). Four pollers popping at once never reserve
more than is free, and a kill -9'd poller's reservation is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from leampoll.usage import JobUsage
from testing.fleet import Inventory, Stand, leam_project, stand
from testing.marks import sandbox_hosts
from testing.playbook import recap
from testing.portal_standin import PortalStandin
from testing.resource_jobs import disk_job, memory_job
from testing.sandbox import TEST_STATE_DIR, Host
from tests.conftest import wait_until

PASSWORD = "guards-Pa55"
STATE_DIR = TEST_STATE_DIR.with_name(TEST_STATE_DIR.name + "-guards")
HOST = "gd"
MIB = 2**20
JOBS = 10
# project: its settings beyond the common ones
PROJECTS: dict[str, dict[str, object]] = {
    "s1": {"guard_mode": "static"},
    "s2": {"guard_mode": "static"},
    "l1": {},
    "l2": {},
    "ms1": {"guard_mode": "static"},
    "ms2": {"guard_mode": "static"},
    "ml1": {},
    "ml2": {},
    **{f"r{i}": {"need_disk": "150M"} for i in range(1, 5)},
}
LEDGER = "/run/leampoll/ledger.json"

pytestmark = sandbox_hosts(1800)


class GuardFleet:
    def __init__(self, s: Stand, workdir: Path) -> None:
        self.stand = s
        self.host: Host = s.hosts[HOST]
        self.portals = s.portals
        self.dir = workdir
        self.deployed = Inventory(
            s.sandbox,
            workdir / "inventory.yml",
            projects={
                HOST: [
                    leam_project(
                        name,
                        self.portals[name].url,
                        PASSWORD,
                        speed=0.5,
                        min_free_disk="100M",
                        min_free_mem="100M",
                        **extra,
                    )
                    for name, extra in PROJECTS.items()
                ]
            },
            # A run that filled the disk is not kept: it would keep it full.
            group_vars={"leampoll_extra_args": ["--keep-failed", "0", "--max-backoff", "2"]},
            log_dir=workdir,
        )

    def converge(self) -> None:
        out = self.deployed.converge()
        assert recap(out.stdout)[HOST]["failed"] == 0, out.stdout[-4000:]

    def ssh(self, command: str) -> str:
        return self.host.ssh(command, check=True).stdout

    def history(self, project: str) -> list[JobUsage]:
        text = self.ssh(f"cat /mnt/jobdir/{project}/.leampoll/history.jsonl 2>/dev/null; true")
        runs = [JobUsage.from_json(json.loads(line)) for line in text.splitlines() if line]
        return [r for r in runs if r is not None]

    def status(self) -> dict[str, dict]:
        return {r["project"]: r for r in json.loads(self.ssh("leampoll status --json"))}

    def log(self, project: str) -> str:
        return self.ssh(f"cat /var/log/supervisor/leampoll-{project}.log")

    def ledger(self) -> list[dict]:
        text = self.ssh(f"cat {LEDGER} 2>/dev/null; true")
        return json.loads(text)["entries"] if text.strip() else []

    def run_jobs(self, projects: list[str], cmdline: str, timeout: float = 600) -> dict:
        """Queue JOBS jobs on each project at once; wait until all ended; their outcomes."""
        ids = {p: [f"{p}-{i}" for i in range(JOBS)] for p in projects}
        for i in range(JOBS):
            for p in projects:
                self.portals[p].queue(ids[p][i], cmdline)
        wait_until(
            lambda: all(self.portals[p].outcome(j) is not None for p in ids for j in ids[p]),
            timeout,
            f"the jobs of {projects} ended",
        )
        return {p: [self.portals[p].outcome(j) for j in ids[p]] for p in ids}

    def memory_cgroup(self) -> Path:
        return next(Path(c) for c in self.host.state["cgroups"] if "/memory/" in c)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[GuardFleet]:
    with stand(STATE_DIR, list(PROJECTS), PASSWORD) as s:
        s.up([HOST], jobdir_size={HOST: "512M"})
        f = GuardFleet(s, tmp_path_factory.mktemp("guard-fleet"))
        f.converge()
        wait_until(
            lambda: all(r["last_poll_ago"] is not None for r in f.status().values()),
            60,
            "every poller polling",
        )
        yield f


def short_runs(runs: list[JobUsage]) -> list[JobUsage]:
    return [r for r in runs if r.short_of_resources]


def test_static_guards_let_jobs_die_on_a_full_disk(fleet):
    outcomes = fleet.run_jobs(["s1", "s2"], disk_job(300))
    died = [r for p in ("s1", "s2") for r in short_runs(fleet.history(p))]
    assert died and all(r.ended == "disk_full" for r in died), died
    assert sum(o == "error" for os_ in outcomes.values() for o in os_) >= len(died)


def test_learned_guards_let_no_job_die_on_a_full_disk_after_its_projects_first_run(fleet):
    outcomes = fleet.run_jobs(["l1", "l2"], disk_job(300))
    for p in ("l1", "l2"):
        runs = fleet.history(p)
        assert len(runs) == JOBS
        assert short_runs(runs[1:]) == [], [(r.job_id, r.ended) for r in runs]
        assert outcomes[p][1:] == ["success"] * (JOBS - 1), outcomes
    # The first runs start together on the static floor: one of them at least
    # dies of the full disk, and its need is raised above what it reached.
    raised = [p for p in ("l1", "l2") if "raised after job" in fleet.log(p)]
    assert raised, {p: fleet.log(p)[-2000:] for p in ("l1", "l2")}
    rows = fleet.status()
    for p in ("l1", "l2"):
        need = rows[p]["guard"]["needs"]["disk"]
        assert need["source"] == "learned" and need["need"] >= 300 * MIB * 1.2 - MIB, need
    table = fleet.ssh("leampoll status")
    assert "learned from 9 runs" in table or "learned from 10 runs" in table, table
    # Not one at a time by chance: the other project's job held, saying why.
    assert any("reserved by other jobs" in fleet.log(p) for p in ("l1", "l2"))


def test_static_guards_let_jobs_die_of_memory_and_learned_ones_do_not(fleet):
    group = fleet.memory_cgroup()
    # 450 MB of room above what the host's processes and its tmpfs hold; its
    # page cache is reclaimed to make the room, not counted as room.
    stat = dict(line.split() for line in (group / "memory.stat").read_text().splitlines())
    held = int(stat["total_rss"]) + int(stat["total_shmem"])
    (group / "memory.limit_in_bytes").write_text(str(held + 450 * MIB))
    try:
        fleet.run_jobs(["ms1", "ms2"], memory_job(300))
        died = [r for p in ("ms1", "ms2") for r in short_runs(fleet.history(p))]
        assert died and all(r.ended == "oom" for r in died), died
        outcomes = fleet.run_jobs(["ml1", "ml2"], memory_job(300))
        for p in ("ml1", "ml2"):
            runs = fleet.history(p)
            assert len(runs) == JOBS
            assert short_runs(runs[1:]) == [], [(r.job_id, r.ended) for r in runs]
            assert outcomes[p][1:] == ["success"] * (JOBS - 1), outcomes
    finally:
        (group / "memory.limit_in_bytes").write_text("-1")
    rows = fleet.status()
    assert all(rows[p]["guard"]["needs"]["memory"]["source"] == "learned" for p in ("ml1", "ml2"))


RACE_JOB = (
    "sh -c 'echo start $(date +%s.%N) >> /mnt/jobdir/race.log; sleep 1; "
    "echo end $(date +%s.%N) >> /mnt/jobdir/race.log'"
)


def test_four_pollers_popping_at_once_never_reserve_more_than_is_free(fleet):
    """r1..r4 each need 150 MB of the ~500 MB free: three fit at once, never four."""
    racers = [f"r{i}" for i in range(1, 5)]
    blocks, size = fleet.ssh("stat -f -c '%b %S' /mnt/jobdir").split()
    total = int(blocks) * int(size)
    # Every state of the ledger while they run, read on the host.
    fleet.host.ssh(
        f"(for i in $(seq 600); do cat {LEDGER}; echo; sleep 0.05; done > /var/tmp/ledger.seen) "
        ">/dev/null 2>&1 &",
        check=True,
    )
    outcomes = fleet.run_jobs(racers, RACE_JOB, timeout=300)
    assert all(o == "success" for os_ in outcomes.values() for o in os_), outcomes
    events = sorted(
        (float(t), 1 if kind == "start" else -1)
        for kind, t in (line.split() for line in fleet.ssh("cat /mnt/jobdir/race.log").splitlines())
    )
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert 2 <= peak <= 3, events
    seen = [
        json.loads(line)["entries"]
        for line in fleet.ssh("cat /var/tmp/ledger.seen").splitlines()
        if line.startswith("{")
    ]
    # Idle pollers of the other projects reserve their floor before each pop too.
    reserved = [sum(e["reserved"].get("disk", 0) for e in entries) for entries in seen]
    racing = [
        sum(e["reserved"].get("disk", 0) for e in entries if e["project"] in racers)
        for entries in seen
    ]
    assert seen and max(reserved) <= total and max(racing) <= 3 * 150 * MIB


def test_a_killed_pollers_reservation_is_dropped(fleet):
    portal: PortalStandin = fleet.portals["r1"]
    portal.queue("r1-long", "sleep 15")
    portal.wait_for(lambda p: p.status.get("r1-long") == "running", timeout=60)
    pid = fleet.status()["r1"]["pid"]
    wait_until(
        lambda: any(e["pid"] == pid and e["job"] == "r1-long" for e in fleet.ledger()),
        20,
        "r1's reservation in the ledger",
    )
    fleet.ssh(f"kill -9 {pid}")
    # Supervisor starts it again; its first guard check drops the dead entry.
    wait_until(lambda: all(e["pid"] != pid for e in fleet.ledger()), 60, "the dead entry gone")
    portal.wait_for(lambda p: p.outcome("r1-long") == "success", timeout=120)
    assert "handing it back" in fleet.log("r1")

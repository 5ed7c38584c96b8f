"""A fleet against the real LEAM portal: a systemd sandbox host converged by `site.yml`,
whose pollers run jobs from real portals on the machine's loopback (the hosts share it).

Project `direct` polls one portal; `flap1` and `flap2` poll another through the fault
proxy, which then flaps through every fault mode. Each job appends its start and end to
a ledger on the host (testing/ledger.py), so nothing lost and nothing run twice is read
from both sides: every job's runstatus from the portal, every run from the ledger.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testing.fault_proxy import FaultProxy
from testing.fleet import Inventory, leam_project
from testing.ledger import Runs, job_cmdline
from testing.marks import sandbox_hosts
from testing.playbook import recap
from testing.real_portal.build import Build
from testing.real_portal.portal import SITE, RealPortal
from testing.sandbox import TEST_STATE_DIR, Host, Sandbox
from tests.conftest import wait_until

# Beside the other suites' hosts of the same state dir, never another's.
STATE_DIR = TEST_STATE_DIR.with_name(TEST_STATE_DIR.name + "-real-portal")
FLAP_SECONDS = float(os.environ.get("LEAM_REAL_PORTAL_FLAP_SECONDS", "45"))

pytestmark = [pytest.mark.real_portal, *sandbox_hosts(1500)]


def portal_cmd(seconds: float = 0.0) -> str:
    """The ledger job as the site's scenario_cmd (braces doubled: the portal formats it)."""
    return job_cmdline(seconds=seconds).replace("{", "{{").replace("}", "}}")


@dataclass
class Fleet:
    host: Host
    direct: RealPortal
    flappy: RealPortal
    proxy: FaultProxy
    converge: object

    def runs(self, *projects: str) -> Runs:
        paths = " ".join(f"/mnt/jobdir/{p}/ledger.txt" for p in projects)
        return Runs.parse([self.host.ssh(f"cat {paths} 2>/dev/null; true").stdout])

    def job_processes(self) -> str:
        """Processes working in a run directory on the host (jobs, not pollers)."""
        return self.host.ssh(
            "for p in /proc/[0-9]*; do d=$(readlink $p/cwd 2>/dev/null) && "
            "case $d in /mnt/jobdir/*/*) echo ${p#/proc/} $d;; esac; done; true"
        ).stdout.strip()


@pytest.fixture(scope="module")
def fleet(real_portal_build: Build, tmp_path_factory) -> Iterator[Fleet]:
    sandbox = Sandbox(STATE_DIR)
    sandbox.down_all()  # leftovers of an interrupted earlier run
    workdir: Path = tmp_path_factory.mktemp("real-portal-fleet")
    with (
        RealPortal(real_portal_build) as direct,
        RealPortal(real_portal_build) as flappy,
        FaultProxy(flappy.root_url, site_path=f"/{SITE}") as proxy,
        sandbox.hosts_up(["rp-a"]) as hosts,
    ):
        password = real_portal_build.credentials["poller"]
        direct.set_settings("true", portal_cmd())
        flappy.set_settings("true", portal_cmd(seconds=1))
        inventory = Inventory(
            sandbox,
            workdir / "inventory.yml",
            projects={
                "rp-a": [
                    leam_project("direct", direct.url, password),
                    leam_project("flap1", proxy.url, password),
                    leam_project("flap2", proxy.url, password),
                ]
            },
            group_vars={"leampoll_extra_args": ["--max-backoff", "4", "--timeout", "3"]},
            log_dir=workdir,
        )
        inventory.write().chmod(0o600)
        out = inventory.play()
        yield Fleet(hosts[0], direct, flappy, proxy, out)


def ended_once(fleet: Fleet, portal: RealPortal, projects: tuple[str, ...]) -> None:
    """Every job complete in the portal, each run to its end exactly once, none twice at once."""
    jobs = list(portal.status())
    wait_until(lambda: not fleet.job_processes(), 30, "no job process left on the host")
    runs = fleet.runs(*projects)
    assert portal.status() == dict.fromkeys(jobs, "complete")
    assert {j: runs.completed(j) for j in jobs if runs.completed(j) != 1} == {}
    assert runs.overlapping() == []


def test_a_converged_systemd_host_runs_jobs_from_a_real_portal(fleet):
    out = fleet.converge
    assert out.returncode == 0, out.stdout[-4000:]
    assert recap(out.stdout)["rp-a"]["failed"] == 0
    assert fleet.direct.credentials["poller"] not in out.stdout
    assert fleet.host.ssh("systemctl is-active supervisor").stdout.strip() == "active"
    fleet.direct.queue(*(f"direct-{i}" for i in range(6)))
    wait_until(
        lambda: set(fleet.direct.status().values()) == {"complete"},
        120,
        "every job of the direct portal complete",
    )
    ended_once(fleet, fleet.direct, ("direct",))


def test_flapping_fault_proxy_in_front_of_a_real_portal_loses_nothing_runs_nothing_twice(
    fleet,
):
    assert fleet.converge.returncode == 0, fleet.converge.stdout[-4000:]
    fleet.flappy.queue(*(f"flap-{i}" for i in range(30)))
    played = fleet.proxy.flap(FLAP_SECONDS, period=(1, 6), seed=12, slow_seconds=5)
    assert {fault for fault, _ in played} > {"none"}
    wait_until(
        lambda: set(fleet.flappy.status().values()) == {"complete"},
        240,
        "every job of the flapping portal complete",
    )
    assert sum(fleet.proxy.injected.values()) > 0
    ended_once(fleet, fleet.flappy, ("flap1", "flap2"))

"""Faults between real local pollers and the portal: nothing lost, nothing run twice.

The fast half of the fault suite: real `leampoll` processes on this machine,
the portal stand-in behind the fault proxy. The fleet half (systemd hosts,
Supervisor, reboots) is tests/test_faults.py.
"""

from __future__ import annotations

import time

import pytest

from testing.fault_proxy import FaultProxy
from testing.ledger import Runs, job_cmdline
from testing.reliability import Case
from tests.conftest import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


def ended(portal, job: str) -> bool:
    return portal.status.get(job) in ("complete", "success", "error")


@pytest.fixture
def proxy(portal):
    with FaultProxy(portal.root, site_path=portal.base_path) as p:
        yield p


def start_pollers(start_poller, proxy, tmp_path, n):
    pollers = []
    for i in range(n):
        wd = tmp_path / f"wd{i}"
        wd.mkdir()
        pollers.append(start_poller("--timeout", "2", url=proxy.url, wd=wd))
    return pollers


def record(reliability, name, jobs, runs, proxy, started, note=""):
    """Add the case's figures; the assertions themselves stay in the test."""
    return reliability.add(
        Case(
            name=name,
            jobs=len(jobs),
            faults=dict(proxy.injected),
            lost=sum(1 for j in jobs if runs.completed(j) == 0),
            run_twice=sum(1 for j in jobs if runs.completed(j) > 1) + len(runs.overlapping()),
            seconds=time.monotonic() - started,
            note=note,
        )
    )


def test_portal_down_then_back_nothing_lost(portal, proxy, start_poller, tmp_path, reliability):
    started = time.monotonic()
    ledger = str(tmp_path / "ledger")
    proxy.set("down")
    jobs = [portal.queue(f"down-{i}", job_cmdline(ledger))["id"] for i in range(10)]
    pollers = start_pollers(start_poller, proxy, tmp_path, 3)
    wait_until(lambda: all("unreachable" in p.log for p in pollers), 30, "pollers see the outage")
    proxy.set("none")
    wait_until(lambda: all(ended(portal, j) for j in jobs), 60, "every job ended")
    runs = Runs.parse([(tmp_path / "ledger").read_text()])
    record(reliability, "portal down, then back (3 local pollers)", jobs, runs, proxy, started)
    assert [runs.completed(j) for j in jobs] == [1] * len(jobs)
    assert all(p.proc.poll() is None for p in pollers)


def test_flapping_portal_every_job_ends_once(portal, proxy, start_poller, tmp_path, reliability):
    started = time.monotonic()
    ledger = str(tmp_path / "ledger")
    jobs = [portal.queue(f"flap-{i}", job_cmdline(ledger, 1))["id"] for i in range(60)]
    pollers = start_pollers(start_poller, proxy, tmp_path, 4)
    played = proxy.flap(20, period=(0.3, 1.5), seed=7, slow_seconds=3)
    try:
        wait_until(lambda: all(ended(portal, j) for j in jobs), 120, "every job ended")
    except AssertionError:
        print({j: (portal.status.get(j), portal.events(j)) for j in jobs if not ended(portal, j)})
        for p in pollers:
            print(p.log[-3000:])
        raise
    runs = Runs.parse([(tmp_path / "ledger").read_text()])
    record(
        reliability,
        "portal flapping 20 s through every fault (4 local pollers)",
        jobs,
        runs,
        proxy,
        started,
    )
    assert runs.overlapping() == []
    assert {j: runs.completed(j) for j in jobs if runs.completed(j) != 1} == {}
    assert sum(proxy.injected.values()) > 0, played
    assert all(p.proc.poll() is None for p in pollers)

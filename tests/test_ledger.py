"""The host-wide reservation ledger (leampoll.ledger) with real processes and a real lock.

Several processes reserve at once on one ledger file: every state the file
ever shows keeps the reservations within what is free. Entries of dead
processes (a kill -9, a pid reused by another process) are dropped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leampoll.config import Config
from leampoll.guards import Guards
from leampoll.ledger import Entry, Ledger, Owner, read
from leampoll.units import Size
from tests.conftest import wait_until

ROOT = Path(__file__).parent.parent
MIB = 2**20


def fixed(free: int, total: int = 1000 * MIB, memory: int = 10**12):
    """What a measure under the lock returns when nothing is written meanwhile."""
    return lambda: {"disk": (free, total), "memory": (memory, memory)}


def test_a_reservation_stands_until_released_and_holds_others_back(tmp_path):
    path = tmp_path / "run" / "ledger.json"
    a = Ledger(path, "a", device=1)
    b = Ledger(path, "b", device=1, owner=Owner(os.getppid(), Owner.me().started - 1))
    b.owner = Owner(os.getppid(), _start(os.getppid()))  # another live process
    fits = a.reserve({"disk": 600 * MIB}, fixed(1000 * MIB))
    assert all(f.fits for f in fits)
    assert [e.project for e in read(path)] == ["a"]
    held = b.reserve({"disk": 600 * MIB}, fixed(1000 * MIB))
    assert [(f.fits, f.reserved, f.available) for f in held] == [(False, 600 * MIB, 400 * MIB)]
    assert [e.project for e in read(path)] == ["a"]  # a holding poller keeps nothing
    # Half of a's job is written: free shows it, the rest is still promised.
    a.update(job="j1", used={"disk": 300 * MIB})
    held = b.reserve({"disk": 600 * MIB}, fixed(700 * MIB))
    assert [(f.fits, f.reserved) for f in held] == [(False, 300 * MIB)]
    a.release()
    assert all(f.fits for f in b.reserve({"disk": 600 * MIB}, fixed(1000 * MIB)))
    assert [e.project for e in read(path)] == ["b"]


def test_disk_counts_per_filesystem_and_memory_for_the_whole_host(tmp_path):
    path = tmp_path / "ledger.json"
    other = Ledger(path, "other", device=2, owner=Owner(os.getppid(), _start(os.getppid())))
    other.reserve({"disk": 900 * MIB, "memory": 900 * MIB}, fixed(1000 * MIB, memory=1000 * MIB))
    mine = Ledger(path, "mine", device=1)
    fits = {
        f.resource: f
        for f in mine.reserve(
            {"disk": 900 * MIB, "memory": 200 * MIB}, fixed(1000 * MIB, memory=1000 * MIB)
        )
    }
    assert fits["disk"].fits and fits["disk"].reserved == 0
    assert not fits["memory"].fits and fits["memory"].reserved == 900 * MIB


def _start(pid: int) -> float:
    import psutil

    return psutil.Process(pid).create_time()


def test_a_killed_pollers_reservation_is_dropped_and_a_reused_pid_is_not_mistaken(tmp_path):
    path = tmp_path / "ledger.json"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(800 * MIB)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout and holder.stdout.readline().strip() == "reserved"
        mine = Ledger(path, "mine", device=1)
        assert not mine.reserve({"disk": 500 * MIB}, fixed(1000 * MIB))[0].fits
        # A stale entry with a live pid but another start time: some other process now.
        entries = read(path)
        stale = Entry(os.getpid(), entries[0].started - 100, "stale", 1, {"disk": 900 * MIB})
        path.write_text(json.dumps({"version": 1, "entries": [vars(e) for e in [*entries, stale]]}))
        assert not mine.reserve({"disk": 500 * MIB}, fixed(1000 * MIB))[0].fits
        assert "stale" not in [e.project for e in read(path)]
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        fits = mine.reserve({"disk": 500 * MIB}, fixed(1000 * MIB))
        assert fits[0].fits and fits[0].reserved == 0
        assert [e.project for e in read(path)] == ["mine"]
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


HOLD = """
import sys, time
from pathlib import Path
from leampoll.ledger import Ledger
ledger = Ledger(Path(sys.argv[1]), "holder", device=1)
fits = ledger.reserve({"disk": int(sys.argv[2])}, lambda: {"disk": (1000 * 2**20, 1000 * 2**20)})
print("reserved" if all(f.fits for f in fits) else "held", flush=True)
time.sleep(300)
"""

RACER = """
import sys, time
from pathlib import Path
from leampoll.ledger import Ledger
path, go, free, need, rounds = Path(sys.argv[1]), Path(sys.argv[2]), *map(int, sys.argv[3:6])
ledger = Ledger(path, "p", device=1)
while not go.exists():
    time.sleep(0.001)
won = 0
for _ in range(rounds):
    if all(f.fits for f in ledger.reserve({"disk": need}, lambda: {"disk": (free, free)})):
        won += 1
        time.sleep(0.002)  # the job runs a little
        ledger.release()
print(won, flush=True)
"""


@pytest.mark.timeout(120)
def test_processes_reserving_at_once_never_reserve_more_than_is_free(tmp_path):
    """Eight processes, each reserving 300 of 1000 and releasing, 60 rounds each,
    while an auditor reads every state the ledger file shows."""
    path, go = tmp_path / "ledger.json", tmp_path / "go"
    free, need, rounds = 1000, 300, 60
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(path), str(go), str(free), str(need), str(rounds)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    seen: list[int] = []
    try:
        time.sleep(0)  # the racers wait for `go`; start them together
        go.touch()
        while any(r.poll() is None for r in racers):
            entries = read(path)
            seen.append(sum(e.reserved.get("disk", 0) for e in entries))
        won = [int(r.communicate(timeout=60)[0]) for r in racers]
    finally:
        for r in racers:
            if r.poll() is None:
                r.kill()
                r.wait(10)
    assert max(seen) <= free  # never more promised than is free
    assert max(seen) == 3 * need  # and the room was used: three at a time
    assert sum(won) > rounds  # they took turns
    assert read(path) == []  # every reservation released


def test_the_poller_reserves_in_the_ledger_and_releases_when_the_queue_is_empty(
    portal, start_poller, env, workdir
):
    """A real poller: its need is in the ledger between guards and pop, gone after."""
    ledger = Path(env["LEAMPOLL_LEDGER"])
    portal.queue("slow", "sleep 30")
    poller = start_poller("--need-disk", "1M")
    wait_until(lambda: portal.status.get("slow") == "running", 20, "the job popped")
    entry = wait_until(lambda: next(iter(read(ledger)), None), 10, "a ledger entry")
    assert entry.pid == poller.proc.pid and entry.reserved["disk"] == MIB
    wait_until(lambda: read(ledger) and read(ledger)[0].job == "slow", 10, "the job recorded")
    poller.signal(signal.SIGTERM)
    poller.wait(30)
    assert read(ledger) == []


def test_two_pollers_whose_jobs_need_60_percent_run_one_after_the_other(
    portal, start_poller, env, workdir, tmp_path
):
    """Real pollers of two projects on one filesystem: the second holds on the first's
    reservation, says so in its log, status and metrics, and runs once the first ended."""
    from prometheus_client.parser import text_string_to_metric_families

    from testing.portal_standin import PortalStandin
    from tests.conftest import PASSWORD, USER

    st = os.statvfs(workdir)
    need = int(st.f_bavail * st.f_frsize * 0.6)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    metrics = tmp_path / "b.prom"
    with PortalStandin(USER, PASSWORD, base_path="/b") as other:
        done = tmp_path / "a1.done"
        portal.queue("a1", f"sh -c 'touch started; sleep 6; touch {done}'")
        start_poller("--need-disk", str(need))
        wait_until((workdir / "a1" / "started").exists, 20, "a1 running")
        other.queue("b1", f"test -e {done}")  # succeeds only after a1 has ended
        b = start_poller(
            "--need-disk", str(need), "--metrics-file", str(metrics), url=other.url, wd=other_dir
        )
        b.wait_log("reserved by other jobs")
        assert other.status["b1"] == "queued"

        def series() -> dict[tuple[str, str], float]:
            return {
                (s.name, s.labels.get("resource") or s.labels.get("guard", "")): s.value
                for f in text_string_to_metric_families(metrics.read_text())
                for s in f.samples
            }

        found = wait_until(lambda: metrics.exists() and series(), 10, "b's metrics")
        assert found[("leampoll_guard_need_bytes", "disk")] == need
        assert found[("leampoll_guard_reserved_bytes", "disk")] == pytest.approx(need, rel=0.01)
        assert found[("leampoll_guard_hold", "disk")] == 1
        other.wait_for(lambda p: p.outcome("b1") == "success", timeout=30)
        assert portal.outcome("a1") == "success"


POPPING = """
import sys, time
from pathlib import Path
from leampoll.ledger import Ledger
ledger = Ledger(Path(sys.argv[1]), "other", device=int(sys.argv[2]))
ledger.reserve({"disk": 10**15}, lambda: {"disk": (10**16, 10**16)})
print("reserved", flush=True)
if sys.argv[3] == "popped":
    ledger.update(job="j1")  # its pop brought a job: the reservation is the job's
else:
    time.sleep(0.3)  # the pop in flight finds the queue empty
    ledger.release()
time.sleep(300)
"""


@pytest.mark.parametrize("pop", ["empty", "popped"])
def test_a_poller_waits_out_another_pop_in_flight_but_holds_for_a_running_job(tmp_path, pop):
    """Another poller's reservation before its pop answers (an empty queue, most often)
    is not a reason to hold; the reservation of a job it popped is."""
    config = Config(
        "http://127.0.0.1:9/site",
        "poller",
        "pw",
        tmp_path,
        need_disk=Size(MIB),
        ledger=tmp_path / "ledger.json",
    )
    other = subprocess.Popen(
        [sys.executable, "-c", POPPING, str(config.ledger), str(os.stat(tmp_path).st_dev), pop],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout and other.stdout.readline().strip() == "reserved"
        holding = [f.resource for f in Guards(config).decide().holding]
        assert holding == ([] if pop == "empty" else ["disk"])
    finally:
        other.kill()
        other.wait(10)

"""Learned needs with a real poller, real jobs and a real small filesystem (tmpfs).

The run's usage is recorded in the project's history; the next guard check
uses it: a job that wrote 5 MB makes the need 6 MB (margin 1.2), a job that
died on a full disk raises the need above what it reached, and the hold says
what it waits for. `leampoll status` shows the need and where it came from.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from leampoll.usage import ENDED_DISK_FULL, history_path, read_history
from testing.resource_jobs import memory_job
from tests.conftest import status_json, wait_until

MIB = 2**20


def test_a_run_is_recorded_and_the_need_is_learned_from_it(portal, start_poller, small_fs, env):
    portal.queue("five", "sh -c 'head -c 5242880 /dev/zero > out'")
    p = start_poller(wd=small_fs)
    portal.wait_for(lambda pt: pt.status["five"] == "complete")
    runs = wait_until(lambda: read_history(history_path(small_fs / ".leampoll")), 10, "a run")
    assert runs[0].job_id == "five" and runs[0].ok
    assert 5 * MIB <= runs[0].peak_disk_bytes < 6 * MIB
    row = wait_until(
        lambda: (
            (s := status_json(small_fs, env=env)[0])["guard"]["needs"].get("disk", {}).get("source")
            == "learned"
            and s
        ),
        20,
        "a learned disk need in leampoll status",
    )
    need = row["guard"]["needs"]["disk"]
    assert need["need"] == -(-runs[0].peak_disk_bytes * 12 // 10)
    assert need["why"] == "learned from 1 run"
    p.wait_log("disk need 1.0M -> 6.0M (learned from 1 run)")


def test_a_run_that_died_on_a_full_disk_raises_the_need_and_the_hold_says_why(
    portal, start_poller, small_fs, env
):
    portal.queue("fill", "sh -c 'dd if=/dev/zero of=big bs=1M count=30'")
    p = start_poller(wd=small_fs)
    portal.wait_for(lambda pt: pt.status["fill"] == "complete")
    run = wait_until(lambda: read_history(history_path(small_fs / ".leampoll")), 10, "a run")[0]
    assert run.ended == ENDED_DISK_FULL and run.peak_disk_bytes > 15 * MIB
    # The need now exceeds the free space, even once the failed run is removed.
    (small_fs / "fill" / "big").unlink()
    portal.queue("after", "true")
    p.wait_log("raised after job fill ended disk_full")
    p.wait_log("guard hold, not popping: disk need")
    row = status_json(small_fs, env=env)[0]
    assert row["guard"]["holding"] == ["disk"]
    assert row["guard"]["needs"]["disk"]["source"] == "raised"
    assert row["guard"]["needs"]["disk"]["need"] >= run.peak_disk_bytes * 1.2 - 1
    assert portal.status["after"] == "queued" and not [
        r for r in portal.requests_of("pop") if r.job_id == "after"
    ]
    table = subprocess.run(
        [sys.executable, "-m", "leampoll", "status", str(small_fs)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "raised after job fill ended disk_full" in table, table


CGROUP = Path("/sys/fs/cgroup/memory")


@pytest.fixture
def memory_group(tmp_path) -> Iterator[Path]:
    """A cgroup v1 memory group of the test's own, its processes killed and it removed after."""
    if os.geteuid() != 0 or not CGROUP.is_dir():
        pytest.skip("needs root and the cgroup v1 memory controller")
    group = CGROUP / f"leam-test-guards-{os.getpid()}-{tmp_path.name}"
    group.mkdir()
    yield group
    for pid in (group / "cgroup.procs").read_text().split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    wait_until(lambda: not (group / "cgroup.procs").read_text().strip(), 30, "the group empty")
    group.rmdir()


def test_a_job_killed_by_the_oom_killer_raises_the_memory_need(
    portal, start_poller, workdir, env, memory_group
):
    """The poller in a memory cgroup with 200 MB of room: a job that takes 300 MB is
    killed by the kernel, recorded as oom, and the memory need is raised above what
    it reached; status says so."""
    p = start_poller()
    (memory_group / "cgroup.procs").write_text(str(p.proc.pid))
    usage = int((memory_group / "memory.usage_in_bytes").read_text())
    (memory_group / "memory.limit_in_bytes").write_text(str(usage + 200 * MIB))
    portal.queue("hog", memory_job(300))  # popped once the poller is in the group
    portal.wait_for(lambda pt: pt.status["hog"] == "complete", timeout=60)
    run = wait_until(lambda: read_history(history_path(workdir / ".leampoll")), 10, "a run")[0]
    assert run.ended == "oom" and run.signal == signal.SIGKILL, run
    assert 50 * MIB < run.peak_memory_bytes <= 200 * MIB + usage
    p.wait_log("raised after job hog ended oom")
    row = wait_until(
        lambda: (
            (s := status_json(workdir, env=env)[0])["guard"]["needs"]["memory"]["source"]
            == "raised"
            and s
        ),
        20,
        "a raised memory need in leampoll status",
    )
    assert row["guard"]["needs"]["memory"]["need"] >= run.peak_memory_bytes * 1.2 - 1

"""Every job measured: the run directory walk, the usage of real jobs in process-group
mode (this machine has no systemd), the history file, the report line, status and metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from leampoll.accounting import Sampler, walk
from leampoll.executor import Executor, Outcome, usage_line
from leampoll.jobs import Job
from leampoll.lifecycle import Lifecycle
from leampoll.usage import JobUsage, read_history

MiB = 1 << 20


def test_walk_counts_allocated_bytes_and_entries_without_following_links(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a").write_bytes(b"x" * (2 * MiB))
    (tmp_path / "b").write_bytes(b"y" * MiB)
    (tmp_path / "link").symlink_to("/usr")
    found = walk(tmp_path)
    assert found.inodes == 4  # sub, a, b, link
    assert 3 * MiB <= found.bytes < 3 * MiB + 64 * 1024
    assert found.complete


def test_walk_stops_at_its_cap(tmp_path):
    for i in range(50):
        (tmp_path / f"f{i}").touch()
    found = walk(tmp_path, cap=10)
    assert (found.inodes, found.complete) == (10, False)


def test_sampler_keeps_peaks(tmp_path):
    s = Sampler(tmp_path)
    (tmp_path / "f").write_bytes(b"x" * MiB)
    s.walk_now()
    (tmp_path / "f").unlink()
    s.walk_now()
    s.add_exited(2048, 1.5)
    assert s.peak_disk >= MiB and s.peak_inodes == 1
    assert s.peak_memory == 2 * MiB and s.cpu_seconds == 1.5


def run(tmp_path: Path, cmdline: str, **kw) -> Outcome:
    life = Lifecycle()
    return Executor(tmp_path, life, **kw).execute(Job(id="job-1", cmdline=cmdline), {})


def py(code: str) -> str:
    return subprocess.list2cmdline([sys.executable, "-c", code])


def test_a_job_that_allocates_and_writes_is_measured_within_ten_percent(tmp_path):
    code = (
        "import os\n"
        "b = bytearray(b'1') * (120 << 20)\n"  # touched, not only reserved
        "del b\n"
        "with open('out', 'wb') as f:\n"
        "    for _ in range(80): f.write(b'2' * (1 << 20))\n"
        "    os.fsync(f.fileno())\n"
        "for i in range(30): open(f'f{i}', 'w').close()\n"
    )
    out = run(tmp_path, py(code))
    assert out.ok, out.describe()
    u = out.usage
    assert u is not None
    assert u.mode == "pgroup" and u.ended == "exit" and u.exit_code == 0
    assert 120 * MiB <= u.peak_memory_bytes <= 120 * MiB * 1.1 + 15 * MiB  # + the interpreter
    assert 80 * MiB * 0.9 <= u.peak_disk_bytes <= 80 * MiB * 1.1
    assert u.peak_inodes == 31
    assert u.cpu_seconds > 0 and u.wall_seconds > 0
    assert "usage: wall" in out.describe() and "peak disk" in out.describe()


@pytest.mark.parametrize(
    ("cmdline", "kw", "ended", "code", "sig"),
    [
        ("sh -c 'exit 3'", {}, "exit", 3, None),
        ("sh -c 'kill -SEGV $$'", {}, "signal", None, 11),
        ("sleep 30", {"job_timeout": 0.5, "grace": 0.5}, "timeout", None, 15),
    ],
)
def test_how_a_job_ended_is_recorded(tmp_path, cmdline, kw, ended, code, sig):
    u = run(tmp_path, cmdline, **kw).usage
    assert u is not None
    assert (u.ended, u.exit_code, u.signal) == (ended, code, sig)


def test_a_job_that_cannot_start_still_has_a_usage_record(tmp_path):
    out = run(tmp_path, "no-such-program-here")
    assert not out.ok and "cannot start" in out.describe()
    assert out.usage is not None and out.usage.exit_code is None


def test_usage_line_is_one_line():
    u = JobUsage("j", 0.0, 1.5, 0.25, 300 * MiB, 200 * MiB, 7, "oom", None, 9, "cgroup-v1")
    line = usage_line(u)
    assert "\n" not in line
    assert line == (
        "usage: wall 1.5s, cpu 0.2s, peak memory 300.0M, peak disk 200.0M in 7 inodes, "
        "ended oom (cgroup-v1)"
    )


def test_oom_is_said_with_its_peak():
    u = JobUsage("j", 0.0, 2.0, 0.5, 100 * MiB, 0, 1, "oom", None, 9, "cgroup-v2")
    text = Outcome(False, "run", -9, duration=2.0, oom=True, usage=u).describe()
    assert text.splitlines()[0] == (
        "run failed: killed by the OOM killer (out of memory) at a peak of 100.0M after 2.0s"
    )


def test_the_poller_records_every_job_in_the_history_the_report_and_metrics(
    portal, start_poller, workdir, tmp_path
):
    portal.queue("ok", py("b = bytearray(b'1') * (30 << 20)"))
    portal.queue("bad", "sh -c 'exit 4'")
    metrics = tmp_path / "metrics.prom"
    p = start_poller("-i", "2", "--metrics-file", str(metrics), "--project", "chicago")
    assert p.wait(60) == 0
    runs = read_history(workdir / ".leampoll" / "history.jsonl")
    assert [(r.job_id, r.ended, r.exit_code, r.mode) for r in runs] == [
        ("ok", "exit", 0, "pgroup"),
        ("bad", "exit", 4, "pgroup"),
    ]
    assert runs[0].peak_memory_bytes >= 30 * MiB
    for job in ("ok", "bad"):
        message = portal.ending(job).form["message"]
        assert "usage: wall" in message, message
    text = metrics.read_text()
    assert 'leampoll_job_peak_memory_bytes_count{project="chicago"} 2.0' in text
    assert 'leampoll_job_peak_disk_bytes_count{project="chicago"} 2.0' in text
    assert 'leampoll_job_cpu_seconds_count{project="chicago"} 2.0' in text
    assert "jobs: process groups" in p.log


def test_status_says_how_jobs_are_contained(portal, start_poller, workdir, env):
    portal.queue("long", "sleep 30")
    p = start_poller()
    portal.wait_for(lambda s: s.status.get("long") == "running", timeout=30)
    out = subprocess.run(
        [sys.executable, "-m", "leampoll", "status", "--json", str(workdir)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    row = json.loads(out)[0]
    assert row["jobs_mode"].startswith("jobs: process groups (")
    text = subprocess.run(
        [sys.executable, "-m", "leampoll", "status", str(workdir)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"{workdir.name}: jobs: process groups (" in text
    p.stop()

"""A poller under test: the flags it is started with, its jobs' command lines, what it writes.

Tests, the supervisord harness and the benchmarks start the real `leampoll`
with the same few flags (guard thresholds any test machine meets, a quick
poll): written here once, so a new guard's threshold is added in one place.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

LEAMPOLL = [sys.executable, "-m", "leampoll"]


def poller_flags(
    workdir: str | os.PathLike[str],
    speed: float | None = 0.2,
    max_backoff: float | None = 0.5,
) -> list[str]:
    """`--workdir` and guard thresholds any test machine meets; with `speed` and
    `max_backoff` (None: the poller's defaults) a poll quick enough that a test
    waits seconds, not minutes."""
    flags = ["--workdir", str(workdir)]
    flags += ["--min-free-disk", "1M", "--min-free-mem", "1M", "--min-free-inodes", "10"]
    if speed is not None:
        flags += ["--speed", f"{speed:g}"]
    if max_backoff is not None:
        flags += ["--max-backoff", f"{max_backoff:g}"]
    return flags


def sh(script: str) -> str:
    """A cmdline running a shell script (jobs are run without a shell themselves)."""
    return "sh -c " + json.dumps(script)


def workdir_status(workdir: Path) -> dict | None:
    """The poller's own status file in workdir, or None while there is none (or half of one)."""
    path = workdir / ".leampoll" / "status.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def status_json(*workdirs: Path, env: dict[str, str] | None = None) -> list[dict]:
    """`leampoll status --json` of the workdirs."""
    out = subprocess.run(
        [*LEAMPOLL, "status", "--json", *map(str, workdirs)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env=env,
    )
    return json.loads(out.stdout)


def samples(path: Path) -> dict[tuple, float]:
    """Every sample of a metrics file: {(name, *sorted label pairs): value}."""
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            found[(s.name, *sorted(s.labels.items()))] = s.value
    return found

"""Memory as the poller's cgroups bound it (v2 and v1), not only as the machine has it.

In a container or a host confined to a cgroup, /proc/meminfo shows the
machine's memory; the jobs are bound by the smallest limit above them. So
what is available is the least of the machine's available memory and each
limit's headroom (limit - usage + reclaimable file cache).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import psutil

ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 2**60  # v1 reports "no limit" as a huge page-aligned number


def _cgroup_dirs() -> list[Path]:
    """This process's memory cgroup and its ancestors, deepest first, as mounted here."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "" and (ROOT / "cgroup.controllers").exists():
            base = ROOT
        elif "memory" in controllers.split(","):
            base = ROOT / "memory"
        else:
            continue
        d = base / rel.strip().lstrip("/")
        return [d, *[p for p in d.parents if p.is_relative_to(base)]]
    return []


def _read_int(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = path.read_text().strip()
        return None if text == "max" else int(text)
    return None


def _stat(path: Path, *keys: str) -> int:
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k in keys:
                return int(v)
    return 0


def headroom() -> int | None:
    """The least headroom of the memory limits above this process; None when unbounded."""
    least = None
    for d in _cgroup_dirs():
        if (d / "memory.max").exists():  # v2
            limit, usage = _read_int(d / "memory.max"), _read_int(d / "memory.current")
            cache = _stat(d / "memory.stat", "inactive_file")
        else:
            limit, usage = (
                _read_int(d / "memory.limit_in_bytes"),
                _read_int(d / "memory.usage_in_bytes"),
            )
            cache = _stat(d / "memory.stat", "total_inactive_file")
        if limit is None or usage is None or limit >= UNLIMITED:
            continue
        room = max(0, limit - usage + cache)
        least = room if least is None else min(least, room)
    return least


def available() -> tuple[int, int]:
    """(available, total) memory for jobs started from this process."""
    mem = psutil.virtual_memory()  # `available` counts reclaimable page cache
    room = headroom()
    if room is None:
        return mem.available, mem.total
    return min(mem.available, room), mem.total


def oom_kills() -> int:
    """OOM kills the kernel counted in this process's memory cgroups and their ancestors."""
    total = 0
    for d in _cgroup_dirs():
        events = d / "memory.events"
        total += _stat(events if events.exists() else d / "memory.oom_control", "oom_kill")
    return total

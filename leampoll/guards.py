"""Guards: can this server take a job right now? Asked before every pop.

A popped job is `running` in the portal at once, so a job the server cannot
run must never be popped: the guards run first, and while one holds the
poller waits instead of popping.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from leampoll.config import Config
from leampoll.units import Size, human


@dataclass(frozen=True)
class Reading:
    """One guard's figures: what is free, of what total, and what is required."""

    guard: str  # disk, inodes, memory
    free: int
    total: int
    required: int

    @property
    def holds(self) -> bool:
        return self.free < self.required

    def __str__(self) -> str:
        fmt = str if self.guard == "inodes" else human
        return f"{self.guard} {fmt(self.free)} free of {fmt(self.total)}, need {fmt(self.required)}"


def read(workdir: Path, disk: Size, inodes: Size, memory: Size) -> list[Reading]:
    """Current figures of the workdir's filesystem and of available memory."""
    st = os.statvfs(workdir)
    disk_total = st.f_blocks * st.f_frsize
    disk_free = st.f_bavail * st.f_frsize  # what an unprivileged job can use
    mem = psutil.virtual_memory()  # `available` counts reclaimable page cache
    readings = [
        Reading("disk", disk_free, disk_total, disk.bytes_of(disk_total)),
        Reading("memory", mem.available, mem.total, memory.bytes_of(mem.total)),
    ]
    if st.f_files:  # some filesystems (btrfs, tmpfs with nr_inodes=0) report none
        readings.insert(1, Reading("inodes", st.f_favail, st.f_files, inodes.bytes_of(st.f_files)))
    return readings


def check(config: Config) -> list[Reading]:
    """All readings for the configured thresholds."""
    return read(config.workdir, config.min_free_disk, config.min_free_inodes, config.min_free_mem)


def holding(readings: list[Reading]) -> list[Reading]:
    return [r for r in readings if r.holds]

"""What a running job uses: sampled peaks of memory, disk and inodes, at a bounded cost.

Memory and CPU come from the job's cgroup where there is one (the kernel
keeps the peak); elsewhere the job's process tree is sampled with psutil and
its main process's own peak (`wait4`'s ru_maxrss) is added at its end.

Disk and inodes are the bytes allocated (st_blocks) and entries in the run
directory, found by walking it: at most every `DISK_EVERY` seconds and never
more often than 20 times the last walk's duration (so at most 5% of one core),
each walk stopping after `WALK_CAP` entries, plus one last walk at the end.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from leampoll.cgroups import JobCgroup

SAMPLE_EVERY = 5.0  # seconds between samples of a running job
DISK_EVERY = 15.0
DISK_SHARE = 20  # a walk waits at least this many times its own duration
WALK_CAP = 200_000  # entries per walk


@dataclass(frozen=True)
class Walk:
    """The run directory's size in one walk; `complete` False when the cap stopped it."""

    bytes: int
    inodes: int
    complete: bool = True


def walk(root: Path, cap: int = WALK_CAP) -> Walk:
    """Allocated bytes and entries below root; links are counted, never followed."""
    total = inodes = 0
    stack = [str(root)]
    while stack:
        top = stack.pop()
        with contextlib.suppress(OSError), os.scandir(top) as entries:
            for entry in entries:
                inodes += 1
                if inodes > cap:
                    return Walk(total, inodes - 1, complete=False)
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
    return Walk(total, inodes)


def tree_rss(pid: int) -> int:
    """Resident memory of a process and its descendants (a process-group job's sample)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


@dataclass
class Sampler:
    """The peaks of one job so far; `sample()` is cheap to call often."""

    rundir: Path
    cgroup: JobCgroup | None = None
    started: float = field(default_factory=time.monotonic)
    peak_memory: int = 0
    memory_now: int = 0
    peak_disk: int = 0
    peak_inodes: int = 0
    cpu_seconds: float = 0.0
    exited_cpu: float = 0.0  # the stages' main processes and what they reaped (wait4)
    pids: list[int] = field(default_factory=list)  # process-group mode: the stages' main pids
    _next_walk: float = 0.0

    def sample(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._memory()
        if now >= self._next_walk:
            self.walk_now(now)

    def walk_now(self, now: float | None = None) -> None:
        began = time.monotonic()
        found = walk(self.rundir)
        spent = time.monotonic() - began
        self.peak_disk = max(self.peak_disk, found.bytes)
        self.peak_inodes = max(self.peak_inodes, found.inodes)
        self._next_walk = (now or began) + max(DISK_EVERY, DISK_SHARE * spent)

    def _memory(self) -> None:
        if self.cgroup is not None:
            current = self.cgroup.memory_current()
            peak = self.cgroup.memory_peak()
            cpu = self.cgroup.cpu_seconds()
            if cpu is not None:
                self.cpu_seconds = max(self.cpu_seconds, cpu)
            self.memory_now = current or 0
            self.peak_memory = max(self.peak_memory, peak or 0, self.memory_now)
            return
        self.memory_now = sum(tree_rss(p) for p in self.pids[-1:])
        self.peak_memory = max(self.peak_memory, self.memory_now)

    def add_exited(self, maxrss_kib: int, cpu: float) -> None:
        """A process-group stage's main process ended: its own peak and CPU (wait4)."""
        self.peak_memory = max(self.peak_memory, maxrss_kib * 1024)
        # Where the cgroup keeps no CPU time (cgroup v1 without cpuacct), this is it.
        self.exited_cpu += cpu
        self.cpu_seconds = max(self.cpu_seconds, self.exited_cpu)

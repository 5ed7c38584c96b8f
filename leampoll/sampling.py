"""STOPGAP (until the executor's cgroup accounting lands): a job's usage, sampled with psutil.

While a job's run stage goes on, a thread samples every SAMPLE_EVERY seconds
the resident memory of the job's process tree and the bytes and inodes in
its run directory, keeping the peaks; the end is sampled once more. How the
job ended is told apart for the guards: a run that failed after its
filesystem was found full (while it ran or at its end; or with ENOSPC/EDQUOT
in its log) is `disk_full`, one killed by
SIGKILL after the kernel counted an OOM kill (cgroup memory.events) or with
its memory near what was available at its start is `oom`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from leampoll import usage as u
from leampoll.memlimit import available as memory_available
from leampoll.memlimit import oom_kills

SAMPLE_EVERY = 0.2
FULL_SHARE = 0.01  # a filesystem with less free than this share (or FULL_BYTES) is full
FULL_BYTES = 4 * 1024**2
NO_SPACE = ("No space left on device", "Disk quota exceeded")
NEAR_LIMIT = 0.9

# Told the current figures now and then: {"disk": bytes, "memory": bytes, "inodes": n}.
OnSample = Callable[[dict[str, int]], None]


def tree_rss(pid: int) -> int:
    """Resident memory of a process and its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def dir_usage(path: Path) -> tuple[int, int]:
    """Bytes allocated and entries below `path` (links not followed)."""
    size = count = 0
    stack = [str(path)]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as it:
            for entry in it:
                count += 1
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    size += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
    return size, count


def filesystem_full(path: Path) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    free = st.f_bavail * st.f_frsize
    return free < max(FULL_BYTES, FULL_SHARE * st.f_blocks * st.f_frsize)


class Sampler:
    """Peaks of one job's run stage; `usage()` once it has ended."""

    def __init__(self, rundir: Path, on_sample: OnSample | None = None) -> None:
        self.rundir = rundir
        self.on_sample = on_sample
        self.peak = {"disk": 0, "memory": 0, "inodes": 0}
        self.pid = 0
        self.began = time.time()
        self.cpu0 = 0.0
        self.memory_at_start = memory_available()[0]
        self.ooms_at_start = oom_kills()
        self.saw_full = False  # its filesystem was found full while it ran
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        self.pid = pid
        self._thread = threading.Thread(target=self._loop, name="usage-sampler", daemon=True)
        self._thread.start()

    def sample(self) -> dict[str, int]:
        disk, inodes = dir_usage(self.rundir)
        now = {"disk": disk, "memory": tree_rss(self.pid) if self.pid else 0, "inodes": inodes}
        for k, v in now.items():
            self.peak[k] = max(self.peak[k], v)
        # A job dying of a full disk often cannot even log it, and another
        # job's space may be freed before it ends: note it as it happens.
        self.saw_full = self.saw_full or filesystem_full(self.rundir)
        return now

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            now = self.sample()
            if self.on_sample:
                with contextlib.suppress(Exception):  # a report, never the job's business
                    self.on_sample(now)
            # A run directory of many files is walked less often.
            self._stop.wait(max(SAMPLE_EVERY, 10 * (time.monotonic() - began)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.sample()  # the final figures

    def usage(
        self,
        job_id: str,
        returncode: int | None,
        timed_out: bool,
        interrupted: bool,
        log_tail: str,
    ) -> u.JobUsage:
        """The record of the run, with how it ended."""
        ended, sig = u.ENDED_EXIT, None
        if interrupted:
            ended = u.ENDED_INTERRUPTED
        elif timed_out:
            ended = u.ENDED_TIMEOUT
        elif returncode is not None and returncode < 0:
            ended, sig = u.ENDED_SIGNAL, -returncode
            if sig == signal.SIGKILL and (
                oom_kills() > self.ooms_at_start
                or self.peak["memory"] >= NEAR_LIMIT * self.memory_at_start
            ):
                ended = u.ENDED_OOM
        failed = ended in (u.ENDED_EXIT, u.ENDED_SIGNAL) and returncode != 0
        if failed and (self.saw_full or any(s in log_tail for s in NO_SPACE)):
            ended = u.ENDED_DISK_FULL
        return u.JobUsage(
            job_id=job_id,
            started=self.began,
            wall_seconds=time.time() - self.began,
            peak_memory_bytes=self.peak["memory"],
            peak_disk_bytes=self.peak["disk"],
            peak_inodes=self.peak["inodes"],
            ended=ended,
            exit_code=returncode if returncode is not None and returncode >= 0 else None,
            signal=sig,
            mode="pgroup",
        )

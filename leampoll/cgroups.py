"""A cgroup per job: which mode is in effect, the job's unit, and what it used.

On a host with systemd as PID 1 every job (its checkout and its run) lives in
a transient scope unit `leam-job-<project>-<rundir>.scope` in the host's
`leam-jobs.slice`. The poller runs unprivileged, and systemd's D-Bus method
that creates a transient unit cannot be limited by unit name in polkit, so
the poller never gets that right itself: it asks a small root-owned helper
(installed by the leampoll role, allowed through one sudoers line) to make,
join and stop units named `leam-job-*` holding the poller's own processes,
nothing else. The unit's name carries project and job, so a restarted poller
finds an orphan by name, never by a pid that may have been reused.

Everything else (no systemd, no memory controller, no helper) runs jobs as
process groups, measured by sampling (leampoll.accounting).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("leampoll")

JOB_SLICE = "leam-jobs.slice"
SLICE_PATH = "leam.slice/leam-jobs.slice"  # systemd nests a slice by the dashes of its name
UNIT_PREFIX = "leam-job-"
HELPER = Path("/usr/local/libexec/leampoll/job-unit")
CGROUP_ROOT = Path("/sys/fs/cgroup")
HELPER_TIMEOUT = 30.0

MODE_V2 = "cgroup-v2"
MODE_V1 = "cgroup-v1"
MODE_PGROUP = "pgroup"

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
MAX_PROJECT = 60


def _safe(text: str, limit: int) -> str:
    """Letters, digits and '_' only (so the name's dashes stay separators), bounded."""
    name = _UNSAFE.sub("_", text) or "x"
    if len(name) > limit:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        name = f"{name[: limit - 9]}_{digest}"
    return name


def unit_name(project: str, rundir: str) -> str:
    """The job's scope: `leam-job-<project>-<run directory name>.scope` (under 255 chars).

    The run directory name (executor.rundir_name) is already [A-Za-z0-9_],
    at most 100 characters, and unique per job in the workdir.
    """
    return f"{UNIT_PREFIX}{_safe(project, MAX_PROJECT)}-{_safe(rundir, 120)}.scope"


@dataclass(frozen=True)
class Limits:
    """A job's bounds; None leaves the slice's."""

    memory_max: int | None = None  # bytes
    tasks_max: int | None = None
    cpu_weight: int | None = None  # 1..10000, systemd's CPUWeight= (v1: cpu.shares)

    def helper_args(self) -> list[str]:
        args = []
        if self.memory_max:
            args += ["--memory-max", str(self.memory_max)]
        if self.tasks_max:
            args += ["--tasks-max", str(self.tasks_max + 1)]  # +1: the unit's keeper
        if self.cpu_weight:
            args += ["--cpu-weight", str(self.cpu_weight)]
        return args


@dataclass(frozen=True)
class Mode:
    """How jobs are contained on this host, and why, for --check and status."""

    name: str  # MODE_V2, MODE_V1 or MODE_PGROUP
    reason: str

    @property
    def cgroup(self) -> bool:
        return self.name != MODE_PGROUP

    @property
    def version(self) -> int:
        return 2 if self.name == MODE_V2 else 1

    def describe(self) -> str:
        label = "process groups" if self.name == MODE_PGROUP else self.name
        return f"jobs: {label} ({self.reason})"


def cgroup_version(root: Path = CGROUP_ROOT) -> int | None:
    """2 on a unified hierarchy with the memory controller, 1 with a v1 memory
    hierarchy (legacy or hybrid), None without a memory controller."""
    controllers = root / "cgroup.controllers"
    if controllers.exists():
        with contextlib.suppress(OSError):
            if "memory" in controllers.read_text().split():
                return 2
        return None
    if (root / "memory" / "memory.max_usage_in_bytes").exists():
        return 1
    return None


def detect(enabled: bool = True, helper: Path = HELPER, root: Path = CGROUP_ROOT) -> Mode:
    """The mode for this host: a cgroup per job where systemd and the helper allow it."""
    if not enabled:
        return Mode(MODE_PGROUP, "--job-cgroups off")
    if not Path("/run/systemd/system").is_dir():
        return Mode(MODE_PGROUP, "no systemd as PID 1")
    version = cgroup_version(root)
    if version is None:
        return Mode(MODE_PGROUP, f"no memory controller under {root}")
    if not helper.exists():
        return Mode(
            MODE_PGROUP, f"no job-unit helper at {helper} (installed by the leampoll_jobs role)"
        )
    result = run_helper(helper, "check")
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or ["no answer"])[-1]
        return Mode(MODE_PGROUP, f"job-unit helper refused: {why}")
    return Mode(MODE_V2 if version == 2 else MODE_V1, result.stdout.strip() or JOB_SLICE)


def run_helper(
    helper: Path, *args: str, timeout: float = HELPER_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """The root helper through sudo (-n: never a password prompt)."""
    argv = [str(helper), *args] if os.geteuid() == 0 else ["sudo", "-n", str(helper), *args]
    try:
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(argv, 1, "", str(exc))


@dataclass(frozen=True)
class JobCgroup:
    """The files of one job's cgroup (v2: one directory; v1: one per controller)."""

    unit: str
    version: int
    root: Path = CGROUP_ROOT

    def file(self, controller: str, name: str) -> Path:
        rel = f"{SLICE_PATH}/{self.unit}"
        if self.version == 2:
            return self.root / rel / name
        return self.root / controller / rel / name

    def _int(self, controller: str, name: str) -> int | None:
        try:
            return int(self.file(controller, name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _keyed(self, controller: str, name: str, key: str) -> int | None:
        try:
            text = self.file(controller, name).read_text()
        except OSError:
            return None
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == key:
                with contextlib.suppress(ValueError):
                    return int(parts[1])
        return None

    def memory_current(self) -> int | None:
        name = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        return self._int("memory", name)

    def memory_peak(self) -> int | None:
        """The kernel's own peak (v2 memory.peak since Linux 5.19; v1 max_usage_in_bytes)."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        return self._int("memory", name)

    def cpu_seconds(self) -> float | None:
        if self.version == 2:
            usec = self._keyed("cpu", "cpu.stat", "usage_usec")
            return None if usec is None else usec / 1e6
        nsec = self._int("cpuacct", "cpuacct.usage")
        return None if nsec is None else nsec / 1e9

    def oom_kills(self) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        return self._keyed("memory", name, "oom_kill") or 0

    def pids(self) -> list[int]:
        controller = "systemd"  # v1: the named hierarchy where systemd keeps every unit
        try:
            text = self.file(controller, "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split() if p.isdigit()]


@dataclass
class Units:
    """Make, join and stop job units through the helper; loud when it fails."""

    helper: Path = HELPER
    grace: float = 10.0

    def start(self, unit: str, pids: list[int], limits: Limits) -> str | None:
        """Create the unit holding pids; the helper's complaint, or None when done."""
        args = ["start", unit, *map(str, pids), "--grace", f"{self.grace:g}", *limits.helper_args()]
        return self._call(*args)

    def attach(self, unit: str, pid: int) -> str | None:
        return self._call("attach", unit, str(pid))

    def stop(self, unit: str) -> str | None:
        """Stop the unit: TERM to all its processes, KILL after the grace; waits for it."""
        return self._call("stop", unit, timeout=self.grace + HELPER_TIMEOUT)

    def _call(self, *args: str, timeout: float = HELPER_TIMEOUT) -> str | None:
        result = run_helper(self.helper, *args, timeout=timeout)
        if result.returncode == 0:
            return None
        why = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        log.error("job unit helper %s %s failed: %s", args[0], args[1], why)
        return why


KILL_ROUNDS = 100


def kill_all(cgroup: JobCgroup, grace: float, spare: set[int] | None = None) -> int:
    """Stop every process of a job's cgroup but `spare`: TERM, up to `grace` seconds, KILL.

    They run as the poller's user, so no privilege is needed. The processes
    are read from the cgroup again each round, so what forks meanwhile goes
    too (TasksMax bounds how many). Returns how many were found.
    """
    spare = spare or set()

    def left() -> list[int]:
        return [p for p in cgroup.pids() if p not in spare]

    found = left()
    if not found:
        return 0
    _signal(found, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while left() and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(KILL_ROUNDS):
        rest = left()
        if not rest:
            break
        _signal(rest, signal.SIGKILL)
        time.sleep(0.02)
    else:
        log.error("%s: processes %s survive SIGKILL", cgroup.unit, left())
    return len(found)


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def unit_active(unit: str) -> bool:
    """systemd still lists the unit as active (no privilege needed to ask)."""
    try:
        return (
            subprocess.run(
                ["systemctl", "is-active", "--quiet", unit],
                stdin=subprocess.DEVNULL,
                timeout=HELPER_TIMEOUT,
                check=False,
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def running_units(project: str) -> list[str]:
    """The job units of a project systemd knows (no privilege needed to list)."""
    pattern = f"{UNIT_PREFIX}{_safe(project, MAX_PROJECT)}-*.scope"
    try:
        out = subprocess.run(
            ["systemctl", "list-units", "--plain", "--no-legend", pattern],
            capture_output=True,
            text=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.split()[0] for line in out.splitlines() if line.split()]

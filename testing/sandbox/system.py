"""What the hosts need of the machine: commands run with their output kept,
mounts, processes, cgroups and a file lock, all found by path or pid (never by name)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

_T0 = time.monotonic()


class SandboxError(RuntimeError):
    """A sandbox step failed; the message says which and why."""


def default_log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.2f}s] {message}", file=sys.stderr, flush=True)


def run_command(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float | None = None,
    input: str | None = None,
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing output so a failure can report it (as `what`)."""
    proc = subprocess.run(
        [str(c) for c in cmd],
        env=dict(env) if env is not None else None,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise SandboxError(
            f"{what or shlex.join(str(c) for c in cmd)} exited {proc.returncode}:\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    return proc


# --------------------------------------------------------------------------
# mounts and processes
# --------------------------------------------------------------------------


def _unescape_mount(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def mounts_under(path: str | os.PathLike[str]) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, in mount order."""
    base = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = _unescape_mount(line.split()[4])
            if target == base or target.startswith(base.rstrip("/") + "/"):
                found.append(target)
    return found


def unmount_all_under(path: str | os.PathLike[str]) -> list[str]:
    """Unmount everything at or below ``path``, deepest and newest first.

    Falls back to a lazy unmount when a mount is busy, so teardown always
    finishes; returns what was unmounted.
    """
    done: list[str] = []
    for _ in range(100):  # stacked mounts need several passes
        targets = mounts_under(path)
        if not targets:
            return done
        # newest first, then deepest first: children go before parents
        order = sorted(enumerate(targets), key=lambda it: (it[1].count("/"), it[0]), reverse=True)
        for _, target in order:
            if run_command(["umount", target], check=False).returncode != 0:
                run_command(["umount", "-l", target], check=False)
            done.append(target)
    left = mounts_under(path)
    if left:
        raise SandboxError(f"could not unmount {left}")
    return done


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` (clock ticks since boot), None if it is gone.

    Stored next to a pid so teardown never signals a recycled pid.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: split after the last ')'
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None  # a zombie holds nothing any more
    return int(fields[19])


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def same_process(pid: int | None, start: int | None) -> bool:
    return pid is not None and start is not None and proc_start_time(pid) == start


def wait_gone(pid: int, start: int | None, timeout: float) -> bool:
    """Poll until ``pid`` (with that start time) has exited or become a zombie."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not same_process(pid, start):
            return True
        time.sleep(0.02)
    return not same_process(pid, start)


def cgroup_hierarchies() -> list[Path]:
    """Mount points of the machine's cgroup hierarchies (v1 and v2) below /sys/fs/cgroup."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            target = _unescape_mount(fields[4])
            if fstype in ("cgroup", "cgroup2") and target.startswith("/sys/fs/cgroup/"):
                found.append(Path(target))
    return found


def make_cgroup(cgroup: Path) -> None:
    """Make a cgroup a process can join (a v1 cpuset needs its cpus and mems first)."""
    cgroup.mkdir(exist_ok=True)
    for knob in ("cpuset.cpus", "cpuset.mems"):
        if (cgroup / knob).exists() and not (cgroup / knob).read_text().strip():
            (cgroup / knob).write_text((cgroup.parent / knob).read_text())


def cgroup_procs(cgroup: Path) -> list[int]:
    """Pids in ``cgroup`` and every cgroup below it."""
    pids: list[int] = []
    for procs in cgroup.rglob("cgroup.procs") if cgroup.is_dir() else ():
        with contextlib.suppress(OSError, ValueError):
            pids += [int(p) for p in procs.read_text().split()]
    return pids


def wait_cgroup_empty(cgroup: Path, timeout: float) -> None:
    """Wait until no process is left in ``cgroup`` (killed processes take a moment)."""
    deadline = time.monotonic() + timeout
    while cgroup_procs(cgroup):
        if time.monotonic() > deadline:
            raise SandboxError(f"processes {cgroup_procs(cgroup)} still in {cgroup}")
        time.sleep(0.02)


def remove_cgroup(cgroup: Path, keep_top: bool = True) -> None:
    """Remove a host's cgroup directories depth-first; they must hold no process."""
    if not cgroup.is_dir():
        return
    dirs = sorted(
        (p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
    )
    for d in [*dirs, *([] if keep_top else [cgroup])]:
        try:
            d.rmdir()
        except OSError as exc:
            raise SandboxError(f"cannot remove cgroup {d}: {exc}") from exc


@contextlib.contextmanager
def flock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[int]:
    """Hold an exclusive lock on ``path`` so concurrent callers take turns.

    Yields the lock's file descriptor: a child that inherits it keeps the
    lock held until it exits, even if this process dies first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield f.fileno()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def require_root() -> None:
    if os.geteuid() != 0:
        raise SandboxError("sandbox hosts need root (mounts, namespaces, chroot)")


def port_open(address: str, port: int) -> bool:
    """Whether something accepts TCP connections there (a host's sshd, or a stranger)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        try:
            s.connect((address, port))
        except OSError:
            return False
        return True

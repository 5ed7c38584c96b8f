"""Job execution: the run directory, the checkout, the job's cgroup or process group.

Nothing here talks to the portal. Commands are split shell-style and run
without a shell, stdin closed, each in a session (and so a process group) of
its own, so a timeout or a stop reaches the job's children too and never the
poller itself. Where systemd allows it (leampoll.cgroups) the whole job also
lives in a scope unit of its own, which a daemon it starts cannot leave: the
job ends with nothing of it left. Every job is measured (leampoll.accounting)
into `Outcome.usage`. What an earlier, killed poller left running (its job's
unit, its process groups) is stopped here too (`Executor.stop_orphan`), the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from leampoll import cgroups, memlimit
from leampoll.accounting import SAMPLE_EVERY, Sampler
from leampoll.cgroups import MODE_PGROUP, JobCgroup, Limits, Mode, Units
from leampoll.checkout import plan as plan_checkout
from leampoll.jobs import Job
from leampoll.lifecycle import COLD, Lifecycle
from leampoll.units import human
from leampoll.usage import (
    ENDED_DISK_FULL,
    ENDED_EXIT,
    ENDED_INTERRUPTED,
    ENDED_OOM,
    ENDED_SIGNAL,
    ENDED_TIMEOUT,
    JobUsage,
)

MAX_NAME = 100
# Below this much free space on the run directory's filesystem, a failed job
# is recorded as ended by a full disk.
DISK_FULL_BELOW = 16 * 1024 * 1024
NO_SPACE = ("No space left on device", "Disk quota exceeded")  # ENOSPC, EDQUOT as tools say them
# A stage's process in a job's cgroup: held until the helper has put it in the
# unit (its stdin, a pipe from the poller, says go), made a fair OOM victim
# again (the poller is not one), then the job's own command with stdin closed
# as always. A poller killed meanwhile closes the pipe: the job never starts.
GATE = (
    'read -r go && [ "$go" = go ] || exit 125; '
    'echo 0 >/proc/self/oom_score_adj 2>/dev/null; exec "$@" </dev/null'
)
TAIL_LINES = 20
TAIL_CHARS = 2000

# Nothing in a checkout may wait for a password: it would hang the poller.
CHECKOUT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
    "SVN_SSH": "ssh -o BatchMode=yes",
}


# Credentials are the job's, not the checkout's.
CHECKOUT_DROP = frozenset(
    {
        "PORTAL_PASSWORD",
        "PORTAL_USER",
        "LEAMPOLL_PASSWORD",
        "LEAMPOLL_USER",
        "DISPLAY",
        "SSH_ASKPASS",
    }
)


def rundir_name(job_id: str) -> str:
    """The old poller's naming, made safe: never leaves the workdir, never too long.

    Runs of spaces and dashes become '_', other characters than ASCII letters,
    digits and '_' are dropped, then leading non-letters. So '../', '/etc' or
    NUL cannot survive; an empty result or a long one gets a hash of the id.
    """
    name = re.sub(r"[-\s]+", "_", job_id)
    name = re.sub(r"[^A-Za-z0-9_]", "", name)
    name = re.sub(r"^[^A-Za-z]+", "", name)
    digest = hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    if not name:
        return f"job_{digest}"
    if len(name) > MAX_NAME:
        return f"{name[: MAX_NAME - 13]}_{digest}"
    return name


@dataclass
class Outcome:
    """How a job ended. `stage` names what failed: setup, checkout or run."""

    ok: bool
    stage: str = "run"
    returncode: int | None = None
    timed_out: bool = False
    interrupted: bool = False
    duration: float = 0.0
    detail: str = ""
    tail: str = ""
    oom: bool = False  # killed by the OOM killer (seen in its cgroup)
    usage: JobUsage | None = None  # what the job used; set by Executor.execute

    def describe(self) -> str:
        """A short human text for the portal's message field."""
        text = self._what()
        if self.usage is not None:
            text += "\n" + usage_line(self.usage)
        if self.tail and not self.ok:
            text += "\n--- last lines of the log ---\n" + self.tail
        return text

    def _what(self) -> str:
        if self.ok:
            return f"succeeded in {self.duration:.1f}s"
        if self.detail:
            what = self.detail
        elif self.oom:
            peak = self.usage.peak_memory_bytes if self.usage else 0
            what = (
                f"killed by the OOM killer (out of memory) at a peak of {human(peak)} "
                f"after {self.duration:.1f}s"
            )
        elif self.timed_out:
            what = f"timed out after {self.duration:.0f}s and was killed"
        elif self.returncode is not None and self.returncode < 0:
            what = f"killed by {_signame(-self.returncode)} after {self.duration:.1f}s"
        else:
            what = f"exit code {self.returncode} after {self.duration:.1f}s"
        return f"{self.stage} failed: {what}"


def usage_line(u: JobUsage) -> str:
    """One line of what a job used, for the report message and the log."""
    return (
        f"usage: wall {u.wall_seconds:.1f}s, cpu {u.cpu_seconds:.1f}s, "
        f"peak memory {human(u.peak_memory_bytes)}, peak disk {human(u.peak_disk_bytes)} "
        f"in {u.peak_inodes} inodes, ended {u.ended} ({u.mode})"
    )


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


# Told each process group of a job as it starts: (stage, pgid).
OnStart = Callable[[str, int], None]


def _started(stage: str, pgid: int) -> None:
    """No one to tell."""


PGROUP_DEFAULT = Mode(MODE_PGROUP, "cgroups not asked for")
NO_LIMITS = Limits()


@dataclass
class Executor:
    """Runs one job in a fresh run directory inside `workdir`."""

    workdir: Path
    lifecycle: Lifecycle
    grace: float = 10.0
    checkout_timeout: float = 900.0
    job_timeout: float = 0.0
    # Called whenever the wait for a running job wakes (a signal, or at least
    # every `wake_every` seconds): the worker shows a drain at once and keeps
    # its status and metrics fresh during long jobs.
    on_wake: Callable[[], None] = lambda: None
    wake_every: float | None = None
    mode: Mode = PGROUP_DEFAULT
    limits: Limits = NO_LIMITS
    project: str = ""
    units: Units | None = None
    # The running job's measurements (None between jobs), for status.
    sampler: Sampler | None = None
    _unit: str | None = None
    _keeper: subprocess.Popen[bytes] | None = None
    _ooms_at_start: int = 0

    def paths(self, job: Job) -> tuple[Path, Path]:
        name = rundir_name(job.id)
        return self.workdir / name, self.workdir / f"{name}.log"

    def unit_for(self, job: Job) -> str | None:
        """The job's scope unit in cgroup mode, named by project and job (recovery finds it)."""
        if not self.mode.cgroup:
            return None
        return cgroups.unit_name(self.project or self.workdir.name, rundir_name(job.id))

    def execute(
        self, job: Job, job_env: Mapping[str, str], on_start: OnStart = _started
    ) -> Outcome:
        """Prepare, check out and run; every failure becomes an Outcome.

        `on_start(stage, pgid)` is called as each of the job's process groups
        starts, so the state folder can record it before anything else happens.
        """
        rundir, logpath = self.paths(job)
        start, started = time.monotonic(), time.time()
        self.sampler = Sampler(rundir, started=start)
        self._ooms_at_start = memlimit.oom_kills()
        result: Outcome | None
        try:
            _fresh_dir(rundir)
            log = _open_log(logpath)
        except OSError as exc:
            result = Outcome(False, "setup", detail=f"cannot prepare {rundir}: {exc}")
        else:
            with log:
                result = self._open_unit(job, log)
                if result is None:
                    result = self._checkout(job, rundir, log, on_start)
                if result is None:
                    result = self._run(job, rundir, log, job_env, on_start)
                self._close_unit()
        result.duration = time.monotonic() - start
        if not result.ok:
            result.tail = tail(logpath)
        result.usage = self._usage(job, result, started)
        self.sampler = None
        return result

    # -- the job's unit --------------------------------------------------------

    def _open_unit(self, job: Job, log: IO[bytes]) -> Outcome | None:
        """Make the job's scope around a keeper process (so it outlives a stage's
        end); a helper that refuses fails the job loudly rather than run it uncontained."""
        unit = self.unit_for(job)
        if unit is None or self.sampler is None:
            return None
        units = self.units or Units(grace=self.grace)
        keeper = subprocess.Popen(
            ["cat"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        problem = units.start(unit, [keeper.pid], self.limits)
        if problem:
            _end_keeper(keeper)
            return Outcome(False, "setup", detail=f"cannot make the job's cgroup {unit}: {problem}")
        self._unit, self._keeper, self.units = unit, keeper, units
        self.sampler.cgroup = JobCgroup(unit, self.mode.version)
        log.write(f"leampoll: job in {unit} ({self.mode.name})\n".encode())
        return None

    def _close_unit(self) -> None:
        if self._unit is None or self.sampler is None:
            return
        self.sampler.sample()  # the kernel's peak, before the unit goes
        cgroup = self.sampler.cgroup
        if cgroup is not None and self._keeper is not None:
            cgroups.kill_all(cgroup, self.grace, spare={self._keeper.pid})
        if self._keeper is not None:
            _end_keeper(self._keeper)  # the empty scope is then collected by systemd
        if self.units is not None and cgroups.unit_active(self._unit):
            # Where systemd hears of no empty cgroup (v1 in a container: no
            # release agent), the scope would stay listed: stopped here.
            self.units.stop(self._unit)
        self._unit = self._keeper = None

    # -- what a killed poller left -----------------------------------------------

    def stop_orphan(self, record: dict[str, Any]) -> list[int]:
        """Stop what is left of an orphaned run: its unit, found by the name in its
        record, and its process groups. Returns the pids found."""
        unit = record.get("unit")
        found = []
        if isinstance(unit, str) and unit.startswith(cgroups.UNIT_PREFIX):
            found = self._stop_unit(unit)
        return found + stop_orphan_groups(record, self.grace)

    def stop_leftover_units(self) -> dict[str, int]:
        """Units of this project running while no job of this poller runs are a dead
        poller's leftovers: stopped. Returns each unit's number of processes found."""
        if not self.mode.cgroup:
            return {}
        project = self.project or self.workdir.name
        return {unit: len(self._stop_unit(unit)) for unit in cgroups.running_units(project)}

    def _stop_unit(self, unit: str) -> list[int]:
        """End every process of a job unit, then the unit; the pids found.

        Its processes run as the poller's user: they are signalled directly;
        the helper stops the unit itself, so that it is not left listed.
        """
        cgroup = JobCgroup(unit, cgroups.cgroup_version() or 1)
        found = cgroup.pids()
        cgroups.kill_all(cgroup, self.grace)
        if cgroups.unit_active(unit):
            (self.units or Units(grace=self.grace)).stop(unit)
        return found

    def _usage(self, job: Job, result: Outcome, started: float) -> JobUsage:
        sampler = self.sampler
        assert sampler is not None
        if sampler.rundir.is_dir():
            sampler.walk_now()
        if result.oom:
            ended = ENDED_OOM
        elif result.interrupted:
            ended = ENDED_INTERRUPTED
        elif result.timed_out:
            ended = ENDED_TIMEOUT
        elif sampler.cgroup is None and self._oom_in_own_cgroups(result):
            ended = ENDED_OOM  # without a cgroup of its own: the poller's cgroups counted it
        elif result.returncode is not None and result.returncode < 0:
            ended = ENDED_SIGNAL
        elif not result.ok and (_disk_full(sampler.rundir) or _says_no_space(result.tail)):
            ended = ENDED_DISK_FULL
        else:
            ended = ENDED_EXIT
        rc = result.returncode
        return JobUsage(
            job_id=job.id,
            started=started,
            wall_seconds=round(result.duration, 3),
            cpu_seconds=round(sampler.cpu_seconds, 3),
            peak_memory_bytes=sampler.peak_memory,
            peak_disk_bytes=sampler.peak_disk,
            peak_inodes=sampler.peak_inodes,
            ended=ended,
            exit_code=rc if rc is not None and rc >= 0 else None,
            signal=-rc if rc is not None and rc < 0 else None,
            mode=self.mode.name if sampler.cgroup is not None else MODE_PGROUP,
        )

    def _oom_in_own_cgroups(self, result: Outcome) -> bool:
        """A SIGKILL while the OOM kills counted in the poller's own memory cgroups rose."""
        return result.returncode == -signal.SIGKILL and memlimit.oom_kills() > self._ooms_at_start

    # -- stages --------------------------------------------------------------

    def _checkout(
        self, job: Job, rundir: Path, log: IO[bytes], on_start: OnStart
    ) -> Outcome | None:
        if job.repository.strip():
            try:
                checkout = plan_checkout(job.repository, rundir)
            except ValueError as exc:
                return Outcome(False, "checkout", detail=f"bad repository command: {exc}")
            # The kind only: a repository URL may carry credentials.
            log.write(f"leampoll: checkout with {checkout.kind}\n".encode())
            env = {k: v for k, v in os.environ.items() if k not in CHECKOUT_DROP}
            env.update(CHECKOUT_ENV)
            result = self.run_group(
                "checkout",
                checkout.argv,
                self.workdir,
                env,
                log,
                self.checkout_timeout,
                on_start=on_start,
            )
            if not result.ok:
                return result
        if job.legacy_xml is not None:
            (rundir / "config.xml").write_bytes(job.legacy_xml)
        return None

    def _run(
        self, job: Job, rundir: Path, log: IO[bytes], job_env: Mapping[str, str], on_start: OnStart
    ) -> Outcome:
        try:
            argv = shlex.split(job.cmdline)
        except ValueError as exc:
            return Outcome(False, "run", detail=f"bad command line: {exc}")
        if not argv:
            return Outcome(False, "run", detail="empty command line")
        env = {**os.environ, **job_env, "LEAM_RUNDIR": str(rundir)}
        return self.run_group("run", argv, rundir, env, log, self.job_timeout, on_start=on_start)

    def _spawn(
        self, argv: list[str], cwd: Path, env: Mapping[str, str], log: IO[bytes]
    ) -> subprocess.Popen[bytes]:
        """Start a stage: in cgroup mode held at the gate until it is in the job's unit."""
        common: dict = dict(
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if self._unit is None or self.units is None:
            return subprocess.Popen(argv, close_fds=True, **common)
        _must_exist(argv[0], env, cwd)
        gate_r, gate_w = os.pipe()
        try:
            proc = subprocess.Popen(
                ["sh", "-c", GATE, "leam-job", *argv], close_fds=True, **{**common, "stdin": gate_r}
            )
        finally:
            os.close(gate_r)
        with os.fdopen(gate_w, "wb") as gate:
            problem = self.units.attach(self._unit, proc.pid)
            if problem is None:
                gate.write(b"go\n")  # else closed unsaid: the gate exits 125
        if problem is not None:
            proc.wait()
            raise _Uncontained(problem)
        return proc

    def run_group(
        self,
        stage: str,
        argv: list[str],
        cwd: Path,
        env: Mapping[str, str],
        log: IO[bytes],
        timeout: float,
        on_start: OnStart = _started,
    ) -> Outcome:
        """Run argv in its own session (and the job's unit); stop it whole on timeout or stop."""
        log.flush()
        start = time.monotonic()
        try:
            proc = self._spawn(argv, cwd, env, log)
        except OSError as exc:
            return Outcome(False, stage, detail=f"cannot start {argv[0]!r}: {exc.strerror}")
        except ValueError as exc:  # a NUL or an unencodable character: no exec can take it
            return Outcome(False, stage, detail=f"cannot start {argv[0]!r}: {exc}")
        except _Uncontained as exc:
            return Outcome(False, stage, detail=f"cannot put {argv[0]!r} in its cgroup: {exc}")
        on_start(stage, proc.pid)
        sampler = self.sampler
        if sampler is not None:
            sampler.pids.append(proc.pid)
        cgroup = sampler.cgroup if sampler is not None else None
        deadline = start + timeout if timeout else None
        kill_at: float | None = None
        timed_out = interrupted = False
        next_sample = start
        while not _reaped(proc, sampler):
            now = time.monotonic()
            if kill_at is None:
                if self.lifecycle.stop == COLD:
                    interrupted = True
                elif deadline is not None and now >= deadline:
                    timed_out = True
                if interrupted or timed_out:
                    if sampler is not None:
                        sampler.sample(now)
                    if cgroup is not None and self._keeper is not None:
                        # Everything of the job, the main process too: TERM, grace, KILL.
                        cgroups.kill_all(cgroup, self.grace, spare={self._keeper.pid})
                        kill_at = float("inf")
                        continue
                    _killpg(proc.pid, signal.SIGTERM)
                    kill_at = now + self.grace
            elif now >= kill_at:
                _killpg(proc.pid, signal.SIGKILL)
                kill_at = float("inf")
            if sampler is not None and now >= next_sample:
                sampler.sample(now)
                next_sample = now + SAMPLE_EVERY
            pending = (deadline,) if kill_at is None else (kill_at,)
            waits = [t - now for t in pending if t is not None and t != float("inf")]
            waits.append(max(0.0, next_sample - now) if sampler is not None else SAMPLE_EVERY)
            if self.wake_every:
                waits.append(self.wake_every)
            self.lifecycle.wait(max(0.0, min(waits)))
            self.on_wake()
        oom = False
        if cgroup is not None and sampler is not None and self._keeper is not None:
            sampler.sample()  # the kernel's peak and CPU before leftovers are stopped
            oom = cgroup.oom_kills() > 0 and proc.returncode != 0
            # Leftovers (a daemon it started): the grace, then KILL.
            cgroups.kill_all(cgroup, self.grace, spare={self._keeper.pid})
        else:
            _killpg(proc.pid, signal.SIGKILL)  # children the job left behind die with it
        ok = proc.returncode == 0 and not (timed_out or interrupted)
        return Outcome(
            ok, stage, proc.returncode, timed_out, interrupted, time.monotonic() - start, oom=oom
        )


class _Uncontained(Exception):
    """The helper did not put a stage's process in the job's unit."""


def _reaped(proc: subprocess.Popen[bytes], sampler: Sampler | None) -> bool:
    """Reap the stage's main process if it ended, keeping its own peak memory and CPU."""
    if proc.returncode is not None:
        return True
    try:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
    except ChildProcessError:
        return proc.poll() is not None
    if pid == 0:
        return False
    proc.returncode = os.waitstatus_to_exitcode(status)
    if sampler is not None:
        sampler.add_exited(ru.ru_maxrss, ru.ru_utime + ru.ru_stime)
    return True


def _end_keeper(keeper: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        if keeper.stdin:
            keeper.stdin.close()
    try:
        keeper.wait(timeout=5)
    except subprocess.TimeoutExpired:
        keeper.kill()
        keeper.wait()


def _must_exist(program: str, env: Mapping[str, str], cwd: Path) -> None:
    """What exec would say of a missing program, said before the gate hides it behind sh."""
    if "/" in program:
        path = program if os.path.isabs(program) else os.path.join(cwd, program)
        if not os.path.exists(path):
            raise FileNotFoundError(2, "No such file or directory", program)
        if not os.access(path, os.X_OK) or os.path.isdir(path):
            raise PermissionError(13, "Permission denied", program)
    elif shutil.which(program, path=env.get("PATH", os.defpath)) is None:
        raise FileNotFoundError(2, "No such file or directory", program)


def _says_no_space(log_tail: str) -> bool:
    """The job's own words: a write failed for lack of space (the filesystem may
    have room again by the time it ends, when another job's files went)."""
    return any(text in log_tail for text in NO_SPACE)


def _disk_full(rundir: Path) -> bool:
    try:
        return shutil.disk_usage(rundir).free < DISK_FULL_BELOW
    except OSError:
        return False


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_orphan_groups(record: dict[str, Any], grace: float) -> list[int]:
    """Stop what is left of an orphaned job's process groups; return the pids found.

    A job runs in a session of its own, so Supervisor's killasgroup, which
    reaches the poller's group, leaves it running. Only processes that belong
    to the recorded group and are not younger than the record are touched,
    so a recycled pid is never hit.
    """
    found: list[psutil.Process] = []
    started = float(record.get("started", 0)) - 1
    pgids = {int(g["pgid"]) for g in record.get("groups", []) if g.get("pgid")}
    if not pgids:
        return []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) in pgids and proc.create_time() >= started:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    for proc in found:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(found, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in found]


def _fresh_dir(path: Path) -> None:
    """An empty directory at path, whatever was there (a link is removed, not followed)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o755)


def _open_log(path: Path) -> IO[bytes]:
    if path.is_symlink():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    return os.fdopen(fd, "wb")


def tail(path: Path, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
    """The last lines of a job log, bounded, for an error report."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8 * chars))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    text = "\n".join(data.splitlines()[-lines:])
    return text[-chars:]

"""Job execution: the run directory, the checkout, the job's process group.

Nothing here talks to the portal. Commands are split shell-style and run
without a shell, stdin closed, each in a session (and so a process group) of
its own, so a timeout or a stop reaches the job's children too and never the
poller itself. The groups an earlier, killed poller left running are
stopped here too (`stop_orphan_groups`), the same way.
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

from leampoll.checkout import plan as plan_checkout
from leampoll.jobs import Job
from leampoll.lifecycle import COLD, Lifecycle
from leampoll.sampling import OnSample, Sampler
from leampoll.usage import JobUsage

MAX_NAME = 100
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
    usage: JobUsage | None = None  # what the run stage used, and how it ended

    def describe(self) -> str:
        """A short human text for the portal's message field."""
        if self.ok:
            return f"succeeded in {self.duration:.1f}s"
        if self.detail:
            what = self.detail
        elif self.timed_out:
            what = f"timed out after {self.duration:.0f}s and was killed"
        elif self.returncode is not None and self.returncode < 0:
            what = f"killed by {_signame(-self.returncode)} after {self.duration:.1f}s"
        else:
            what = f"exit code {self.returncode} after {self.duration:.1f}s"
        text = f"{self.stage} failed: {what}"
        if self.tail:
            text += "\n--- last lines of the log ---\n" + self.tail
        return text


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


# Told each process group of a job as it starts: (stage, pgid).
OnStart = Callable[[str, int], None]


def _started(stage: str, pgid: int) -> None:
    """No one to tell."""


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
    on_usage: OnSample | None = None  # told the running job's usage now and then

    def paths(self, job: Job) -> tuple[Path, Path]:
        name = rundir_name(job.id)
        return self.workdir / name, self.workdir / f"{name}.log"

    def execute(
        self, job: Job, job_env: Mapping[str, str], on_start: OnStart = _started
    ) -> Outcome:
        """Prepare, check out and run; every failure becomes an Outcome.

        `on_start(stage, pgid)` is called as each of the job's process groups
        starts, so the state folder can record it before anything else happens.
        """
        rundir, logpath = self.paths(job)
        start = time.monotonic()
        try:
            _fresh_dir(rundir)
            log = _open_log(logpath)
        except OSError as exc:
            return Outcome(False, "setup", detail=f"cannot prepare {rundir}: {exc}")
        with log:
            result = self._checkout(job, rundir, log, on_start)
            if result is None:
                result = self._run(job, rundir, log, job_env, on_start)
        result.duration = time.monotonic() - start
        if not result.ok:
            result.tail = tail(logpath)
        return result

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
        # STOPGAP: sampled with psutil until the cgroup accounting measures jobs.
        sampler = Sampler(rundir, self.on_usage)

        def started(stage: str, pgid: int) -> None:
            on_start(stage, pgid)
            sampler.start(pgid)

        try:
            result = self.run_group(
                "run", argv, rundir, env, log, self.job_timeout, on_start=started
            )
        finally:
            sampler.stop()
        log.flush()
        result.usage = sampler.usage(
            job.id,
            result.returncode,
            result.timed_out,
            result.interrupted,
            tail(self.paths(job)[1]),
        )
        return result

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
        """Run argv in its own session; stop its whole group on timeout or cold stop."""
        log.flush()
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            return Outcome(False, stage, detail=f"cannot start {argv[0]!r}: {exc.strerror}")
        except ValueError as exc:  # a NUL or an unencodable character: no exec can take it
            return Outcome(False, stage, detail=f"cannot start {argv[0]!r}: {exc}")
        on_start(stage, proc.pid)
        deadline = start + timeout if timeout else None
        kill_at: float | None = None
        timed_out = interrupted = False
        while proc.poll() is None:
            now = time.monotonic()
            if kill_at is None:
                if self.lifecycle.stop == COLD:
                    interrupted = True
                elif deadline is not None and now >= deadline:
                    timed_out = True
                if interrupted or timed_out:
                    _killpg(proc.pid, signal.SIGTERM)
                    kill_at = now + self.grace
            elif now >= kill_at:
                _killpg(proc.pid, signal.SIGKILL)
                kill_at = float("inf")
            waits = [t - now for t in (deadline, kill_at) if t is not None and t != float("inf")]
            if self.wake_every:
                waits.append(self.wake_every)
            self.lifecycle.wait(max(0.0, min(waits)) if waits else None)
            self.on_wake()
        _killpg(proc.pid, signal.SIGKILL)  # children the job left behind die with it
        ok = proc.returncode == 0 and not (timed_out or interrupted)
        return Outcome(ok, stage, proc.returncode, timed_out, interrupted, time.monotonic() - start)


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

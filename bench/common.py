"""What the suites share: the recording stand-in, the pollers as processes, statistics."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.report import ROOT

if str(ROOT) not in sys.path:  # the stand-in lives in the project's testing/
    sys.path.insert(0, str(ROOT))

from testing.pollers import poller_flags
from testing.portal_standin import PortalStandin, Received

USER, PASSWORD = "poller", "bench-Pa55word"
BASELINE = Path(__file__).with_name("baseline_poller.py")


class BenchPortal(PortalStandin):
    """The stand-in, also noting when each job was queued and which pop handed it out.

    `pop_log` has one entry per pop request that reached the queue: its
    `Received` record (`at` is the time.time() at which the request arrived)
    and the id of the job it answered with, or None for EMPTY.
    """

    def __init__(self) -> None:
        # The extended portal: the bench's baseline poller reports to on_success/on_error.
        super().__init__(USER, PASSWORD, mode="extended")
        self._current = threading.local()
        self.queued_at: dict[str, float] = {}
        self.pop_log: list[tuple[Received, str | None]] = []
        self.popped_by: dict[str, Received] = {}
        default = self._server.handle_error

        def handle_error(request: Any, client_address: Any) -> None:
            # A poller that exits drops its kept-alive connection: not worth a traceback.
            if not isinstance(sys.exc_info()[1], ConnectionError):
                default(request, client_address)

        self._server.handle_error = handle_error

    def queue(self, job_id: str, cmdline: str, *args: Any, **kw: Any) -> dict[str, Any]:
        at = time.time()  # taken before the job is visible: latencies are never understated
        job = super().queue(job_id, cmdline, *args, **kw)
        with self.lock:
            self.queued_at[job_id] = at
        return job

    def _record(self, rec: Received) -> None:
        self._current.rec = rec  # the handler thread's request, for _pop below
        super()._record(rec)

    def _pop(self, *args: Any):
        with self.lock:
            answer = super()._pop(*args)
            job_id = None
            if answer.status == 200 and b'"OK"' in answer.body:
                job_id = json.loads(answer.body)["id"]
            rec = self._current.rec
            self.pop_log.append((rec, job_id))
            if job_id is not None:
                self.popped_by[job_id] = rec
            self.lock.notify_all()
            return answer

    def pops(self) -> int:
        with self.lock:
            return len(self.pop_log)

    def report_of(self, job_id: str) -> Received | None:
        with self.lock:
            for r in self.received:
                if r.kind in ("success", "error") and r.path.endswith(f"/jobs/{job_id}/{r.kind}"):
                    return r
        return None

    def wait(self, predicate: Callable[[BenchPortal], Any], timeout: float, what: str) -> Any:
        try:
            return self.wait_for(predicate, timeout)
        except AssertionError:
            raise RuntimeError(
                f"bench: timed out after {timeout:.0f} s waiting for {what}"
            ) from None


@contextlib.contextmanager
def standin() -> Iterator[BenchPortal]:
    portal = BenchPortal().start()
    try:
        yield portal
    finally:
        portal.stop()


def poller_env(password: str = PASSWORD) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env.update(PORTAL_USER=USER, PORTAL_PASSWORD=password)
    return env


class Proc:
    """A poller (or other helper) process the bench started; ended only by its pid."""

    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env or poller_env(),
                cwd=cwd,
            )
        self.pid = self.popen.pid

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(
                f"bench: {self.argv[1:3]} did not end within {timeout:.0f} s; see {self.log_path}"
            ) from None

    def stop(self) -> None:
        """SIGTERM (an idle leampoll exits at once), SIGKILL if it is still there 10 s later."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(10)

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def leampoll(
    portal: PortalStandin,
    workdir: Path,
    log: Path,
    speed: float,
    idle: int,
    *extra: str,
    password: str = PASSWORD,
) -> Proc:
    """The real poller, with guard thresholds low enough for any test machine; `portal`
    is anything with a site `url` (a stand-in or a real portal)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return Proc(
        [
            sys.executable,
            "-m",
            "leampoll",
            *poller_flags(workdir, speed=speed, max_backoff=None),
            "--idle",
            str(idle),
            *extra,
            portal.url,
        ],
        log,
        env=poller_env(password),
    )


def baseline(
    portal: PortalStandin, workdir: Path, log: Path, speed: float, idle: int, deadline: float
) -> Proc:
    """The old loop design (bench/baseline_poller.py)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return Proc(
        [
            sys.executable,
            str(BASELINE),
            "--workdir",
            str(workdir),
            "--speed",
            f"{speed:g}",
            "--idle",
            str(idle),
            "--deadline",
            f"{deadline:g}",
            portal.url,
        ],
        log,
    )


# -- statistics ------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile by nearest rank (q=50: the median of an odd count)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return math.nan
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def ms(seconds: float, digits: int = 1) -> str:
    return f"{seconds * 1000:.{digits}f} ms"


def secs(seconds: float) -> str:
    if seconds >= 100:
        return f"{seconds:,.0f} s"
    if seconds >= 10:
        return f"{seconds:.1f} s"
    return f"{seconds:.3f} s"


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def ratio(baseline_value: float, ours: float) -> str:
    """baseline / ours, as e.g. '2,600x' ('x' is the multiplication sign)."""
    if not ours or math.isnan(ours) or math.isnan(baseline_value):
        return "-"
    r = baseline_value / ours
    text = f"{r:,.0f}" if r >= 100 else f"{r:.1f}" if r >= 10 else f"{r:.2f}"
    return text + "\u00d7"


def log(text: str) -> None:
    print(f"   {text}", file=sys.stderr, flush=True)

"""State and recovery: what must outlive the poller, in `<workdir>/.leampoll/`.

- `current.json`: the job being run (written before its checkout, cleared after
  its report is safely in the outbox). Found on start, it means the poller was
  killed mid-job: the job is handed back before anything else is popped.
- `outbox/`: reports not yet delivered, one file each, delivered in order.
- `orphans.json`: how often a job was orphaned, so a job that kills its own
  poller is reported as an error the second time instead of looping forever.
- `status.json`: what `leampoll status` and the metrics show (`Status`).
- `failed.json`: the run directories of failed jobs kept for a person, oldest
  first, at most `--keep-failed` of them.
- `endpoints.json`: that this portal ends jobs through `end_run` (delivery.py).
- `reserve`: a little space held on the job filesystem. A job that fills the
  disk must not stop the poller from recording how it ended: when a write
  finds no space, the reserve is given up and the write tried again; it is
  taken back once the disk guard sees space.

Every file is written to a temporary name and renamed, so a reader never sees
half a file and a kill never leaves one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from leampoll import records
from leampoll.jobs import Job, Report
from leampoll.portal_health import Trouble

MAX_ORPHANS_KEPT = 200
RESERVE_BYTES = 1024 * 1024  # a job's end needs a few KiB: the outbox, the record, the status
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

log = logging.getLogger("leampoll")


def write_json(path: Path, data: Any, mode: int = 0o600) -> None:
    """Atomically replace path with data as JSON."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()  # a full disk must not keep what little it has left
        raise


def read_json(path: Path) -> Any:
    """The JSON in path, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _counts(data: Any) -> dict[str, int]:
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class Current:
    """The job being run. Frozen, so the worker replaces it and a change is seen."""

    id: str
    title: str
    started_at: float
    rundir: str
    log: str


@dataclass(frozen=True)
class Last:
    """How the last job ended; `portal` once its report left the outbox."""

    id: str = ""
    outcome: str = ""  # success, error, requeued
    at: float = 0.0
    message: str = ""
    portal: str | None = None  # the endpoint that took it, or the delivery's state

    def to_json(self) -> dict[str, Any]:
        data = dict(vars(self))
        if self.portal is None:
            del data["portal"]  # absent until the report is delivered, as readers expect
        return data


@dataclass
class Guard:
    """The guards holding popping, and each local guard's [free, total, required].

    `needs`: by resource, the need, where it came from (`source`, `why`) and
    what it waits for (`free`, `reserved` by the host's other jobs, `available`);
    `ledger`: why the host's ledger could not be used, if it could not.
    """

    holding: list[str] = field(default_factory=list)
    readings: dict[str, list[int]] = field(default_factory=dict)
    needs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ledger: str | None = None


@dataclass(frozen=True)
class AuthHold:
    """The portal rejects the poller's credentials: whose, since when, its answer."""

    user: str
    since: float | None
    detail: str


@dataclass
class Status:
    """What the poller is doing, for `leampoll status`, the metrics and the fleet table.

    status.json is `to_json()`; its keys and their order are what those readers
    and older pollers' files use. Read back, every field has the value a missing
    key means to a reader (None, zero, empty).
    """

    project: str | None = None
    version: str | None = None
    pid: int | None = None
    site: str | None = None
    workdir: str | None = None
    started_at: float | None = None
    state: str | None = None  # metrics.STATES
    current: Current | None = None
    last: Last | None = None
    counts: dict[str, int] = field(default_factory=dict)  # outcomes, across restarts
    session: dict[str, int] = field(default_factory=dict)  # outcomes since this start
    guard: Guard = field(default_factory=Guard)
    last_poll: float | None = None  # wall clock of the portal's last real answer
    reports_pending: int = 0
    auth: AuthHold | None = None
    portal_error: Trouble | None = None  # failed pops going on now
    portal_errors_total: dict[str, int] = field(default_factory=dict)
    idle_since: float | None = None  # the queue is found empty since (retire --when-idle)
    jobs: str | None = None  # how jobs are contained: "jobs: cgroup-v1 (...)" (cgroups.Mode)
    usage: dict[str, float] | None = None  # the running job's usage so far (accounting)

    def to_json(self) -> dict[str, Any]:
        """The content of status.json. Shallow (json.dump copies it at once): asdict's
        deep copy would cost several times the dump on every write."""
        data = dict(vars(self))
        for key in ("current", "guard", "auth", "portal_error"):
            if data[key] is not None:
                data[key] = dict(vars(data[key]))
        data["last"] = self.last.to_json() if self.last else None
        return data

    @classmethod
    def from_json(cls, data: Any) -> Status:
        """The status in a status.json's content; empty when there is none."""
        if not isinstance(data, dict):
            return cls()
        guard = data.get("guard")
        guard = guard if isinstance(guard, dict) else {}
        return cls(
            **{
                k: data.get(k)
                for k in (
                    "project",
                    "version",
                    "pid",
                    "site",
                    "workdir",
                    "started_at",
                    "state",
                    "last_poll",
                    "idle_since",
                    "jobs",
                )
            },
            current=records.from_json(Current, data.get("current")),
            last=records.from_json(Last, data.get("last")),
            counts=_counts(data.get("counts")),
            session=_counts(data.get("session")),
            guard=Guard(
                guard.get("holding", []),
                guard.get("readings", {}),
                guard.get("needs", {}) if isinstance(guard.get("needs"), dict) else {},
                guard.get("ledger"),
            ),
            reports_pending=data.get("reports_pending", 0),
            auth=records.from_json(AuthHold, data.get("auth")),
            portal_error=records.from_json(Trouble, data.get("portal_error")),
            portal_errors_total=_counts(data.get("portal_errors_total")),
            usage=data.get("usage") if isinstance(data.get("usage"), dict) else None,
        )


class State:
    """The state folder of one workdir."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.outbox = directory / "outbox"
        self.current_path = directory / "current.json"
        self.orphans_path = directory / "orphans.json"
        self.status_path = directory / "status.json"
        self.endpoints_path = directory / "endpoints.json"
        self.reserve_path = directory / "reserve"
        self.failed_path = directory / "failed.json"
        self._seq = 0

    def ensure(self) -> None:
        self.outbox.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        self.keep_reserve()

    # -- space for recording a job's end -------------------------------------

    def keep_reserve(self) -> None:
        """Hold the reserve (again); quietly not, while there is no space for it."""
        if self.reserve_path.exists():
            return
        tmp = self.reserve_path.with_name(".reserve.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
            os.replace(tmp, self.reserve_path)
            log.debug("reserve of %d KiB held in the workdir", RESERVE_BYTES // 1024)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def write(self, path: Path, data: Any, mode: int = 0o600) -> None:
        """write_json, giving up the reserve once if the filesystem is full."""
        self.with_reserve(path.name, lambda: write_json(path, data, mode))

    def with_reserve(self, what: str, write: Callable[[], None]) -> None:
        """Run `write`; if the filesystem is full, give up the reserve and run it again."""
        try:
            write()
        except OSError as exc:
            if exc.errno not in _NO_SPACE or not self.reserve_path.exists():
                raise
            self.reserve_path.unlink()
            log.warning(
                "workdir filesystem full: released the %d KiB reserve to write %s",
                RESERVE_BYTES // 1024,
                what,
            )
            write()

    # -- the current job ---------------------------------------------------

    def begin(self, job: Job, rundir: Path, unit: str | None = None) -> dict[str, Any]:
        """Record the job before anything of it starts; `unit` is its cgroup's scope,
        by which a restarted poller stops what is left of it."""
        record: dict[str, Any] = {
            "job": job.to_dict(),
            "rundir": str(rundir),
            "unit": unit,
            "poller_pid": os.getpid(),
            "started": time.time(),
            "groups": [],
        }
        self.write(self.current_path, record)
        return record

    def add_group(self, record: dict[str, Any], stage: str, pgid: int) -> None:
        """Remember a job's process group, so a restarted poller can stop it."""
        try:
            created = psutil.Process(pgid).create_time()
        except psutil.Error:
            created = 0.0
        record["groups"].append({"stage": stage, "pgid": pgid, "created": created})
        self.write(self.current_path, record)

    def finish(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.current_path.unlink()

    def orphan(self) -> dict[str, Any] | None:
        """The record a killed poller left behind, if any."""
        record = read_json(self.current_path)
        if record is None and self.current_path.exists():
            self.finish()  # unreadable: nothing can be done with it
        return record if isinstance(record, dict) and "job" in record else None

    # -- orphan counting ---------------------------------------------------

    def count_orphaned(self, key: str) -> int:
        """Count one more orphaning of the job `key`; return the new count."""
        counts = read_json(self.orphans_path) or {}
        counts[key] = counts.pop(key, 0) + 1
        while len(counts) > MAX_ORPHANS_KEPT:
            counts.pop(next(iter(counts)))
        self.write(self.orphans_path, counts)
        return counts[key]

    def forget_orphan(self, key: str) -> None:
        counts = read_json(self.orphans_path)
        if counts and key in counts:
            del counts[key]
            self.write(self.orphans_path, counts)

    # -- the outbox --------------------------------------------------------

    def put(self, report: Report) -> Path:
        report.created = report.created or time.time()
        self._seq += 1
        path = self.outbox / f"{time.time_ns():020d}-{os.getpid()}-{self._seq}.json"
        self.write(path, asdict(report))
        return path

    def pending(self) -> list[tuple[Path, Report]]:
        items: list[tuple[Path, Report]] = []
        for path in sorted(self.outbox.glob("*.json")):
            data = read_json(path)
            try:
                items.append((path, Report(**data)))
            except TypeError:
                path.rename(path.with_suffix(".bad"))  # keep it for a human, stop retrying
        return items

    def pending_count(self) -> int:
        return sum(1 for _ in self.outbox.glob("*.json"))

    # -- status ------------------------------------------------------------

    def load_status(self) -> Status:
        return Status.from_json(read_json(self.status_path))

    def save_status(self, status: Status) -> None:
        self.write(self.status_path, status.to_json(), mode=0o644)

    # -- retention of failed runs ---------------------------------------------

    def keep_failed(self, rundir: Path, keep: int) -> None:
        """Keep a failed job's run directory for a person; remove the oldest beyond `keep`."""
        kept = [p for p in (read_json(self.failed_path) or []) if p != str(rundir)]
        kept.append(str(rundir))
        while len(kept) > keep:
            shutil.rmtree(kept.pop(0), ignore_errors=True)
        self.write(self.failed_path, kept)

"""The host-wide ledger of reservations, shared by the pollers of one host.

Each poller guards alone otherwise: two pollers seeing the same 30 GB free
would both pop a 25 GB job. So before a pop a poller reserves its need here,
under an exclusive fcntl lock held while it measures what is free, and it
releases the reservation when its job has ended (or the queue was empty).

The file is JSON, replaced atomically (readers such as `leampoll status`
need no lock): `{"version": 1, "entries": [Entry, ...]}`. An entry carries
the poller's pid and its process start time, so the entry of a dead poller
is dropped even when its pid has been reused. Disk and inodes are counted
per filesystem (`device`), memory for the whole host.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from leampoll import records
from leampoll.needs import Claim, Fit, fit

DEFAULT_PATH = Path("/run/leampoll/ledger.json")
VERSION = 1
HOST_WIDE = ("memory",)  # the other resources belong to one filesystem


class LedgerError(Exception):
    """The ledger cannot be used (its directory is missing or not writable)."""


@dataclass(frozen=True)
class Owner:
    """A process, told apart from a later one with the same pid by its start time."""

    pid: int
    started: float

    @classmethod
    def me(cls) -> Owner:
        return cls(os.getpid(), psutil.Process().create_time())

    def alive(self) -> bool:
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 0.05
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            return False


@dataclass
class Entry:
    """One poller's reservation: what it reserved, what its job uses of it now."""

    pid: int
    started: float
    project: str
    device: int  # st_dev of its job filesystem
    reserved: dict[str, int] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)
    job: str = ""  # the running job's id; empty between reserving and the pop
    since: float = 0.0

    @property
    def owner(self) -> Owner:
        return Owner(self.pid, self.started)

    def claim(self, resource: str) -> Claim:
        return Claim(int(self.reserved.get(resource, 0)), int(self.used.get(resource, 0)))

    @classmethod
    def from_json(cls, data: Any) -> Entry | None:
        if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
            return None
        if not all(isinstance(data.get(k, {}), dict) for k in ("reserved", "used")):
            return None
        return records.from_json(cls, data)


# What the system has free, by resource: (free, total), measured under the lock.
Measure = Callable[[], Mapping[str, tuple[int, int]]]


def others_claims(entries: list[Entry], me: Owner, device: int, resource: str) -> list[Claim]:
    """The reservations that compete with mine for one resource."""
    return [
        e.claim(resource)
        for e in entries
        if e.owner != me and (resource in HOST_WIDE or e.device == device)
    ]


def read(path: Path) -> list[Entry]:
    """The entries as last written (no lock: the file is replaced atomically)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    raw = data.get("entries") if isinstance(data, dict) else None
    entries = [Entry.from_json(e) for e in raw] if isinstance(raw, list) else []
    return [e for e in entries if e is not None]


class Ledger:
    """One poller's view of the host's ledger file."""

    def __init__(self, path: Path, project: str, device: int, owner: Owner | None = None) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.project = project
        self.device = device
        self.owner = owner or Owner.me()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[Entry]]:
        """The live entries under the lock; what the block leaves in the list is written."""
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LedgerError(f"ledger {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            found = read(self.path)
            before = [asdict(e) for e in found]
            entries = [e for e in found if e.owner.alive()]  # the dead hold nothing
            yield entries
            if [asdict(e) for e in entries] != before or not self.path.exists():
                self._write(entries)
        finally:
            os.close(fd)  # closing drops the lock

    def _write(self, entries: list[Entry]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        data = {"version": VERSION, "entries": [asdict(e) for e in entries]}
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, separators=(",", ":"))
            os.replace(tmp, self.path)
        except OSError as exc:
            raise LedgerError(f"ledger {self.path}: {exc.strerror or exc}") from None

    def reserve(self, needs: Mapping[str, int], measure: Measure) -> list[Fit]:
        """Reserve `needs` if every one fits beside the others' reservations.

        Returns each resource's figures; the reservation stands if all fit,
        and is dropped otherwise (a holding poller keeps nothing from others).
        """
        with self._locked() as entries:
            figures = measure()
            fits = [
                fit(r, int(n), *figures[r], others_claims(entries, self.owner, self.device, r))
                for r, n in needs.items()
                if r in figures
            ]
            entries[:] = [e for e in entries if e.owner != self.owner]
            if all(f.fits for f in fits):
                entries.append(
                    Entry(
                        self.owner.pid,
                        self.owner.started,
                        self.project,
                        self.device,
                        {f.resource: f.need for f in fits},
                        since=time.time(),
                    )
                )
        return fits

    def update(self, job: str | None = None, used: Mapping[str, int] | None = None) -> None:
        """Record the running job, and what it uses now of what it reserved."""
        with self._locked() as entries:
            for e in entries:
                if e.owner == self.owner:
                    if job is not None:
                        e.job = job
                    if used is not None:
                        e.used = {k: int(v) for k, v in used.items()}

    def release(self) -> None:
        """Give the reservation back (the job ended, or nothing was popped)."""
        with self._locked() as entries:
            entries[:] = [e for e in entries if e.owner != self.owner]

    def others_popping(self) -> bool:
        """Another live poller has reserved and not yet popped: its pop is in flight,
        and its reservation is released or becomes a job's within a round trip."""
        return any(e.owner != self.owner and not e.job and e.owner.alive() for e in read(self.path))

    def mine(self) -> Entry | None:
        return next((e for e in read(self.path) if e.owner == self.owner), None)

"""Guards: can this server take the project's next job right now? Asked before every pop.

A popped job is `running` in the portal at once, so a job the server cannot
run must never be popped: the guards run first, and while one holds the
poller waits instead of popping. What a job needs is learned from the
project's own runs (leampoll.needs), and reserved in the host's ledger
(leampoll.ledger) so that the pollers of one host never promise the same
free space twice.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from leampoll import memlimit
from leampoll.config import Config
from leampoll.ledger import Ledger, LedgerError
from leampoll.needs import RESOURCES, Fit, Need, changed, learn
from leampoll.units import Size, human
from leampoll.usage import history_path, read_history

log = logging.getLogger("leampoll")
# How long a poller waits for others' pops in flight before it holds, and how often it asks.
PENDING_WAIT = 2.0
PENDING_PAUSE = 0.05


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


def fmt(resource: str, n: float) -> str:
    return str(int(n)) if resource == "inodes" else human(n)


def measure(workdir: Path) -> dict[str, tuple[int, int]]:
    """(free, total) of the workdir's filesystem, its inodes, and available memory."""
    st = os.statvfs(workdir)
    figures = {
        "disk": (st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize),  # what a job can use
        "memory": memlimit.available(),
    }
    if st.f_files:  # some filesystems (btrfs, tmpfs with nr_inodes=0) report none
        figures["inodes"] = (st.f_favail, st.f_files)
    return figures


def read(workdir: Path, disk: Size, inodes: Size, memory: Size) -> list[Reading]:
    """Current figures of the workdir's filesystem and of available memory."""
    floors = {"disk": disk, "inodes": inodes, "memory": memory}
    figures = measure(workdir)
    return [
        Reading(r, free, total, floors[r].bytes_of(total))
        for r in ("disk", "inodes", "memory")
        if r in figures
        for free, total in [figures[r]]
    ]


def check(config: Config) -> list[Reading]:
    """All readings for the configured thresholds."""
    return read(config.workdir, config.min_free_disk, config.min_free_inodes, config.min_free_mem)


def holding(readings: list[Reading]) -> list[Reading]:
    return [r for r in readings if r.holds]


def describe(f: Fit) -> str:
    """What a resource waits for: the need, what is free, what others reserved."""
    text = f"{f.resource} need {fmt(f.resource, f.need)}, free {fmt(f.resource, f.free)}"
    if f.reserved:
        text += f" of which {fmt(f.resource, f.reserved)} reserved by other jobs"
    return text


@dataclass
class Decision:
    """The outcome of one guard check: every resource's figures and need."""

    fits: list[Fit]
    needs: dict[str, Need]
    ledger_error: str | None = None

    @property
    def holding(self) -> list[Fit]:
        return [f for f in self.fits if not f.fits]


class Guards:
    """One poller's guards: its project's needs, and its reservation in the host's ledger."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.history = history_path(config.state_dir)
        self.ledger: Ledger | None = None
        self.ledger_error: str | None = None
        self.needs: dict[str, Need] = {}
        self.runs = read_history(self.history, config.learn_runs)

    def _ledger(self) -> Ledger | None:
        if self.ledger is None and self.config.ledger is not None:
            device = os.stat(self.config.workdir).st_dev
            self.ledger = Ledger(self.config.ledger, self.config.project, device)
        return self.ledger

    def learned(self) -> None:
        """A run was recorded: learn again from the last runs."""
        self.runs = read_history(self.history, self.config.learn_runs)

    def _needs(self, figures: dict[str, tuple[int, int]]) -> dict[str, Need]:
        c = self.config
        floors = {"disk": c.min_free_disk, "memory": c.min_free_mem, "inodes": c.min_free_inodes}
        fixed = {"disk": c.need_disk, "memory": c.need_memory, "inodes": c.need_inodes}
        needs = {}
        for r in RESOURCES:
            if r not in figures:
                continue
            total = figures[r][1]
            pinned = fixed[r]
            need = learn(
                r,
                floors[r].bytes_of(total),
                self.runs,
                c.learn_margin,
                c.guard_mode,
                pinned.bytes_of(total) if pinned is not None else None,
                total,
            )
            old = self.needs.get(r)
            if old is not None and changed(old.amount, need.amount):
                log.info(
                    "%s need %s -> %s (%s)",
                    r,
                    fmt(r, old.amount),
                    fmt(r, need.amount),
                    need.describe(),
                )
            needs[r] = need
        self.needs = needs
        return needs

    def decide(self) -> Decision:
        """Measure, and reserve the needs if they fit (nothing is kept if one does not)."""
        figures = measure(self.config.workdir)
        needs = self._needs(figures)
        amounts = {r: n.amount for r, n in needs.items()}
        ledger = None
        try:
            ledger = self._ledger()
            if ledger is not None:
                fits = self._reserve(ledger, amounts)
                self._ledger_ok()
                return Decision(fits, needs)
        except (LedgerError, OSError) as exc:
            if self.ledger_error is None:
                log.error("%s; guarding alone, without the other pollers' reservations", exc)
            self.ledger_error = str(exc)
        fits = [Fit(r, amounts[r], free, total, 0) for r, (free, total) in figures.items()]
        return Decision(fits, needs, self.ledger_error)

    def _reserve(self, ledger: Ledger, amounts: dict[str, int]) -> list[Fit]:
        """Reserve; while another poller's pop is in flight, ask again for a moment
        rather than hold: an empty queue's pop releases its reservation at once."""
        deadline = time.monotonic() + PENDING_WAIT
        while True:
            fits = ledger.reserve(amounts, lambda: measure(self.config.workdir))
            if all(f.fits for f in fits) or time.monotonic() >= deadline:
                return fits
            if not ledger.others_popping():
                return fits
            time.sleep(PENDING_PAUSE)

    def _ledger_ok(self) -> None:
        if self.ledger_error is not None:
            log.info("ledger %s usable again", self.config.ledger)
            self.ledger_error = None

    def running(self, job_id: str) -> None:
        self._call("update", job=job_id)

    def used(self, now: dict[str, int]) -> None:
        """What the running job uses now: the rest of its reservation stays promised."""
        self._call("update", used=now)

    def release(self) -> None:
        self._call("release")

    def _call(self, what: str, **kwargs: object) -> None:
        if self.ledger is None:
            return
        try:
            getattr(self.ledger, what)(**kwargs)
        except (LedgerError, OSError) as exc:
            log.warning("%s: %s", what, exc)

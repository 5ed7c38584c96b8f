"""What a project's next job needs, and whether it fits beside the others: pure arithmetic.

No I/O here, so the rules can be checked exhaustively (tests/test_needs.py
uses hypothesis). A need is learned from the project's own runs:
`max(static floor, margin x the peak of the last N runs)`; a run that died
for lack of space or memory only shows a lower bound of what it needed, so
its need rises above what it reached, and at least to twice what it ran with. What is free for a
poller is what the system has free minus what the other running jobs of the
host have reserved and not yet used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from leampoll.usage import JobUsage

RESOURCES = ("disk", "memory", "inodes")
STATIC, LEARNED, RAISED, FIXED = "static", "learned", "raised", "fixed"
MODES = ("static", "learned")
# A change of a need larger than this share is logged.
NOTABLE_CHANGE = 0.10


def peak(run: JobUsage, resource: str) -> int:
    """The run's peak of one resource."""
    if resource == "disk":
        return int(run.peak_disk_bytes)
    if resource == "memory":
        return int(run.peak_memory_bytes)
    return int(run.peak_inodes)


@dataclass(frozen=True)
class Need:
    """What the next job of a project needs of one resource, and why."""

    resource: str
    amount: int
    source: str = STATIC  # static, learned, raised, fixed
    runs: int = 0  # the runs it was learned from
    job_id: str = ""  # the run whose peak decided it
    ended: str = ""  # how that run ended, when it raised the need

    def describe(self) -> str:
        if self.source == LEARNED:
            return f"learned from {self.runs} run{'s' * (self.runs != 1)}"
        if self.source == RAISED:
            return f"raised after job {self.job_id} ended {self.ended}"
        if self.source == FIXED:
            return "fixed in the configuration"
        if self.runs:
            return f"static floor (above {self.runs} learned runs)"
        return "static"


def learn(
    resource: str,
    floor: int,
    runs: Sequence[JobUsage],
    margin: float,
    mode: str = "learned",
    fixed: int | None = None,
    total: int | None = None,
) -> Need:
    """The need of one resource from the last runs (oldest first).

    A run that died for lack of the resource was given too little: its need
    rises to margin x what it reached, and at least to twice the need it ran
    with (what it reached may be small when another job took the rest), but
    that doubling never beyond `total`, the whole resource.
    """
    if fixed is not None:
        return Need(resource, max(0, fixed), FIXED)
    if mode != "learned" or not runs:
        return Need(resource, floor, STATIC)
    best, top = 0, runs[-1]
    for i, run in enumerate(runs):
        amount = math.ceil(margin * peak(run, resource))
        if run.short_of_resources:
            doubled = 2 * learn(resource, floor, runs[:i], margin, mode, None, total).amount
            amount = max(amount, min(doubled, total) if total is not None else doubled)
        if amount >= best:  # the newest of equal needs
            best, top = amount, run
    if best <= floor:
        return Need(resource, floor, STATIC, len(runs))
    if top.short_of_resources:
        return Need(resource, best, RAISED, len(runs), top.job_id, top.ended)
    return Need(resource, best, LEARNED, len(runs), top.job_id)


def changed(old: int, new: int) -> bool:
    """Whether a need moved by more than NOTABLE_CHANGE (worth a log line)."""
    if old == new:
        return False
    return abs(new - old) > NOTABLE_CHANGE * max(old, 1)


@dataclass(frozen=True)
class Claim:
    """Another running job's reservation of one resource, and what it uses of it now."""

    reserved: int
    used: int = 0

    @property
    def outstanding(self) -> int:
        """Reserved and not yet used: space the filesystem still shows free but is promised."""
        return max(0, self.reserved - max(0, self.used))


def available(free: int, others: Iterable[Claim]) -> int:
    """What is free for one more job: free minus the others' outstanding reservations."""
    return max(0, free) - sum(c.outstanding for c in others)


@dataclass(frozen=True)
class Fit:
    """One resource's figures for a decision: the need, free, reserved by others."""

    resource: str
    need: int
    free: int
    total: int
    reserved: int  # by the other jobs of the host, not yet used

    @property
    def available(self) -> int:
        return max(0, self.free) - self.reserved

    @property
    def fits(self) -> bool:
        return self.need <= self.available


def fit(resource: str, need: int, free: int, total: int, others: Iterable[Claim]) -> Fit:
    """Does `need` fit in what `free` leaves after the others' reservations?"""
    return Fit(resource, need, free, total, sum(c.outstanding for c in others))

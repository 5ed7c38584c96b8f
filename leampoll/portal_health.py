"""How the portal has been answering pops: the trouble a person must see.

A misconfigured portal answers 500 on every pop for hours (a queued item of a
kind without a repository, an unset setting); the poller backs off and goes
on, and this keeps what the status and the metrics show: since when pops
fail, the last answer, and a count of failed pops per reason (a fixed, short
set of labels: `portal.REFUSED_KINDS`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass
class Trouble:
    """An unbroken run of failed pops."""

    since: float  # wall clock of the first failure
    reason: str  # Refused.kind of the last one
    last: str  # the last answer, one line
    at: float  # wall clock of the last one
    count: int = 1


class PortalHealth:
    def __init__(self, totals: dict[str, int] | None = None) -> None:
        self.trouble: Trouble | None = None
        self.totals: dict[str, int] = dict(totals or {})

    def count(self, reason: str) -> None:
        """One more failure of this reason in the totals (a report set aside, a failed pop)."""
        self.totals[reason] = self.totals.get(reason, 0) + 1

    def failed(self, reason: str, detail: str, now: float | None = None) -> None:
        """A pop failed."""
        now = time.time() if now is None else now
        self.count(reason)
        if self.trouble is None:
            self.trouble = Trouble(now, reason, detail[:300], now)
        else:
            t = self.trouble
            t.reason, t.last, t.at, t.count = reason, detail[:300], now, t.count + 1

    def answered(self) -> Trouble | None:
        """A pop got a real answer; the trouble that ended, if any."""
        ended, self.trouble = self.trouble, None
        return ended

    def snapshot(self) -> Trouble | None:
        """A copy of the trouble going on, for the status (the trouble itself changes)."""
        return replace(self.trouble) if self.trouble else None

    def as_status(self) -> dict[str, Any] | None:
        trouble = self.snapshot()
        return asdict(trouble) if trouble else None

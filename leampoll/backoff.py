"""How long to wait: after portal errors (backoff) and between empty polls.

Full jitter (a uniform draw below a ceiling that doubles per failure) keeps
many pollers of one portal from retrying in lockstep after a portal restart.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Waits after consecutive failures: uniform in [floor, min(cap, base * 2**n)]."""

    base: float
    cap: float
    floor: float = 1.0
    failures: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next(self, retry_after: float | None = None) -> float:
        """The wait before the next try; Retry-After raises it, the cap bounds it."""
        ceiling = min(self.cap, self.base * 2 ** min(self.failures, 32))
        self.failures += 1
        low = min(self.floor, ceiling)
        wait = self.rng.uniform(low, max(low, ceiling))
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(wait, self.cap)

    def reset(self) -> None:
        self.failures = 0


IDLE_JITTER = 0.1  # an idle wait is 90-100 % of --speed: never longer than asked


def idle_wait(speed: float, rng: random.Random | None = None) -> float:
    """The sleep after an EMPTY answer, jittered so pollers do not synchronise."""
    return speed * (1 - IDLE_JITTER * (rng or random).random())

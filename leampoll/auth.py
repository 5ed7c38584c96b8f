"""Are the poller's credentials accepted? Plone never says so on its own.

A Plone site treats a wrong or missing password as Anonymous: pop_queue then
answers EMPTY (or redirects to require_login on a private site), and a poller
would wait on an "empty" queue forever. So the poller asks the site's
membership tool, `<site>/portal_membership/isAnonymousUser`, which answers
`1` for Anonymous and nothing (204) or `0` for a logged-in user. The answer
is classified by a pure function; `AuthWatch` decides when to ask again and
holds popping while the credentials are rejected.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from leampoll.answers import is_login_url
from leampoll.backoff import Backoff
from leampoll.portal import Answered

log = logging.getLogger("leampoll")

CHECK_PATH = "/portal_membership/isAnonymousUser"  # public, no side effects


class Verdict(enum.Enum):
    OK = "ok"
    REJECTED = "rejected"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class AuthResult:
    verdict: Verdict
    detail: str  # what the portal answered, for the log and --check
    transient: bool = False  # no answer at all (network): ask again soon, change nothing


def classify(answer: Answered) -> AuthResult:
    """What one answer of isAnonymousUser says about the credentials."""
    body = answer.text.strip()
    if answer.status == 204 or (answer.status == 200 and body in ("0", "False")):
        return AuthResult(Verdict.OK, f"HTTP {answer.status} {body or '(empty)'}")
    if answer.status == 200 and body in ("1", "True"):
        return AuthResult(Verdict.REJECTED, "the portal treats the poller as Anonymous")
    if 300 <= answer.status < 400 and is_login_url(answer.location):
        return AuthResult(
            Verdict.REJECTED, f"HTTP {answer.status} to the login page {answer.location[:200]}"
        )
    if answer.status in (401, 403):
        return AuthResult(Verdict.REJECTED, f"HTTP {answer.status}")
    return AuthResult(Verdict.UNKNOWN, f"HTTP {answer.status} {body[:60]!r} on {CHECK_PATH}")


class AuthWatch:
    """When to ask, and whether popping is held because the portal refused the user."""

    def __init__(
        self,
        user: str,
        site: str,
        interval: float,
        backoff: Backoff,
        ask: Callable[[], AuthResult],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.user = user
        self.site = site
        self.interval = interval
        self.backoff = backoff
        self._ask = ask
        self._clock = clock
        self.rejected: AuthResult | None = None
        self.since: float | None = None  # wall clock, for the status
        self._next = float("-inf")  # check before the first pop
        self._unknown_logged = False

    def suspect(self) -> None:
        """A pop was redirected to a login page: ask before the next pop."""
        self._next = float("-inf")

    def holding(self) -> bool:
        """True while the credentials are rejected; asks the portal when it is time."""
        now = self._clock()
        if now < self._next:
            return self.rejected is not None
        result = self._ask()
        if result.transient:
            # The pop will say that the portal is unreachable; keep the last verdict.
            self._next = now + min(self.interval, self.backoff.next())
            return self.rejected is not None
        if result.verdict is Verdict.REJECTED:
            if self.rejected is None:
                log.error(
                    "credentials of user %r rejected by %s (%s): popping nothing until "
                    "the portal accepts them",
                    self.user,
                    self.site,
                    result.detail,
                )
                self.since = time.time()
            self.rejected = result
            wait = self.backoff.next()
            self._next = now + wait
            log.debug("credentials re-checked in %.1fs", wait)
            return True
        if self.rejected is not None:
            log.info(
                "credentials of user %r accepted by %s again: popping resumes", self.user, self.site
            )
        elif result.verdict is Verdict.UNKNOWN and not self._unknown_logged:
            log.warning(
                "cannot tell whether %s accepts the credentials of user %r (%s); "
                "polling without that check",
                self.site,
                self.user,
                result.detail,
            )
            self._unknown_logged = True
        self.rejected, self.since = None, None
        self.backoff.reset()
        self._next = now + self.interval
        return False

    def retry_in(self) -> float:
        return max(0.0, self._next - self._clock())

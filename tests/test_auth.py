"""Unit tests of the credentials check: what the portal's answers mean, and when
the watch asks again."""

from __future__ import annotations

import logging

import pytest

from leampoll.auth import AuthResult, AuthWatch, Verdict, classify
from leampoll.backoff import Backoff
from leampoll.portal import Answered

SITE = "https://portal.example.org/luc"

LOGIN = "https://portal.example.org/luc/require_login?came_from=x"


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        (Answered(204), Verdict.OK),
        (Answered(200, "0"), Verdict.OK),
        (Answered(200, "False"), Verdict.OK),
        (Answered(200, "1"), Verdict.REJECTED),
        (Answered(200, " 1\n"), Verdict.REJECTED),
        (Answered(200, "True"), Verdict.REJECTED),
        (Answered(302, "", LOGIN), Verdict.REJECTED),
        (Answered(302, "", "https://portal.example.org/luc/login_form"), Verdict.REJECTED),
        (Answered(401, "Unauthorized"), Verdict.REJECTED),
        (Answered(302, "", "https://portal.example.org/elsewhere"), Verdict.UNKNOWN),
        (Answered(404, "<html>not found</html>"), Verdict.UNKNOWN),
        (Answered(200, "<html>a page</html>"), Verdict.UNKNOWN),
        (Answered(500, "boom"), Verdict.UNKNOWN),
    ],
)
def test_classify_is_anonymous_answers(answer, verdict):
    assert classify(answer).verdict is verdict


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watch(answers: list[AuthResult], interval: float = 600.0) -> tuple[AuthWatch, Clock, list]:
    clock, asked = Clock(), []

    def ask() -> AuthResult:
        asked.append(clock.now)
        return answers.pop(0)

    backoff = Backoff(base=10, cap=60, floor=10)
    return AuthWatch("poller", SITE, interval, backoff, ask, clock), clock, asked


OK, BAD = AuthResult(Verdict.OK, "204"), AuthResult(Verdict.REJECTED, "Anonymous")


def test_auth_checked_first_then_every_interval():
    w, clock, asked = watch([OK, OK])
    assert not w.holding() and asked == [1000.0]
    clock.now += 599
    assert not w.holding() and len(asked) == 1
    clock.now += 1
    assert not w.holding() and len(asked) == 2


def test_auth_hold_rechecks_with_backoff_and_ends(caplog):
    caplog.set_level(logging.INFO, "leampoll")
    w, clock, asked = watch([BAD, BAD, OK])
    assert w.holding() and w.rejected is BAD and w.since is not None
    assert 10 <= w.retry_in() <= 10.0001
    assert w.holding() and len(asked) == 1  # not yet due
    clock.now += 10
    assert w.holding() and len(asked) == 2
    clock.now += 60
    assert not w.holding() and w.rejected is None
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "poller" in errors[0].getMessage()
    assert "accepted" in caplog.records[-1].getMessage()


def test_auth_suspect_asks_before_the_next_pop():
    w, _clock, asked = watch([OK, BAD])
    assert not w.holding()
    w.suspect()
    assert w.holding() and len(asked) == 2


def test_auth_unknown_is_logged_once_and_never_holds(caplog):
    unknown = AuthResult(Verdict.UNKNOWN, "HTTP 404")
    w, clock, _ = watch([unknown, unknown], interval=1)
    assert not w.holding()
    clock.now += 1
    assert not w.holding()
    assert sum("cannot tell" in r.getMessage() for r in caplog.records) == 1


def test_auth_no_answer_keeps_the_last_verdict():
    w, clock, _ = watch([BAD, AuthResult(Verdict.UNKNOWN, "timeout", transient=True)])
    assert w.holding()
    clock.now += 100
    assert w.holding()

"""Unit tests for the pure parts of speaking to a real portal: origins, repository
values, report chains, credential answers, pop answers of Plone, portal trouble.

No network, no subprocesses.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from leampoll.auth import AuthResult, AuthWatch, Verdict, classify
from leampoll.backoff import Backoff
from leampoll.checkout import plan
from leampoll.config import ConfigError, load
from leampoll.delivery import EndpointMemory, attempts
from leampoll.origins import TrustedOrigins, origin_of
from leampoll.portal import Answered, Empty, Job, Refused, error_page_summary, parse_answer
from leampoll.portal_health import PortalHealth
from leampoll.state import Report
from testing.portal_standin import LEGACY_XML_TYPE, TRACEBACK_PAGE

SITE = "https://portal.example.org/luc"
CREDS = {"PORTAL_USER": "poller", "PORTAL_PASSWORD": "s3cret"}

# -- origins ----------------------------------------


@pytest.mark.parametrize("url", [
    "https://portal.example.org/luc/scenarios/x",
    "HTTPS://Portal.Example.ORG:443/other/path",
    "https://portal.example.org./x",
])
def test_same_origin_after_normalising(url):
    assert TrustedOrigins.build(SITE).allows(url)


@pytest.mark.parametrize("url", [
    "http://portal.example.org/luc/x",  # another scheme
    "https://portal.example.org:8443/luc/x",  # another port
    "https://evil.example.org/luc/x",
    "https://portal.example.org@evil.example.org/x",
    "https://user:pw@portal.example.org/x",  # credentials in the URL
    "ftp://portal.example.org/x",
    "/luc/x",
    "",
    "http://[::1/x",
])
def test_other_origins_are_refused(url):
    assert not TrustedOrigins.build(SITE).allows(url)


def test_default_http_port_is_normalised():
    trusted = TrustedOrigins.build("http://127.0.0.1/portal")
    assert trusted.allows("http://127.0.0.1:80/portal/jobs/x")
    assert not trusted.allows("http://127.0.0.1:8080/portal/jobs/x")


def test_trusted_origin_list_is_honoured():
    trusted = TrustedOrigins.build("http://10.0.0.5:8080/luc", ["https://Portal.Example.org"])
    assert trusted.allows("https://portal.example.org:443/luc/scenarios/x")
    assert not trusted.allows("http://portal.example.org/luc/scenarios/x")
    assert str(origin_of("https://portal.example.org:443/x")) == "https://portal.example.org"
    assert str(origin_of("http://localhost:8081/x")) == "http://localhost:8081"


def test_trusted_origin_option(tmp_path):
    config = load(["--trusted-origin", "https://public.example.org", "--trusted-origin",
                   "http://localhost:8080", "--workdir", str(tmp_path), SITE], CREDS)
    assert config.trusted.allows("http://localhost:8080/luc/x")
    assert config.trusted.allows("https://public.example.org/luc/x")
    with pytest.raises(ConfigError, match="--trusted-origin"):
        load(["--trusted-origin", "public.example.org", SITE], CREDS)


def test_new_options_defaults(tmp_path):
    config = load(["--workdir", str(tmp_path), SITE], CREDS)
    assert config.auth_check_interval == 600 and not config.keep_failed_running
    assert config.trusted_origins == ()
    config = load(["--workdir", str(tmp_path), "--keep-failed-running",
                   "--auth-check-interval", "60", SITE], CREDS)
    assert config.auth_check_interval == 60 and config.keep_failed_running


# -- repository values ----------------------------------------

RUNDIR = Path("/jobs/x")


@pytest.mark.parametrize(("value", "argv"), [
    ("https://svn.example.org/luc/trunk",
     ["svn", "checkout", "--non-interactive", "https://svn.example.org/luc/trunk", "/jobs/x"]),
    ("svn+ssh://svn.example.org/luc", ["svn", "checkout", "--non-interactive",
                                       "svn+ssh://svn.example.org/luc", "/jobs/x"]),
    ("file:///srv/svn/luc/trunk",
     ["svn", "checkout", "--non-interactive", "file:///srv/svn/luc/trunk", "/jobs/x"]),
    ("  svn://svn.example.org/luc  ",
     ["svn", "checkout", "--non-interactive", "svn://svn.example.org/luc", "/jobs/x"]),
    ("https://git.example.org/luc.git",
     ["git", "clone", "--quiet", "https://git.example.org/luc.git", "/jobs/x"]),
    ("file:///srv/git/model.git/", ["git", "clone", "--quiet", "file:///srv/git/model.git/",
                                    "/jobs/x"]),
    ("git@github.com:leam/luc.git", ["git", "clone", "--quiet", "git@github.com:leam/luc.git",
                                     "/jobs/x"]),
    ("git://git.example.org/luc", ["git", "clone", "--quiet", "git://git.example.org/luc",
                                   "/jobs/x"]),
    ("svn co https://svn.example.org/luc",
     ["svn", "co", "--non-interactive", "https://svn.example.org/luc", "/jobs/x"]),
    ("git clone -q 'https://git.example.org/a b.git'",
     ["git", "clone", "-q", "https://git.example.org/a b.git", "/jobs/x"]),
    ("/opt/models/fetch.sh", ["/opt/models/fetch.sh", "/jobs/x"]),
])
def test_repository_values(value, argv):
    assert plan(value, RUNDIR).argv == argv


def test_repository_kinds():
    assert plan("https://svn.example.org/x", RUNDIR).kind == "svn"
    assert plan("git@host:x.git", RUNDIR).kind == "git"
    assert plan("svn co https://svn.example.org/x", RUNDIR).kind == "command"


def test_repository_command_that_cannot_be_split():
    with pytest.raises(ValueError):
        plan("svn co 'unclosed", RUNDIR)


# -- report chains ----------------------------------------

JOB_URL = "https://portal.example.org/luc/scenarios/x"


def report(kind: str, job_url: str = JOB_URL) -> Report:
    url = {"success": job_url + "/success", "error": job_url + "/error",
           "requeue": job_url + "/requeue"}[kind]
    fallback = job_url + "/error" if kind == "requeue" else ""
    return Report(kind, url, "the message", "x", fallback, job_url=job_url)


def chain(rep: Report, known: bool = False, keep: bool = False) -> list[tuple[str, dict]]:
    return [(a.endpoint, a.fields) for a in attempts(rep, known, keep)]


def test_success_chain():
    assert chain(report("success")) == [
        ("on_success", {"message": "the message"}),
        ("end_run", {"status": "complete", "message": "the message"})]
    assert chain(report("success"), known=True) == [
        ("end_run", {"status": "complete", "message": "the message"})]
    assert chain(report("success"), known=True, keep=True) == chain(report("success"), True)


def test_error_chain():
    assert [e for e, _ in chain(report("error"))] == ["on_error", "end_run"]
    assert chain(report("error"), known=True) == [
        ("end_run", {"status": "error", "message": "the message"})]
    assert [e for e, _ in chain(report("error"), keep=True)] == ["on_error"]
    assert chain(report("error"), known=True, keep=True) == []


def test_requeue_chain_falls_back_to_ending_as_error():
    assert [e for e, _ in chain(report("requeue"))] == ["requeue", "on_error", "end_run"]
    assert [e for e, _ in chain(report("requeue"), known=True)] == ["requeue", "end_run"]
    attempt = attempts(report("requeue"), True, False)[0]
    assert attempt.url == JOB_URL + "/requeue"


def test_old_outbox_report_without_job_url():
    old = Report("success", JOB_URL + "/success", "m", "x")
    assert attempts(old, True, False)[0].url == JOB_URL + "/end_run"


def test_endpoint_memory_is_per_site(tmp_path):
    path = tmp_path / "endpoints.json"
    memory = EndpointMemory(path, SITE)
    assert not memory.end_run
    memory.learn_end_run("on_success HTTP 404")
    assert EndpointMemory(path, SITE).end_run
    assert not EndpointMemory(path, "https://other.example.org").end_run


# -- credentials ----------------------------------------

LOGIN = "https://portal.example.org/luc/require_login?came_from=x"


@pytest.mark.parametrize(("answer", "verdict"), [
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
])
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


# -- Plone's pop answers ----------------------------------------


def test_login_redirect_of_a_private_site():
    answer = parse_answer(302, "text/html", b"", location=LOGIN)
    assert isinstance(answer, Refused) and answer.login_redirect
    assert "require_login" in answer.reason


def test_other_redirect_is_not_a_login():
    answer = parse_answer(301, "text/html", b"", location="https://portal.example.org/luc/")
    assert isinstance(answer, Refused) and answer.kind == "redirect"


@pytest.mark.parametrize(("status", "kind"), [(500, "http_5xx"), (503, "http_5xx"),
                                              (404, "http_4xx"), (401, "http_4xx")])
def test_error_kinds(status, kind):
    assert parse_answer(status, "text/plain", b"x").kind == kind


def test_traceback_page_names_the_exception():
    answer = parse_answer(500, "text/html;charset=utf-8", TRACEBACK_PAGE)
    assert isinstance(answer, Refused) and "AttributeError: repository" in answer.reason
    assert error_page_summary(b"<html><h1>Down for maintenance</h1></html>") == \
        "Down for maintenance"


def test_legacy_xml_type_with_two_semicolons():
    doc = (b'<?xml version="1.0" encoding="UTF-8"?>\n<model><scenario><id>s1</id>'
           b"<repository>https://svn.example.org/luc</repository></scenario></model>")
    job = parse_answer(200, LEGACY_XML_TYPE, doc)
    assert isinstance(job, Job) and job.id == "s1"
    assert isinstance(parse_answer(200, LEGACY_XML_TYPE, b"<model>EMPTY</model>"), Empty)


# -- portal trouble ----------------------------------------


def test_portal_health_keeps_since_last_and_totals():
    health = PortalHealth({"http_5xx": 3})
    health.failed("http_5xx", "HTTP 500 a", now=10)
    health.failed("unreachable", "refused", now=20)
    status = health.as_status()
    assert status == {"since": 10, "reason": "unreachable", "last": "refused", "at": 20,
                      "count": 2}
    assert health.totals == {"http_5xx": 4, "unreachable": 1}
    ended = health.answered()
    assert ended is not None and ended.count == 2 and health.as_status() is None

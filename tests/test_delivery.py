"""Unit tests of report delivery: the chain of endpoints a report tries, and the
memory of portals that end jobs through end_run."""

from __future__ import annotations

from leampoll.delivery import EndpointMemory, attempts
from leampoll.jobs import Report

SITE = "https://portal.example.org/luc"
JOB_URL = "https://portal.example.org/luc/scenarios/x"


def report(kind: str, job_url: str = JOB_URL) -> Report:
    url = {
        "success": job_url + "/success",
        "error": job_url + "/error",
        "requeue": job_url + "/requeue",
    }[kind]
    fallback = job_url + "/error" if kind == "requeue" else ""
    return Report(kind, url, "the message", "x", fallback, job_url=job_url)


def chain(rep: Report, known: bool = False, keep: bool = False) -> list[tuple[str, dict]]:
    return [(a.endpoint, a.fields) for a in attempts(rep, known, keep)]


def test_success_chain():
    assert chain(report("success")) == [
        ("on_success", {"message": "the message"}),
        ("end_run", {"status": "complete", "message": "the message"}),
    ]
    assert chain(report("success"), known=True) == [
        ("end_run", {"status": "complete", "message": "the message"})
    ]
    assert chain(report("success"), known=True, keep=True) == chain(report("success"), True)


def test_error_chain():
    assert [e for e, _ in chain(report("error"))] == ["on_error", "end_run"]
    assert chain(report("error"), known=True) == [
        ("end_run", {"status": "error", "message": "the message"})
    ]
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

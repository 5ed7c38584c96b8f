"""What the portal stand-in knows of each job, in one place.

Tests of retire and of self-provisioned hosts assert job outcomes only
through these helpers, so a change of the stand-in's protocol (how a job is
ended) is adapted here once.
"""

from __future__ import annotations

from testing.portal_standin import REPORT_KINDS, PortalStandin


def _said(kind: str, form: dict[str, str]) -> str:
    """What a report the portal took says: success, error or requeue."""
    if kind == "end_run":  # the real portal's one way to end a job; its status field says how
        return {"complete": "success"}.get(form.get("status", ""), "error")
    return kind


def report_kinds(portal: PortalStandin, job_id: str) -> list[str]:
    """The outcome reports (success, error, requeue) the portal took for one job."""
    with portal.lock:
        return [
            _said(r.kind, r.form)
            for r in portal.received
            if r.job_id == job_id and r.kind in REPORT_KINDS and 200 <= r.answer < 300
        ]


def job_state(portal: PortalStandin, job_id: str) -> str | None:
    """queued (also after a requeue), running, or how it ended: success or error."""
    with portal.lock:
        status = portal.status.get(job_id)
        if status in ("queued", "running", None):
            return status
    told = [k for k in report_kinds(portal, job_id) if k != "requeue"]
    return told[-1] if told else status


def wait_job_state(portal: PortalStandin, job_id: str, state: str, timeout: float = 60) -> None:
    portal.wait_for(lambda p: job_state(p, job_id) == state, timeout)

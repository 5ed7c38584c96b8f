"""What the portal stand-in knows of each job, in one place.

Tests of retire and of self-provisioned hosts assert job outcomes only
through these helpers, so a change of the stand-in's protocol (how a job is
ended) is adapted here once.
"""

from __future__ import annotations

from tests.portal_standin import PortalStandin

ENDED = ("success", "error")


def job_state(portal: PortalStandin, job_id: str) -> str | None:
    """queued (also after a requeue), running, success or error."""
    with portal.lock:
        return portal.status.get(job_id)


def wait_job_state(portal: PortalStandin, job_id: str, state: str, timeout: float = 60) -> None:
    portal.wait_for(lambda p: p.status.get(job_id) == state, timeout)



def report_kinds(portal: PortalStandin, job_id: str) -> list[str]:
    """The outcome reports (success, error, requeue) the portal received for one job."""
    return [r.kind for r in portal.reports() if f"/{job_id}/" in r.path + "/"]

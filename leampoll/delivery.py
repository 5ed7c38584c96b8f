"""Report delivery: which portal endpoint ends a job, and what its answer means.

A job hands the poller `on_success` and `on_error` URLs, but a real LEAM
portal has neither (both answer 404): what it offers is `<url>/end_run`
(runstatus complete, answers 204) and `<url>/requeue` (runstatus queued).
So each report is a short chain of attempts: the job's own URL first, and on
a 404 or 405 `end_run`, with `status` and `message` fields that today's
portal ignores and a later one may read. Once `end_run` has ended a job
after such a 404, the portal is remembered (in the state folder, so a restart
keeps it) and later reports go straight to `end_run`.

Any 2xx is delivered. A redirect is never followed (it would carry the
credentials somewhere else): it is logged with its Location and the report is
set aside. Network trouble, 5xx, 401/403/408/429 leave it in the outbox.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from leampoll.jobs import Report
from leampoll.origins import origin_of
from leampoll.portal import PortalClient, ReportError
from leampoll.security import insecure_http
from leampoll.state import read_json, write_json

log = logging.getLogger("leampoll")

MISSING = (404, 405)  # the endpoint does not exist on this portal
TRANSIENT = (401, 403, 408, 429)


@dataclass(frozen=True)
class Attempt:
    """One POST of a report: where, which form fields, and the endpoint's name."""

    endpoint: str  # on_success, on_error, end_run, requeue
    url: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delivery:
    """What became of a report."""

    state: str  # delivered, retry (kept in the outbox), undeliverable, left_running
    endpoint: str = ""
    detail: str = ""


def job_url_of(report: Report) -> str:
    """The job's own URL (older outbox files lack it: the report URL's parent)."""
    return report.job_url or report.url.rstrip("/").rsplit("/", 1)[0]


def attempts(report: Report, end_run_known: bool, keep_failed_running: bool) -> list[Attempt]:
    """The endpoints to try for a report, in order (pure; see the module text)."""
    base = job_url_of(report).rstrip("/")
    end_run = base + "/end_run" if base else ""
    message = {"message": report.message}
    chain: list[Attempt] = []
    if report.kind == "requeue":
        chain.append(Attempt("requeue", report.url, message))
        error_url = report.fallback
    elif report.kind == "success":
        if not end_run_known and report.url:
            chain.append(Attempt("on_success", report.url, message))
        if end_run:
            chain.append(Attempt("end_run", end_run, {"status": "complete", **message}))
        return chain
    else:
        error_url = report.url
    if error_url and not end_run_known:
        chain.append(Attempt("on_error", error_url, message))
    if end_run and not keep_failed_running:
        chain.append(Attempt("end_run", end_run, {"status": "error", **message}))
    return chain


class EndpointMemory:
    """Whether this portal ends jobs through end_run, kept across restarts."""

    def __init__(self, path: Path, site: str) -> None:
        self.path = path
        self.site = site
        data = read_json(path)
        self.end_run = (
            isinstance(data, dict) and data.get("site") == site and bool(data.get("end_run"))
        )

    def learn_end_run(self, why: str) -> None:
        self.end_run = True
        try:
            write_json(
                self.path, {"site": self.site, "end_run": True, "learned": time.time(), "why": why}
            )
        except OSError as exc:
            log.warning("cannot remember the portal's end_run endpoint in %s: %s", self.path, exc)


class Deliverer:
    """Delivers one report through its chain of attempts."""

    def __init__(
        self, portal: PortalClient, memory: EndpointMemory, keep_failed_running: bool = False
    ) -> None:
        self.portal = portal
        self.memory = memory
        self.keep_failed_running = keep_failed_running

    def deliver(self, report: Report) -> Delivery:
        chain = attempts(report, self.memory.end_run, self.keep_failed_running)
        missing: list[tuple[str, int]] = []  # (endpoint, status) of the 404/405s
        for attempt in chain:
            insecure = insecure_http(attempt.url, self.portal.allow_insecure_http)
            if insecure:
                # Checked before the origin: even a trusted origin gets no password in clear.
                return Delivery(
                    "undeliverable",
                    attempt.endpoint,
                    f"{attempt.endpoint} URL {attempt.url} refused: {insecure}",
                )
            if not self.portal.trusted.allows(attempt.url):
                return self._untrusted(report, attempt)
            try:
                answer = self.portal.post(attempt.url, attempt.fields)
            except ReportError as exc:
                if exc.permanent:
                    return Delivery("undeliverable", attempt.endpoint, str(exc))
                log.warning(
                    "job %s: %s report not delivered to %s: %s; kept for a retry",
                    report.job_id,
                    report.kind,
                    attempt.endpoint,
                    exc,
                )
                return Delivery("retry", attempt.endpoint, str(exc))
            status = answer.status
            if 200 <= status < 300:
                gone = [f"{e} HTTP {s}" for e, s in missing if e in ("on_success", "on_error")]
                if gone and attempt.endpoint == "end_run" and not self.memory.end_run:
                    self.memory.learn_end_run(", ".join(gone))
                    log.info(
                        "the portal has no report endpoints (%s): jobs are ended "
                        "with end_run from now on",
                        ", ".join(gone),
                    )
                return Delivery("delivered", attempt.endpoint, f"HTTP {status}")
            if status in MISSING:
                log.info(
                    "job %s: %s answered HTTP %d; trying the next endpoint",
                    report.job_id,
                    attempt.endpoint,
                    status,
                )
                missing.append((attempt.endpoint, status))
                continue
            if 300 <= status < 400:
                detail = (
                    f"{attempt.endpoint} answered HTTP {status} Location: "
                    f"{answer.location[:200] or '(none)'}; redirects are not followed "
                    "with credentials"
                )
                return Delivery("undeliverable", attempt.endpoint, detail)
            if status >= 500 or status in TRANSIENT:
                log.warning(
                    "job %s: %s report not delivered: %s answered HTTP %d; kept for a retry",
                    report.job_id,
                    report.kind,
                    attempt.endpoint,
                    status,
                )
                return Delivery("retry", attempt.endpoint, f"HTTP {status}")
            return Delivery(
                "undeliverable",
                attempt.endpoint,
                f"{attempt.endpoint} answered HTTP {status}: {answer.text[:80]!r}",
            )
        tried = "; ".join(f"{e} answered HTTP {s}" for e, s in missing)
        if report.kind != "success" and self.keep_failed_running:
            return Delivery("left_running", "", tried or "the portal has no error endpoint")
        return Delivery("undeliverable", "", tried or "no URL to report to")

    def _untrusted(self, report: Report, attempt: Attempt) -> Delivery:
        origin = origin_of(attempt.url)
        hint = (
            f"if {origin} is this portal under another name, pass --trusted-origin "
            f"{origin} (role: trusted_origins)"
            if origin
            else "not an http(s) URL"
        )
        return Delivery(
            "undeliverable",
            attempt.endpoint,
            f"{attempt.endpoint} URL {attempt.url} is not on the portal's origin "
            f"{self.portal.trusted.site}; refused ({hint})",
        )

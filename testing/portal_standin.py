"""A LEAM Planning Portal stand-in: a real HTTP server on loopback.

It answers as ../shared/reference/portal-protocol.md describes and records
every request it receives, with each job's run state and history, so the
poller's tests, the provisioning tests, the benchmarks and the demo all watch
real HTTP traffic. A full Plone site cannot run here; this is the one mock
the project allows itself. Two modes:

- `plone` (the default): exactly what a real portal (leam.luc on Plone 4.3)
  answers. Wrong or missing credentials make a request Anonymous, which sees
  only jobs marked public (and may pop them), or, on a private site, is
  redirected to `require_login`. `<url>/requeue` -> 200 `requeue`;
  `<url>/end_run` -> 204; `<url>/success` and `<url>/error` -> 404 (they do
  not exist); `portal_membership/isAnonymousUser` -> `1` or 204. A queued
  broken item (a kind without a repository) makes every pop answer 500.
- `extended`: a portal that also has `success` and `error` endpoints reading
  `message`, and refuses bad credentials with 401 (or a login page).

It is proven against the real portal (leam.luc on Plone 4.3, built by
`testing/real_portal/`) by tests/test_standin_matches_real.py. Set up as that
portal is (`base_path="/leam"`, `job_folder=""`, a plain member in `members`),
it also answers `search_rss` (Plone's RSS 1.0 list of the jobs the user may
see, by `runstatus`), job URLs through Zope's VirtualHostMonster
(`/VirtualHostBase/http/host:port/leam/VirtualHostRoot/...`), and, with
`settings_unset`, a site whose `scenario_repo` is unset (500 on a pop that
finds a job, which stays queued).

Run states follow the portal's `runstatus`: queued, running, complete; the
extended portal's `error` endpoint sets `error`.

Library use::

    with PortalStandin(user="poller", password="pw") as portal:
        portal.queue("job-1", "sh -c 'echo hi'")
        ...  # run leampoll against portal.url
        portal.wait_for(lambda p: p.status["job-1"] == "complete", timeout=10)
        assert portal.events("job-1") == ["pop 200", "success 404", "end_run 204"]

Faults: `script()` queues answers for the next pops; `fault_hook`, when set,
is asked about every request first and may return a `Canned` answer (with a
delay, a truncated body or a reset connection) to serve instead.

Command line (for the demo and for people)::

    PORTAL_PASSWORD=pw python -m testing.portal_standin serve --port 8780 --user poller
    python -m testing.portal_standin queue --url http://127.0.0.1:8780 --id j1 --cmdline 'true'
    python -m testing.portal_standin received --url http://127.0.0.1:8780
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import itertools
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

ADMIN = "/_standin"
MODES = ("plone", "extended")
REPORT_KINDS = ("success", "error", "requeue", "end_run")
# The legacy XML answer's content type, as the portals of 2012-2014 sent it (sic).
LEGACY_XML_TYPE = "application/xml;;charset=UTF-8"

NOT_FOUND_PAGE = (
    b"<!DOCTYPE html><html><head><title>Site</title></head><body>"
    b"<div id='content'><h1 class='documentFirstHeading'>This page does not seem to exist"
    b"&hellip;</h1><p>We apologize for the inconvenience, but the page you were trying to "
    b"access is not at this address.</p></div></body></html>"
)


def traceback_page(error: str) -> bytes:
    """Plone's error page as a Manager sees it: the traceback's last line names the error."""
    return (
        "<!DOCTYPE html><html><head><title>Site error</title></head><body>"
        "<h1 class='documentFirstHeading'>We&#8217;re sorry, but there seems to be an error"
        "&hellip;</h1><p>Traceback (innermost last):</p><ul><li>  Module ZPublisher.Publish, "
        "line 138, in publish</li><li>  Module leam.luc.browser.queue, line 53, in __call__"
        f"</li></ul><p>{escape(error)}\n</p></body></html>"
    ).encode()


# A queued item of a kind without repository() (stress analysis, SCALDS).
TRACEBACK_PAGE = traceback_page("AttributeError: repository")
# A LUC scenario popped while the site's scenario_repo is unset.
UNSET_SETTINGS_PAGE = traceback_page("AttributeError: 'NoneType' object has no attribute 'format'")
# The order of a pop answer's keys on the real portal (a Python 2.7 dict's).
POP_KEYS = ("status", "repository", "title", "url", "on_success", "cmdline", "on_error", "id")
RSS_TYPE = "application/atom+xml; charset=utf-8"  # (sic) RSS 1.0, as Plone 4.3 labels it
SITE_TITLE = "LEAM Planning Portal"


@dataclass
class Received:
    """One request the stand-in received (admin requests are not recorded)."""

    method: str
    path: str
    user: str | None  # None: Anonymous (no or wrong credentials)
    form: dict[str, str]
    at: float
    kind: str  # pop, success, error, requeue, end_run, check, other (-refused: report_status)
    agent: str = ""
    client_port: int = 0  # the same port on two requests: one kept-alive connection
    job_id: str | None = None
    answer: int = 0  # the status it was answered with
    host: str = ""  # the Host header (virtual hosting)
    site_url: str = ""  # the site's URL as this request names it (VirtualHostMonster)
    query: dict[str, str] = field(default_factory=dict)


@dataclass
class Canned:
    """A scripted answer. `reset` drops the connection instead; `truncate` sends only
    that many bytes of the body (with the full Content-Length)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False
    truncate: int | None = None


class PortalStandin:
    """The portal: a queue of jobs, their run states and histories, and a log of requests."""

    def __init__(
        self,
        user: str = "poller",
        password: str = "secret",
        host: str = "127.0.0.1",
        port: int = 0,
        base_path: str = "/portal",
        auth_failure: str = "401",
        mode: str = "plone",
        private: bool = False,
        public_url: str | None = None,
        legacy_xml: bool = False,
        tls: tuple[str, str] | None = None,
        members: dict[str, str] | None = None,
        job_folder: str = "jobs",
    ) -> None:
        """`tls=(certfile, keyfile)` serves https:// with that certificate. `members`:
        plain members (user -> password), who log in but see only public jobs.
        `job_folder`: the folder below the site holding the jobs ("" puts them in the
        site itself, as leam.luc's scenarios are)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.user = user
        self.password = password
        self.base_path = base_path.rstrip("/")
        self.mode = mode
        self.private = private  # plone: Anonymous is redirected to require_login
        self.public_url = public_url  # job URLs on this origin (virtual hosting)
        self.legacy_xml = legacy_xml  # plone: answer pops in the 2012-2014 XML form
        self.auth_failure = auth_failure  # extended: "401" or "html" (a 200 login page)
        self.members = dict(members or {})
        self.job_folder = job_folder.strip("/")
        # plone: the site's scenario_repo is unset, so a pop that finds a job answers 500
        # (the job stays queued), as a new site does until an operator sets it.
        self.settings_unset = False
        self.lock = threading.Condition()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.status: dict[str, str] = {}  # runstatus per job
        self.history: dict[str, list[str]] = {}  # per job: "pop 200", "end_run 204", ...
        self.public: set[str] = set()  # jobs Anonymous may View (and so pop)
        self.broken: set[str] = set()  # items whose pop raises (500) while queued
        self.waiting: collections.deque[str] = collections.deque()
        self.canned: collections.deque[Canned] = collections.deque()
        self.received: list[Received] = []
        self.pop_delay = 0.0
        self.report_status = 200  # set to 503 to make the portal refuse reports
        self.fault_hook: Callable[[Received], Canned | None] | None = None
        self._server = ThreadingHTTPServer((host, port), _make_handler(self))
        self._server.daemon_threads = True
        self.scheme = "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------

    @property
    def root(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host}:{port}"

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The site URL a poller is given."""
        return self.root + self.base_path

    @property
    def job_base(self) -> str:
        """The site URL as the portal itself builds it (virtual hosting may change it)."""
        return (self.public_url.rstrip("/") if self.public_url else self.root) + self.base_path

    def start(self) -> PortalStandin:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> PortalStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the queue -------------------------------------------------------

    def queue(
        self,
        job_id: str,
        cmdline: str,
        repository: str = "",
        title: str | None = None,
        public: bool = False,
        broken: bool = False,
        **extra: Any,
    ) -> dict[str, Any]:
        """Queue a job the way the portal would describe it when popped.

        `public`: Anonymous may see and pop it. `broken`: an item of a kind
        without a repository; while it is queued every pop answers 500.
        """
        folder = f"/{self.job_folder}" if self.job_folder else ""
        job_url = f"{self.job_base}{folder}/{urllib.parse.quote(job_id, safe='')}"
        job = {
            "status": "OK",
            "id": job_id,
            "title": title or job_id,
            "url": job_url,
            "repository": repository,
            "cmdline": cmdline,
            "on_success": job_url + "/success",
            "on_error": job_url + "/error",
        }
        job.update(extra)
        with self.lock:
            self.jobs[job_id] = job
            self.status[job_id] = "queued"
            self.history.setdefault(job_id, [])
            (self.public.add if public else self.public.discard)(job_id)
            (self.broken.add if broken else self.broken.discard)(job_id)
            if job_id not in self.waiting:
                self.waiting.append(job_id)
            self.lock.notify_all()
        return job

    def remove(self, job_id: str) -> None:
        """What an admin does with a broken item: delete it."""
        with self.lock:
            with contextlib.suppress(ValueError):
                self.waiting.remove(job_id)
            self.broken.discard(job_id)
            self.status.pop(job_id, None)
            self.lock.notify_all()

    def script(self, *answers: Canned) -> None:
        """Serve these answers to the next pops, before any queued job."""
        with self.lock:
            self.canned.extend(answers)

    def requests_of(self, kind: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.kind == kind]

    def reports(self, kind: str | None = None) -> list[Received]:
        """Report requests received (delivered or not), optionally only one kind."""
        kinds = {kind} if kind else set(REPORT_KINDS)
        with self.lock:
            return [r for r in self.received if r.kind in kinds]

    def events(self, job_id: str) -> list[str]:
        """What happened to a job, in order: 'pop 200', 'success 404', 'end_run 204', ..."""
        with self.lock:
            return list(self.history.get(job_id, []))

    def ending(self, job_id: str) -> Received | None:
        """The last report that the portal took (2xx) for this job."""
        with self.lock:
            taken = [
                r
                for r in self.received
                if r.job_id == job_id and r.kind in REPORT_KINDS and 200 <= r.answer < 300
            ]
        return taken[-1] if taken else None

    def outcome(self, job_id: str) -> str | None:
        """What the poller told the portal last: success, error, requeued, or None.

        An end_run says which through its `status` field (complete or error),
        which only the stand-in reads.
        """
        last = self.ending(job_id)
        if last is None:
            return None
        if last.kind == "end_run":
            return {"complete": "success", "error": "error"}.get(last.form.get("status", ""))
        return {"requeue": "requeued"}.get(last.kind, last.kind)

    def told(self) -> dict[str, int]:
        """How many reports of each outcome the portal took (success, error, requeued):
        what the poller's own counters must say."""
        counts = dict.fromkeys(("success", "error", "requeued"), 0)
        with self.lock:
            taken = [r for r in self.received if r.kind in REPORT_KINDS and 200 <= r.answer < 300]
        for r in taken:
            if r.kind == "end_run":
                told = {"complete": "success", "error": "error"}.get(r.form.get("status", ""))
            else:
                told = {"requeue": "requeued"}.get(r.kind, r.kind)
            if told:
                counts[told] += 1
        return counts

    def ended_once(self, job_id: str) -> bool:
        """Each pop of the job was followed by exactly one report the portal took."""
        events = self.events(job_id)
        pops = [i for i, e in enumerate(events) if e.startswith("pop ")]
        bounds = [*pops, len(events)]
        for start, end in itertools.pairwise(bounds):
            taken = [
                e
                for e in events[start + 1 : end]
                if e.split()[0] in REPORT_KINDS and e.split()[1].startswith("2")
            ]
            if len(taken) != 1:
                return False
        return bool(pops)

    def wait_for(self, predicate: Callable[[PortalStandin], Any], timeout: float = 30.0) -> Any:
        """Wait until predicate(self) is truthy; AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                value = predicate(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"portal stand-in: condition not met in {timeout}s; "
                        f"states={self.status} received={[r.kind for r in self.received]}"
                    )
                self.lock.wait(min(left, 0.5))

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "mode": self.mode,
                "status": dict(self.status),
                "history": {k: list(v) for k, v in self.history.items()},
                "outcome": {k: self.outcome(k) for k in self.status},
                "queued": list(self.waiting),
                "received": [asdict(r) for r in self.received],
            }

    # -- request handling (called from handler threads) -------------------

    def _record(self, rec: Received) -> None:
        with self.lock:
            self.received.append(rec)
            self.lock.notify_all()

    def _answered(self, rec: Received, status: int) -> None:
        with self.lock:
            rec.answer = status
            if rec.job_id in self.history and rec.kind.split("-")[0] in ("pop", *REPORT_KINDS):
                self.history[rec.job_id].append(f"{rec.kind} {status}")
            self.lock.notify_all()

    def _may_view(self, user: str | None, job_id: str) -> bool:
        """The portal's user sees every job; Anonymous and plain members the public ones."""
        return (user is not None and user not in self.members) or job_id in self.public

    def _pop(self, user: str | None = "") -> Canned:
        """The next pop's answer; `user` None is Anonymous ('' : as the portal's user)."""
        with self.lock:
            if self.canned:
                return self.canned.popleft()
            if any(j in self.broken for j in self.waiting):
                return Canned(500, TRACEBACK_PAGE, "text/html;charset=utf-8")
            visible = [j for j in self.waiting if self._may_view(user, j)]
            if not visible:
                return self._answer({"status": "EMPTY"})
            if self.settings_unset:
                return Canned(500, UNSET_SETTINGS_PAGE, "text/html;charset=utf-8")
            job_id = visible[0]
            self.waiting.remove(job_id)
            self.status[job_id] = "running"  # before answering, as the portal does
            self.lock.notify_all()
            return self._answer(self.jobs[job_id], job_id)

    def _answer(self, data: dict[str, Any], job_id: str | None = None) -> Canned:
        if not self.legacy_xml:
            ordered = {k: data[k] for k in POP_KEYS if k in data}
            ordered.update(data)
            return Canned(body=json.dumps(ordered).encode())
        if job_id is None:
            doc = "<model>EMPTY</model>"
        else:
            doc = (
                f"<model><scenario><id>{escape(job_id)}</id><title>{escape(data['title'])}"
                f"</title><repository>{escape(data['repository'])}</repository></scenario>"
                "</model>"
            )
        return Canned(
            body=f'<?xml version="1.0" encoding="UTF-8"?>\n{doc}'.encode(),
            content_type=LEGACY_XML_TYPE,
        )

    def _end(self, job_id: str, kind: str) -> None:
        """A report the portal takes: set the job's runstatus."""
        with self.lock:
            if job_id not in self.status:
                return
            if kind == "requeue":
                self.status[job_id] = "queued"
                if job_id not in self.waiting:
                    self.waiting.append(job_id)
            else:
                # The real portal pops by runstatus: a job ended while queued is not popped.
                self.status[job_id] = "error" if kind == "error" else "complete"
                if job_id in self.waiting:
                    self.waiting.remove(job_id)
            self.lock.notify_all()

    def _login_redirect(self, came_from: str) -> Canned:
        target = f"{self.url}/require_login?came_from={urllib.parse.quote(came_from, safe='')}"
        return Canned(302, b"", "text/html;charset=utf-8", {"Location": target})

    def respond(self, rec: Received, rel: str | None) -> Canned:
        """The portal's answer to a (recorded) request; `rel` is the path below the site."""
        if self.fault_hook:
            fault = self.fault_hook(rec)
            if fault is not None:
                return fault
        if rel is None:
            return Canned(404, NOT_FOUND_PAGE, "text/html;charset=utf-8")
        if rec.kind.endswith("-refused"):
            return Canned(self.report_status, b"Service Unavailable", "text/plain")
        answer = self._plone(rec, rel) if self.mode == "plone" else self._extended(rec, rel)
        if rec.kind == "pop" and rec.site_url not in ("", self.job_base) and answer.body:
            # Zope builds the job's URLs from the request's virtual host.
            body = answer.body.replace(self.job_base.encode(), rec.site_url.encode())
            answer = Canned(**{**asdict(answer), "body": body})
        if rec.kind == "pop" and self.pop_delay and not answer.delay:
            answer = Canned(**{**asdict(answer), "delay": self.pop_delay})
        return answer

    def _plone(self, rec: Received, rel: str) -> Canned:
        html = "text/html;charset=utf-8"
        anonymous = rec.user is None
        if rec.kind == "requeue" or rec.kind == "end_run":
            # Declared public on the object: anyone may call them, even on a private site.
            if rec.job_id not in self.jobs:
                return Canned(404, NOT_FOUND_PAGE, html)
            self._end(rec.job_id, rec.kind)
            if rec.kind == "requeue":
                return Canned(200, b"requeue", "text/plain; charset=utf-8")
            return Canned(204, b"", "")
        if anonymous and self.private:
            return self._login_redirect(f"{self.url}{rel}")
        if rec.kind == "pop":
            return self._pop(rec.user)
        if rec.kind == "search":
            return self._search(rec)
        if rec.kind == "check":
            return (
                Canned(200, b"1", "text/plain; charset=utf-8")
                if anonymous
                else Canned(204, b"", "")
            )
        if rel in ("", "/"):
            return Canned(200, b"<html>LEAM portal stand-in</html>", html)
        return Canned(404, NOT_FOUND_PAGE, html)  # success, error and anything else

    def _search(self, rec: Received) -> Canned:
        """`search_rss`: Plone's RSS 1.0 list of the jobs the user may see, filtered by
        `runstatus` (a catalog index on the real portal), oldest first."""
        state = rec.query.get("runstatus")
        with self.lock:
            found = [
                (self.jobs[j]["url"].replace(self.job_base, rec.site_url, 1), self.jobs[j])
                for j in self.jobs
                if (state is None or self.status.get(j) == state) and self._may_view(rec.user, j)
            ]
        site = escape(rec.site_url)
        seq = "".join(f'<rdf:li rdf:resource="{escape(url)}"/>' for url, _ in found)
        items = "".join(
            f'<item rdf:about="{escape(url)}"><title>{escape(job["title"])}</title>'
            f"<link>{escape(url)}</link><description></description>"
            "<dc:publisher>No publisher</dc:publisher><dc:creator></dc:creator>"
            "<dc:rights></dc:rights><dc:date></dc:date><dc:type>LUC Scenario</dc:type></item>"
            for url, job in found
        )
        feed = (
            '<?xml version="1.0" encoding="utf-8" ?>\n<rdf:RDF '
            'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
            'xmlns:dc="http://purl.org/dc/elements/1.1/" '
            'xmlns:syn="http://purl.org/rss/1.0/modules/syndication/" '
            'xmlns="http://purl.org/rss/1.0/">'
            f'<channel rdf:about="{site}/search_rss"><title>{SITE_TITLE}</title>'
            f'<link>{site}</link><image rdf:resource="{site}/logo.png"/>'
            f"<items><rdf:Seq>{seq}</rdf:Seq></items></channel>{items}</rdf:RDF>"
        )
        return Canned(200, feed.encode(), RSS_TYPE)

    def _extended(self, rec: Received, rel: str) -> Canned:
        if rec.kind == "check":
            return Canned(200, b"True" if rec.user is None else b"False", "text/plain")
        if rec.user is None:
            if self.auth_failure == "html":
                page = b"<html><body><form id='login_form'>Log in</form></body></html>"
                return Canned(200, page, "text/html; charset=utf-8")
            return Canned(
                401, b"Unauthorized", "text/plain", {"WWW-Authenticate": 'basic realm="Zope"'}
            )
        if rec.kind == "pop":
            return self._pop(rec.user)
        if rec.kind in REPORT_KINDS and rec.job_id in self.jobs:
            self._end(rec.job_id, rec.kind)
            if rec.kind == "end_run":
                return Canned(204, b"", "")
            return Canned(200, rec.kind.encode(), "text/plain")
        if rel in ("", "/"):
            return Canned(200, b"<html>LEAM portal stand-in</html>", "text/html")
        return Canned(404, b"Not Found", "text/plain")


def _make_handler(portal: PortalStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so a poller's session is reused
        disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms stall

        def log_message(self, format: str, *args: Any) -> None:
            pass  # tests read portal.received, not a log

        def _send(self, status: int, body: bytes, ctype: str, headers: Iterable = ()) -> None:
            self.send_response(status)
            if ctype:
                self.send_header("Content-Type", ctype)
            if status != 204:
                self.send_header("Content-Length", str(len(body)))
            for key, value in headers:
                self.send_header(key, value)
            self.end_headers()
            if status != 204:
                self.wfile.write(body)

        def _serve(self, answer: Canned) -> None:
            if answer.delay:
                time.sleep(answer.delay)
            if answer.reset:
                # An RST instead of an answer: SO_LINGER with a zero timeout.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.close_connection = True
                return
            body = answer.body
            if answer.truncate is not None:
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: answer.truncate])
                self.close_connection = True
                return
            self._send(answer.status, body, answer.content_type, answer.headers.items())

        def _user(self) -> str | None:
            header = self.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                return None
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return None
            if (user, password) == (portal.user, portal.password):
                return user
            if user in portal.members and portal.members[user] == password:
                return user
            return None

        def _form(self) -> dict[str, str]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode("utf-8", "replace") if length else ""
            return dict(urllib.parse.parse_qsl(raw))

        def _admin(self, method: str) -> None:
            if method == "POST" and self.path in (ADMIN + "/queue", ADMIN + "/remove"):
                length = int(self.headers.get("Content-Length") or 0)
                spec = json.loads(self.rfile.read(length) or b"{}")
                if self.path.endswith("/remove"):
                    portal.remove(spec["job_id"])
                    self._send(200, b"{}", "application/json")
                    return
                job = portal.queue(**spec)
                self._send(200, json.dumps(job).encode(), "application/json")
            elif method == "GET" and self.path == ADMIN + "/state":
                self._send(200, json.dumps(portal.snapshot()).encode(), "application/json")
            else:
                self._send(404, b"no such admin call", "text/plain")

        def _handle(self, method: str) -> None:
            if self.path.startswith(ADMIN):
                self._admin(method)
                return
            parts = urllib.parse.urlsplit(self.path)
            path, site_url = _virtual_host(parts.path, portal.base_path)
            form = self._form() if method == "POST" else {}
            base = portal.base_path
            rel = path[len(base) :] if path == base or path.startswith(base + "/") else None
            kind, job_id = _classify(rel, portal.job_folder)
            if kind in REPORT_KINDS and portal.report_status != 200:
                kind += "-refused"
            rec = Received(
                method,
                path,
                self._user(),
                form,
                time.time(),
                kind,
                self.headers.get("User-Agent", ""),
                self.client_address[1],
                job_id,
                host=self.headers.get("Host", ""),
                site_url=site_url or portal.job_base,
                query=dict(urllib.parse.parse_qsl(parts.query)),
            )
            portal._record(rec)
            answer = portal.respond(rec, rel)
            if kind == "pop" and answer.status == 200 and answer.body:
                rec.job_id = _popped_id(answer)
                if rec.job_id is not None:
                    with portal.lock:
                        portal.history.setdefault(rec.job_id, [])
            portal._answered(rec, 0 if answer.reset else answer.status)
            self._serve(answer)

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_HEAD(self) -> None:
            self._handle("HEAD")

        def do_PUT(self) -> None:
            self._handle("PUT")

    return Handler


def _popped_id(answer: Canned) -> str | None:
    """The job id in a pop's answer (JSON or legacy XML), if it handed one out."""
    if answer.content_type.startswith("application/json"):
        with contextlib.suppress(ValueError, AttributeError):
            data = json.loads(answer.body)
            if data.get("status") == "OK" and isinstance(data.get("id"), str):
                return data["id"]
        return None
    text = answer.body.decode("utf-8", "replace")
    if "<id>" in text:
        return text.split("<id>", 1)[1].split("</id>", 1)[0]
    return None


def _classify(rel: str | None, folder: str = "jobs") -> tuple[str, str | None]:
    if rel is None:
        return "other", None
    if rel == "/pop_queue":
        return "pop", None
    if rel == "/portal_membership/isAnonymousUser":
        return "check", None
    if rel == "/search_rss":
        return "search", None
    parts = rel.strip("/").split("/")
    if folder:
        if parts[:1] != [folder]:
            return "other", None
        parts = parts[1:]
    if len(parts) == 2 and parts[1] in REPORT_KINDS:
        return parts[1], urllib.parse.unquote(parts[0])
    return "other", None


def _virtual_host(path: str, site: str) -> tuple[str, str]:
    """Zope's VirtualHostMonster: `/VirtualHostBase/<scheme>/<host:port>/<physical
    path>/VirtualHostRoot/<rest>` is the object at physical path + rest, and URLs of
    what lies below the physical path start at scheme://host:port (default ports left
    out). Returns the physical path and the site's URL for this request ('' without)."""
    segments = path.split("/")
    if segments[1:2] != ["VirtualHostBase"] or "VirtualHostRoot" not in segments:
        return path, ""
    scheme, hostport = segments[2], segments[3]
    root = segments.index("VirtualHostRoot")
    vroot = "/".join(segments[4:root])
    physical = "/" + "/".join(s for s in [vroot, *segments[root + 1 :]] if s)
    host, _, port = hostport.partition(":")
    default = {"http": "80", "https": "443"}.get(scheme)
    origin = f"{scheme}://{host}" + (f":{port}" if port and port != default else "")
    prefix = "/" + vroot if vroot else ""
    below = site[len(prefix) :] if site == prefix or site.startswith(prefix + "/") else site
    return physical, origin + below


# -- command line ----------------------------------------------------------


def _admin_call(url: str, path: str, payload: dict | None = None) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url.rstrip("/") + ADMIN + path, data=data)
    with urllib.request.urlopen(req, timeout=10) as answer:
        return json.load(answer)


def _root_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testing.portal_standin", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run the stand-in until interrupted")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8780)
    serve.add_argument("--user", default="poller")
    serve.add_argument("--base-path", default="/portal")
    serve.add_argument(
        "--mode",
        choices=MODES,
        default="plone",
        help="plone: as a real portal answers (default); extended: with "
        "success/error endpoints and 401 for bad credentials",
    )
    serve.add_argument(
        "--private", action="store_true", help="plone: Anonymous is redirected to require_login"
    )
    serve.add_argument("--public-url", help="build job URLs on this origin (virtual hosting)")
    serve.add_argument(
        "--legacy-xml",
        action="store_true",
        help="plone: answer pops with the 2012-2014 XML document",
    )
    q = sub.add_parser("queue", help="queue a job on a running stand-in")
    q.add_argument(
        "--url", required=True, help="the stand-in's address, e.g. http://127.0.0.1:8780"
    )
    q.add_argument("--id", required=True)
    q.add_argument("--cmdline", required=True)
    q.add_argument("--repository", default="")
    q.add_argument("--title")
    q.add_argument("--public", action="store_true", help="Anonymous may see and pop it")
    q.add_argument(
        "--broken",
        action="store_true",
        help="an item without a repository: every pop answers 500 while it is queued",
    )
    r = sub.add_parser("received", help="list what a running stand-in received")
    r.add_argument("--url", required=True)
    r.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    if args.cmd == "serve":
        password = os.environ.get("PORTAL_PASSWORD")
        if not password:
            print("serve: set PORTAL_PASSWORD in the environment", file=sys.stderr)
            return 1
        portal = PortalStandin(
            args.user,
            password,
            args.host,
            args.port,
            args.base_path,
            mode=args.mode,
            private=args.private,
            public_url=args.public_url,
            legacy_xml=args.legacy_xml,
        )
        print(f"portal stand-in ({args.mode}) at {portal.url} (user {args.user})", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            portal._server.serve_forever()
        return 0
    if args.cmd == "queue":
        job = _admin_call(
            _root_of(args.url),
            "/queue",
            {
                "job_id": args.id,
                "cmdline": args.cmdline,
                "repository": args.repository,
                "title": args.title,
                "public": args.public,
                "broken": args.broken,
            },
        )
        print(f"queued {job['id']}: {job['url']}")
        return 0
    state = _admin_call(_root_of(args.url), "/state")
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    for job_id, status in sorted(state["status"].items()):
        told = state.get("outcome", {}).get(job_id) or "-"
        history = ", ".join(state.get("history", {}).get(job_id, []))
        print(f"{job_id:30} {status:9} {told:9} {history}")
    counts = collections.Counter(r["kind"] for r in state["received"])
    print("received: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A LEAM Planning Portal stand-in: a real HTTP server on loopback.

It speaks the job protocol of ../shared/reference/portal-protocol.md (pop_queue,
on_success, on_error, requeue) and records every request it receives, so the
poller's tests, the provisioning tests, the benchmarks and the demo can all
watch real HTTP traffic. A full Plone site cannot run here; this is the one
mock the project allows itself.

Library use::

    with PortalStandin(user="poller", password="pw") as portal:
        portal.queue("job-1", "sh -c 'echo hi'")
        ...  # run leampoll against portal.url
        portal.wait_for(lambda p: p.reports("success"), timeout=10)

Command line (for the demo and for people)::

    PORTAL_PASSWORD=pw python -m tests.portal_standin serve --port 8780 --user poller
    python -m tests.portal_standin queue --url http://127.0.0.1:8780 --id j1 --cmdline 'true'
    python -m tests.portal_standin received --url http://127.0.0.1:8780
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import json
import os
import ssl
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ADMIN = "/_standin"


@dataclass
class Received:
    """One request the stand-in received (admin requests are not recorded)."""

    method: str
    path: str
    user: str | None
    form: dict[str, str]
    at: float
    kind: str  # pop, success, error, requeue, check, other
    agent: str = ""
    client_port: int = 0  # the same port on two requests: one kept-alive connection


@dataclass
class Canned:
    """A scripted answer to pop_queue, served before any queued job."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class PortalStandin:
    """The portal: a queue of jobs, their run states, and a log of requests."""

    def __init__(
        self,
        user: str = "poller",
        password: str = "secret",
        host: str = "127.0.0.1",
        port: int = 0,
        base_path: str = "/portal",
        auth_failure: str = "401",
        tls: tuple[str, str] | None = None,
    ) -> None:
        """`tls=(certfile, keyfile)` serves https:// with that certificate."""
        self.user = user
        self.password = password
        self.base_path = base_path.rstrip("/")
        self.auth_failure = auth_failure  # "401" or "html" (Plone's 200 login page)
        self.lock = threading.Condition()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.status: dict[str, str] = {}
        self.waiting: collections.deque[str] = collections.deque()
        self.canned: collections.deque[Canned] = collections.deque()
        self.received: list[Received] = []
        self.pop_delay = 0.0
        self.report_status = 200  # set to 503 to make the portal refuse reports
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
    def url(self) -> str:
        """The site URL a poller is given."""
        return self.root + self.base_path

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
        **extra: Any,
    ) -> dict[str, Any]:
        """Queue a job the way the portal would describe it when popped."""
        job_url = f"{self.url}/jobs/{urllib.parse.quote(job_id, safe='')}"
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
            self.waiting.append(job_id)
            self.lock.notify_all()
        return job

    def script(self, *answers: Canned) -> None:
        """Serve these answers to the next pops, before any queued job."""
        with self.lock:
            self.canned.extend(answers)

    def requests_of(self, kind: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.kind == kind]

    def reports(self, kind: str | None = None) -> list[Received]:
        """Outcome reports received, optionally only one kind."""
        kinds = {kind} if kind else {"success", "error", "requeue"}
        with self.lock:
            return [r for r in self.received if r.kind in kinds]

    def wait_for(
        self, predicate: Callable[[PortalStandin], Any], timeout: float = 30.0
    ) -> Any:
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
                "status": dict(self.status),
                "queued": list(self.waiting),
                "received": [asdict(r) for r in self.received],
            }

    # -- request handling (called from handler threads) -------------------

    def _record(self, rec: Received) -> None:
        with self.lock:
            self.received.append(rec)
            self.lock.notify_all()

    def _pop(self) -> Canned:
        with self.lock:
            if self.canned:
                return self.canned.popleft()
            if not self.waiting:
                return Canned(body=b'{"status": "EMPTY"}')
            job_id = self.waiting.popleft()
            self.status[job_id] = "running"
            self.lock.notify_all()
            return Canned(body=json.dumps(self.jobs[job_id]).encode())

    def _outcome(self, job_id: str, kind: str) -> bytes:
        with self.lock:
            if job_id not in self.jobs:
                return b""
            if kind == "requeue":
                self.status[job_id] = "queued"
                if job_id not in self.waiting:
                    self.waiting.append(job_id)
                return b"requeue"
            self.status[job_id] = kind
            return kind.encode()


def _make_handler(portal: PortalStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so a poller's session is reused
        disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms stall

        def log_message(self, format: str, *args: Any) -> None:
            pass  # tests read portal.received, not a log

        def _send(self, status: int, body: bytes, ctype: str, headers: Iterable = ()) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers:
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _user(self) -> str | None:
            header = self.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                return None
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return None
            if (user, password) != (portal.user, portal.password):
                return None
            return user

        def _form(self) -> dict[str, str]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode("utf-8", "replace") if length else ""
            return dict(urllib.parse.parse_qsl(raw))

        def _deny(self) -> None:
            if portal.auth_failure == "html":
                page = b"<html><body><form id='login_form'>Log in</form></body></html>"
                self._send(200, page, "text/html; charset=utf-8")
            else:
                self._send(401, b"Unauthorized", "text/plain",
                           [("WWW-Authenticate", 'basic realm="Zope"')])

        def _admin(self, method: str) -> None:
            if method == "POST" and self.path == ADMIN + "/queue":
                length = int(self.headers.get("Content-Length") or 0)
                spec = json.loads(self.rfile.read(length) or b"{}")
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
            path = urllib.parse.urlsplit(self.path).path
            form = self._form() if method == "POST" else {}
            user = self._user()
            base = portal.base_path
            rel = path[len(base):] if path.startswith(base) else None
            kind, job_id = _classify(rel)
            refused = kind in ("success", "error", "requeue") and portal.report_status != 200
            if refused:
                kind += "-refused"
            portal._record(Received(method, path, user, form, time.time(), kind,
                                    self.headers.get("User-Agent", ""), self.client_address[1]))
            if rel is None:
                self._send(404, b"Not Found", "text/plain")
                return
            if kind == "check":
                self._send(200, b"False" if user else b"True", "text/plain")
                return
            if user is None:
                self._deny()
                return
            if kind == "pop":
                answer = portal._pop()
                delay = answer.delay or portal.pop_delay
                if delay:
                    time.sleep(delay)
                self._send(answer.status, answer.body, answer.content_type,
                           answer.headers.items())
            elif refused:
                self._send(portal.report_status, b"Service Unavailable", "text/plain")
            elif kind in ("success", "error", "requeue") and job_id in portal.jobs:
                self._send(200, portal._outcome(job_id, kind), "text/plain")
            elif rel in ("", "/"):
                self._send(200, b"<html>LEAM portal stand-in</html>", "text/html")
            else:
                self._send(404, b"Not Found", "text/plain")

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

    return Handler


def _classify(rel: str | None) -> tuple[str, str | None]:
    if rel is None:
        return "other", None
    if rel == "/pop_queue":
        return "pop", None
    if rel == "/portal_membership/isAnonymousUser":
        return "check", None
    parts = rel.strip("/").split("/")
    if len(parts) == 3 and parts[0] == "jobs" and parts[2] in ("success", "error", "requeue"):
        return parts[2], urllib.parse.unquote(parts[1])
    return "other", None


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
    parser = argparse.ArgumentParser(prog="python -m tests.portal_standin",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run the stand-in until interrupted")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8780)
    serve.add_argument("--user", default="poller")
    serve.add_argument("--base-path", default="/portal")
    q = sub.add_parser("queue", help="queue a job on a running stand-in")
    q.add_argument("--url", required=True, help="the stand-in's address, e.g. http://127.0.0.1:8780")
    q.add_argument("--id", required=True)
    q.add_argument("--cmdline", required=True)
    q.add_argument("--repository", default="")
    q.add_argument("--title")
    r = sub.add_parser("received", help="list what a running stand-in received")
    r.add_argument("--url", required=True)
    r.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    if args.cmd == "serve":
        password = os.environ.get("PORTAL_PASSWORD")
        if not password:
            print("serve: set PORTAL_PASSWORD in the environment", file=sys.stderr)
            return 1
        portal = PortalStandin(args.user, password, args.host, args.port, args.base_path)
        print(f"portal stand-in at {portal.url} (user {args.user})", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            portal._server.serve_forever()
        return 0
    if args.cmd == "queue":
        job = _admin_call(_root_of(args.url), "/queue", {
            "job_id": args.id, "cmdline": args.cmdline,
            "repository": args.repository, "title": args.title})
        print(f"queued {job['id']}: {job['url']}")
        return 0
    state = _admin_call(_root_of(args.url), "/state")
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    for job_id, status in sorted(state["status"].items()):
        print(f"{job_id:30} {status}")
    counts = collections.Counter(r["kind"] for r in state["received"])
    print("received: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())

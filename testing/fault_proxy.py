"""A fault-injecting HTTP proxy on loopback, in front of the portal stand-in.

Real networks fail between the poller and the portal, not inside Plone: a proxy
restarts, a load balancer answers 503, a connection is reset half-way through an
answer. This proxy sits where such a thing would sit, so the stand-in stays a
faithful portal and every fault is real TCP/HTTP seen by the real poller.

Faults (one at a time, switched at run time, thread-safe):

=============  ===============================================================
``none``       forward every request
``down``       nothing listens on the port (connection refused)
``slow``       forward, then hold the answer ``slow_seconds`` (past a read timeout)
``storm``      answer 503 without forwarding, ``Retry-After`` when ``retry_after``
``storm500``   answer 500 with an HTML traceback page, without forwarding
``truncate``   forward, then send the headers and half of the body, and close
``reset``      forward, then send part of the headers and reset the connection
``login``      answer pops and credential checks with ``302`` to
               ``<site>/require_login?came_from=...`` (credentials rejected on a
               private site); reports pass, as Plone declares ``end_run`` and
               ``requeue`` public
=============  ===============================================================

A pop answer that never reaches the poller leaves its job ``running`` in a real
portal (the protocol has no lease, and the poller never learnt the job's id).
That is a loss no poller can repair, so by default the faults that forward a
request (``slow``, ``truncate``, ``reset``) spare pop answers that carry a job:
they hit reports and empty pops only. ``spare_jobs=False`` lifts that, for a
test that shows the loss.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("none", "down", "slow", "storm", "storm500", "truncate", "reset", "login")
FORWARDING_FAULTS = ("slow", "truncate", "reset")
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}
_TRACEBACK = (
    b"<html><body><h1>Site Error</h1><p>An error was encountered while "
    b"publishing this resource.</p><pre>Traceback (innermost last):\n"
    b"  Module ZPublisher.Publish, line 138, in publish\n"
    b"AttributeError: repository</pre></body></html>"
)


class FaultProxy:
    """Forward 127.0.0.1:port to an upstream HTTP server, injecting one fault."""

    def __init__(
        self, upstream: str, host: str = "127.0.0.1", port: int = 0, site_path: str = "/portal"
    ) -> None:
        up = upstream.split("://", 1)[-1].split("/", 1)[0]
        self.upstream_host, _, up_port = up.partition(":")
        self.upstream_port = int(up_port or 80)
        self.site_path = site_path.rstrip("/")
        self.host = host
        self.port = port
        self.fault = "none"
        self.slow_seconds = 5.0
        self.retry_after: int | None = None
        self.spare_jobs = True
        self.injected: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._conns: set[socket.socket] = set()  # open client connections (keep-alive)
        self._busy = 0  # requests being answered
        self._idle = threading.Condition(self.lock)
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------

    @property
    def root(self) -> bytes:
        return f"http://{self.host}:{self.port}".encode()

    @property
    def upstream_root(self) -> bytes:
        return f"http://{self.upstream_host}:{self.upstream_port}".encode()

    @property
    def url(self) -> str:
        """The site URL a poller is given: the upstream's site, through the proxy."""
        return f"http://{self.host}:{self.port}{self.site_path}"

    def start(self) -> FaultProxy:
        self._listen()
        return self

    def stop(self) -> None:
        self._close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listen(self) -> None:
        server = _QuietServer((self.host, self.port), _make_handler(self))
        server.daemon_threads = True
        self.port = server.server_address[1]  # keep the port across down/up
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        # A portal that is down has no kept-alive connections either. Answers
        # under way are let through first: one cut off could be a popped job,
        # which no poller could ever end (see the module's docstring).
        with self.lock:
            self._idle.wait_for(lambda: self._busy == 0, timeout=10)
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- faults ----------------------------------------------------------------

    def set(self, fault: str, **options: Any) -> None:
        """Switch to ``fault``; options: slow_seconds, retry_after, spare_jobs."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
        with self.lock:
            for key, value in options.items():
                if not hasattr(self, key) or key.startswith("_"):
                    raise ValueError(f"unknown fault option {key!r}")
                setattr(self, key, value)
            before, self.fault = self.fault, fault
        if fault == "down" and before != "down":
            self._close()
            self._count("down")
        elif fault != "down" and before == "down":
            self._listen()

    @contextlib.contextmanager
    def injecting(self, fault: str, **options: Any) -> Iterator[None]:
        """``with proxy.injecting("storm"):`` - the fault for the block's duration."""
        self.set(fault, **options)
        try:
            yield
        finally:
            self.set("none")

    def flap(
        self,
        duration: float,
        faults: Sequence[str] = FAULTS[1:],
        period: tuple[float, float] = (0.5, 3.0),
        seed: int | None = None,
        **options: Any,
    ) -> list[tuple[str, float]]:
        """Play every fault in turn, in a shuffled order each round, with a healthy
        spell between two faults, for ``duration`` seconds; then heal.

        Bounded by its deadline; returns the schedule it played (fault, seconds).
        """
        rnd = random.Random(seed)
        self.set("none", **options)
        played: list[tuple[str, float]] = []
        deadline = time.monotonic() + duration
        plan: list[str] = []
        while (left := deadline - time.monotonic()) > 0:
            if not plan:
                plan = [
                    f for fault in rnd.sample(list(faults), len(faults)) for f in (fault, "none")
                ]
            fault = plan.pop(0)
            span = min(left, rnd.uniform(*period))
            extra: dict[str, Any] = {}
            if fault == "storm":
                extra["retry_after"] = rnd.choice([None, 1, 2])
            self.set(fault, **extra)
            played.append((fault, span))
            time.sleep(span)
        self.set("none")
        return played

    def _count(self, fault: str) -> None:
        with self.lock:
            self.injected[fault] += 1

    def _current(self) -> tuple[str, float, int | None, bool]:
        with self.lock:
            return self.fault, self.slow_seconds, self.retry_after, self.spare_jobs


def _is_report(path: str) -> bool:
    return path.split("?")[0].rstrip("/").rsplit("/", 1)[-1] in (
        "end_run",
        "requeue",
        "success",
        "error",
    )


class _QuietServer(ThreadingHTTPServer):
    """Broken connections are the point here, not news."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


def _make_handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            with proxy.lock:
                proxy._conns.add(self.connection)

        def finish(self) -> None:
            with proxy.lock:
                proxy._conns.discard(self.connection)
            super().finish()

        def _reply(
            self, status: int, body: bytes, ctype: str, headers: Sequence[tuple[str, str]] = ()
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers:
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _forward(self) -> tuple[int, list[tuple[str, str]], bytes]:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                # Job URLs name the upstream; a virtual-hosting proxy names itself.
                data = answer.read().replace(proxy.upstream_root, proxy.root)
                kept = [
                    (k, v)
                    for k, v in answer.getheaders()
                    if k.lower() not in _HOP and k.lower() != "content-length"
                ]
                return answer.status, kept, data
            finally:
                conn.close()

        def _send_raw(self, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self) -> None:
            fault, slow, retry_after, spare_jobs = proxy._current()
            if fault == "down":
                # Read on a kept-alive connection before it was cut, handled after:
                # a portal that is down never hears it (a pop forwarded now could
                # hand out a job whose answer the poller never gets).
                self.close_connection = True
                return
            if fault == "storm":
                proxy._count(fault)
                extra = [("Retry-After", str(retry_after))] if retry_after is not None else []
                self._reply(503, b"Service Unavailable", "text/plain", extra)
                return
            if fault == "storm500":
                proxy._count(fault)
                self._reply(500, _TRACEBACK, "text/html;charset=utf-8")
                return
            if fault == "login" and not _is_report(self.path):
                proxy._count(fault)
                root = f"http://{self.headers.get('Host', proxy.host)}"
                where = f"{root}{proxy.site_path}/require_login?came_from={root}{self.path}"
                self._reply(302, b"", "text/html", [("Location", where)])
                return
            status, headers, body = self._forward()
            carries_job = b'"status": "OK"' in body or b'"status":"OK"' in body
            if fault not in FORWARDING_FAULTS or (spare_jobs and carries_job):
                self._send_raw(status, headers, body)
                return
            proxy._count(fault)
            if fault == "slow":
                time.sleep(slow)
                with contextlib.suppress(OSError):
                    self._send_raw(status, headers, body)
            elif fault == "truncate":
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body) + 64))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
            else:  # reset: part of the status line, then RST
                self.wfile.write(b"HTTP/1.1 200 O")
                self.wfile.flush()
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()  # linger 0: the peer gets an RST, not a FIN
                self.close_connection = True

        def _counted(self) -> None:
            with proxy.lock:
                proxy._busy += 1
            try:
                self._handle()
            finally:
                with proxy.lock:
                    proxy._busy -= 1
                    proxy._idle.notify_all()

        def do_GET(self) -> None:
            self._counted()

        def do_POST(self) -> None:
            self._counted()

    return Handler

"""The portal client: pop a job, report an outcome, hand a job back.

Network only; it decides nothing about jobs, and what a pop's answer means
is leampoll.answers' (`parse_answer`). Popping is not idempotent, so a pop
is never retried once the request may have reached the portal; reports are,
with urllib3's Retry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from leampoll import __version__
from leampoll.answers import MAX_BODY, Answer, Refused, parse_answer
from leampoll.origins import TrustedOrigins
from leampoll.security import insecure_http, tls_problem


class ReportError(Exception):
    """A report that did not reach the portal. Transient ones stay in the outbox;
    permanent ones (the portal will never take it) are set aside for a human."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Answered:
    """What the portal answered a POST or a probe; deciding what it means is the caller's."""

    status: int
    text: str = ""
    location: str = ""


class PortalClient:
    """HTTP to one portal, with one keep-alive session per purpose.

    Credentials go only to URLs `trusted` allows; redirects are never followed.
    """

    def __init__(
        self,
        site: str,
        pop_url: str,
        user: str,
        password: str,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        trusted: TrustedOrigins | None = None,
        ca_file: str | Path | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        self.site = site
        self.pop_url = pop_url
        self.timeout = (connect_timeout, read_timeout)
        self.trusted = trusted or TrustedOrigins.build(site)
        # None: requests' own choice (REQUESTS_CA_BUNDLE, else its bundle); a path wins over it.
        self.verify = str(ca_file) if ca_file else None
        self.allow_insecure_http = allow_insecure_http
        agent = f"leampoll/{__version__} (+LEAM job server)"
        # A pop may only be retried when the request never left: connect errors.
        self._pop = _session(
            (user, password),
            agent,
            Retry(
                total=2,
                connect=2,
                read=0,
                status=0,
                other=0,
                backoff_factor=0.2,
                allowed_methods=None,
                raise_on_status=False,
            ),
        )
        # Reports are safe to repeat; retry connection trouble and proxy restarts.
        self._report = _session(
            (user, password),
            agent,
            Retry(
                total=3,
                connect=3,
                read=2,
                status=3,
                backoff_factor=0.5,
                status_forcelist=(502, 503, 504),
                allowed_methods=None,
                respect_retry_after_header=True,
                raise_on_status=False,
                redirect=False,
            ),
        )

    def pop(self) -> Answer:
        """One pop. Network failures come back as Refused, never as exceptions."""
        try:
            with self._pop.get(
                self.pop_url,
                timeout=self.timeout,
                stream=True,
                allow_redirects=False,
                verify=self.verify,
            ) as r:
                body = _read_capped(r)
                if body is None:
                    return Refused("answer larger than 1 MiB", kind="too_large")
                return parse_answer(
                    r.status_code,
                    r.headers.get("Content-Type", ""),
                    body,
                    r.headers.get("Retry-After"),
                    r.headers.get("Location", ""),
                )
        except requests.exceptions.SSLError as exc:
            return Refused(tls_problem(exc), kind="tls")
        except requests.RequestException as exc:
            return Refused(f"portal unreachable: {_why(exc)}", kind="unreachable")

    def refusal(self, url: str) -> str:
        """Why `url` may not receive the credentials, or "" when it may.

        The http rule comes first: a trusted origin on plain http is still refused.
        """
        insecure = insecure_http(url, self.allow_insecure_http)
        if insecure:
            return f"refused: {insecure}"
        if not self.trusted.allows(url):
            return "is not on a trusted origin"
        return ""

    def post(self, url: str, fields: dict[str, str]) -> Answered:
        """POST a form; the answer whatever its status. ReportError when none came."""
        refused = self.refusal(url)
        if refused:
            # Credentials only ever go to the portal they belong to, and never in clear.
            raise ReportError(f"report URL {url!r} {refused}", permanent=True)
            # Credentials only ever go to the portal they belong to.
            raise ReportError(f"report URL {url!r} is not on a trusted origin", permanent=True)
        try:
            r = self._report.post(
                url, data=fields, timeout=self.timeout, allow_redirects=False, verify=self.verify
            )
        except requests.RequestException as exc:
            raise ReportError(f"{url}: {_why(exc)}") from None
        return Answered(r.status_code, r.text[:200], r.headers.get("Location", ""))

    def probe(self, url: str) -> Answered:
        """A GET with credentials on the portal's own origin, redirects not followed.

        Network failures raise requests.RequestException (TLS ones requests' SSLError).
        """
        refused = self.refusal(url)
        if refused:
            raise ValueError(f"{url!r} {refused}")
        r = self._report.get(url, timeout=self.timeout, allow_redirects=False, verify=self.verify)
        return Answered(r.status_code, r.text[:400], r.headers.get("Location", ""))

    def set_credentials(self, user: str, password: str) -> None:
        """New credentials for every later request of both sessions (after a SIGHUP)."""
        self._pop.auth = self._report.auth = (user, password)

    def close(self) -> None:
        self._pop.close()
        self._report.close()


def _session(auth: tuple[str, str], agent: str, retry: Retry) -> requests.Session:
    s = requests.Session()
    s.auth = auth
    s.headers["User-Agent"] = agent
    s.trust_env = True  # proxies and CA bundles from the environment, as usual
    adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=1)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


def _read_capped(r: requests.Response) -> bytes | None:
    chunks, size = [], 0
    for chunk in r.iter_content(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _why(exc: Exception) -> str:
    """A one-line reason without URLs' query strings or credentials."""
    if isinstance(exc, requests.exceptions.SSLError):
        return tls_problem(exc)
    text = str(exc.__context__ or exc) if isinstance(exc, requests.ConnectionError) else str(exc)
    return re.sub(r"\s+", " ", text)[:160]

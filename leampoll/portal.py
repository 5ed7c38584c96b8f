"""The portal client: pop a job, report an outcome, hand a job back.

Network only; it decides nothing about jobs. Answers are parsed by a pure
function (`parse_answer`) so every hostile shape can be tested without a
server. Popping is not idempotent, so a pop is never retried once the request
may have reached the portal; reports are, with urllib3's Retry.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import time
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from leampoll import __version__
from leampoll.jobs import Job
from leampoll.origins import TrustedOrigins
from leampoll.security import insecure_http, tls_problem

log = logging.getLogger("leampoll")

MAX_BODY = 1024 * 1024  # a job description is a few hundred bytes
_FIELD_MAX = 64 * 1024
LEGACY_CMDLINE = "python startup.py -c config.xml"


@dataclass(frozen=True)
class Empty:
    """Nothing queued."""


@dataclass(frozen=True)
class Refused:
    """Not a job and not EMPTY: logged, then the poller backs off.

    `kind` is a short fixed label (a metric label, so never free text);
    `reason` is the human line for the log and the status.
    """

    reason: str
    retry_after: float | None = None
    kind: str = "malformed"
    location: str = ""

    @property
    def login_redirect(self) -> bool:
        return self.kind == "login_redirect"


# The fixed set of Refused.kind values.
REFUSED_KINDS = (
    "http_5xx",
    "http_4xx",
    "redirect",
    "login_redirect",
    "unreachable",
    "malformed",
    "unexpected_type",
    "too_large",
    "portal_error",
    "tls",
)


Answer = Job | Empty | Refused


def _text(data: dict, key: str) -> str:
    """A field as text, or "" when it cannot be one: too long, NUL, or not encodable
    (a lone surrogate from a JSON escape would crash the exec of a command or env)."""
    value = data.get(key)
    if isinstance(value, str) and len(value) <= _FIELD_MAX and "\x00" not in value:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return ""
        return value
    return ""


def _retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not '²': str.isdigit() accepts it
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


_TAG = re.compile(rb"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.IGNORECASE | re.DOTALL)
_EXCEPTION = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception)\b.*)$", re.MULTILINE)


def error_page_summary(body: bytes, limit: int = 120) -> str:
    """The line of an HTML error page that says what is wrong.

    Zope's error page carries the traceback; its last exception line (e.g.
    `AttributeError: repository`) names the problem better than the page title.
    """
    text = _TAG.sub(b"\n", body[: 64 * 1024]).decode("utf-8", "replace")
    text = text.replace("&hellip;", "...").replace("&#39;", "'").replace("&quot;", '"')
    found = _EXCEPTION.findall(text)
    if "Traceback" in text and found:
        return re.sub(r"\s+", " ", found[-1]).strip()[:limit]
    return re.sub(r"\s+", " ", text).strip()[:limit]


def _short(body: bytes, limit: int = 80) -> str:
    text = re.sub(r"\s+", " ", body[:400].decode("utf-8", "replace")).strip()
    return text[:limit] + ("..." if len(text) > limit else "")


def is_login_url(location: str) -> bool:
    """Plone sends Anonymous to require_login (private site) or login_form."""
    path = urllib.parse.urlsplit(location).path.rsplit("/", 1)[-1].lower()
    return path in ("require_login", "login_form", "login", "acl_users", "credentials_cookie_auth")


def parse_answer(
    status: int, content_type: str, body: bytes, retry_after: str | None = None, location: str = ""
) -> Answer:
    """Turn one pop_queue answer into a Job, Empty or Refused. Never raises."""
    wait = _retry_after(retry_after)
    # Whitespace folded: a header is the portal's text, and a log line stays one line.
    ctype = re.sub(r"\s+", " ", (content_type or "").split(";")[0]).strip().lower()
    if 300 <= status < 400:
        where = location[:200] or "no Location"
        if is_login_url(location):
            return Refused(
                f"HTTP {status} to the login page {where}: the portal did not "
                "accept the credentials",
                wait,
                "login_redirect",
                location,
            )
        return Refused(
            f"HTTP {status} redirect to {where} (not followed)", wait, "redirect", location
        )
    if status != 200:
        kind = "http_5xx" if status >= 500 else "http_4xx"
        if ctype == "text/html" and "Traceback" in body[: 64 * 1024].decode("utf-8", "replace"):
            # A Zope error page: the portal failed building the job description.
            return Refused(
                f"HTTP {status}, the portal's own error: {error_page_summary(body)} "
                "(a queued item it cannot describe, e.g. one without a repository, "
                "or an unset setting: see the portal's error log)",
                wait,
                kind,
            )
        return Refused(f"HTTP {status} ({ctype[:60] or 'no type'}: {_short(body)})", wait, kind)
    if len(body) > MAX_BODY:
        return Refused(f"answer too large ({len(body)} bytes)", wait, "too_large")
    if ctype in ("application/xml", "text/xml"):
        return _parse_xml(body)
    if ctype != "application/json":
        hint = " - a login page? check the credentials" if b"login" in body.lower() else ""
        return Refused(
            f"unexpected content type {ctype[:60] or 'none'!r}{hint}: {_short(body)}",
            kind="unexpected_type",
        )
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return Refused(f"malformed JSON ({exc.__class__.__name__}): {_short(body)}")
    if not isinstance(data, dict):
        return Refused(f"JSON answer is a {type(data).__name__}, not an object")
    state = data.get("status")
    if state == "EMPTY":
        return Empty()
    if state != "OK":
        return Refused(f"portal status {str(state)[:40]!r}")
    return _job_from_json(data)


def _job_from_json(data: dict) -> Job:
    job = Job(
        id=_text(data, "id"),
        cmdline=_text(data, "cmdline"),
        repository=_text(data, "repository"),
        title=_text(data, "title"),
        url=_text(data, "url"),
        on_success=_text(data, "on_success"),
        on_error=_text(data, "on_error"),
    )
    missing = [k for k in ("id", "cmdline") if not getattr(job, k).strip()]
    if missing:
        # Popped all the same: the portal now says "running", so it must be told.
        return Job(**{**job.__dict__, "problem": "job has no " + " and no ".join(missing)})
    return job


def _parse_xml(body: bytes) -> Answer:
    """The deprecated XML answer: EMPTY/ERROR as root text, or a scenario."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return Refused("legacy XML answer not in UTF-8 refused")
    # Checked on the decoded text, so no other encoding can smuggle a DTD past it.
    if "\x00" in text or "<!doctype" in text.lower() or "<!entity" in text.lower():
        return Refused("legacy XML answer with a DOCTYPE/ENTITY refused")
    try:
        root = ET.fromstring(body)
    except (ET.ParseError, ValueError, LookupError) as exc:
        return Refused(f"malformed XML answer ({str(exc)[:80]})")
    text = (root.text or "").strip()
    if text == "EMPTY":
        return Empty()
    if text == "ERROR":
        return Refused("portal answered ERROR (legacy XML)", kind="portal_error")
    job_id = (root.findtext("scenario/id") or "").strip()
    repo = (root.findtext("scenario/repository") or "").strip()
    if not job_id:
        return Refused("legacy XML answer without scenario/id")
    log.warning("job %s: legacy XML answer (deprecated); it cannot be reported", job_id)
    return Job(
        id=job_id,
        cmdline=LEGACY_CMDLINE,
        repository=shlex.join(["svn", "co", repo]) if repo else "",  # the URL stays one word
        title=(root.findtext("scenario/title") or "").strip(),
        legacy_xml=body,
    )


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

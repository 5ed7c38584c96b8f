"""Answers of the portal's pop view: a Job, Empty or Refused, from status, headers and body.

A pure function (`parse_answer`), apart from the HTTP client, so every
hostile shape can be tested without a server; it never raises.
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

from leampoll.jobs import Job

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

"""Which origins may receive the poller's credentials.

A job's report URLs are built by the portal from Zope's virtual-host settings,
so they need not match the URL the poller was given character for character:
scheme and host case and a default port (:80, :443) are normalised away. Any
other origin (a public name in front of a backend the poller talks to
directly) must be listed with --trusted-origin; until then, a report to it is
refused, because it would carry the portal password.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, order=True)
class Origin:
    """scheme://host:port, normalised: lower case, the port always explicit."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if DEFAULT_PORTS.get(self.scheme) == self.port:
            return f"{self.scheme}://{host}"
        return f"{self.scheme}://{host}:{self.port}"


def origin_of(url: str) -> Origin | None:
    """The origin of an http(s) URL, or None when it has none (or carries credentials)."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.username or parts.password:
        return None
    host = parts.hostname.lower().rstrip(".")
    if not host or any(c.isspace() or not c.isprintable() for c in host):
        return None  # no host has these; such a "host" would not compare stably
    return Origin(scheme, host, port if port is not None else DEFAULT_PORTS[scheme])


@dataclass(frozen=True)
class TrustedOrigins:
    """The site's own origin plus those the operator listed."""

    site: Origin
    extra: frozenset[Origin] = frozenset()

    @classmethod
    def build(cls, site_url: str, trusted: Iterable[str] = ()) -> TrustedOrigins:
        site = origin_of(site_url)
        if site is None:
            raise ValueError(f"{site_url!r} has no http(s) origin")
        extra = set()
        for url in trusted:
            origin = origin_of(url)
            if origin is None:
                raise ValueError(f"trusted origin {url!r} is not an http(s)://host[:port] URL")
            extra.add(origin)
        return cls(site, frozenset(extra))

    def allows(self, url: str) -> bool:
        origin = origin_of(url)
        return origin is not None and (origin == self.site or origin in self.extra)

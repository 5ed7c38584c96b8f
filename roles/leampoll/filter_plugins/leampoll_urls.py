"""URL rules of the leampoll role's validation, in Python so they are tested.

`leampoll_plain_http_remote`: a portal URL that would carry the password
unencrypted over a network (http:// to anything but loopback). The poller
refuses the same URLs (leampoll/security.py); tests/test_security.py keeps
the two in step.
"""

from __future__ import annotations

import ipaddress
import urllib.parse


def _loopback(host: str | None) -> bool:
    host = (host or "").strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def plain_http_remote(url: object) -> bool:
    """True for http:// to a host that is not loopback (localhost, 127.0.0.0/8, ::1)."""
    parts = urllib.parse.urlsplit(str(url))
    if parts.scheme.lower() != "http":
        return False
    try:
        host = parts.hostname
    except ValueError:
        host = None
    return not _loopback(host)


class FilterModule:
    """Ansible's entry point."""

    def filters(self) -> dict:
        return {"leampoll_plain_http_remote": plain_http_remote}

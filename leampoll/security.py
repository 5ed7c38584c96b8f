"""Transport rules: where the portal password may travel, and how TLS failures read.

The password goes with every request (basic auth), so plain http:// is only
accepted to this machine itself (loopback) unless the operator says
otherwise with --allow-insecure-http. TLS certificates are always verified;
a portal with a private CA is trusted by naming it (--ca-file), never by
switching verification off.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

INSECURE_OPTION = "--allow-insecure-http"
CA_OPTION = "--ca-file"


def is_loopback(host: str | None) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (also IPv4-mapped); names resolve nothing."""
    host = (host or "").strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def insecure_http(url: str, allowed: bool = False) -> str:
    """Why `url` may not carry credentials, or "" when it may."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "http" or allowed:
        return ""
    try:
        host = parts.hostname
    except ValueError:
        host = None
    if is_loopback(host):
        return ""
    return (
        f"plain http:// to {host or parts.netloc!r} would send the portal password "
        f"unencrypted; use https:// (or {INSECURE_OPTION} on a trusted network)"
    )


def tls_problem(exc: BaseException) -> str:
    """One line for a failed TLS handshake, naming the way to trust a private CA."""
    text = re.sub(r"\s+", " ", str(exc))
    found = re.search(r"certificate verify failed: (.+?)\.? \(_ssl", text) or re.search(
        r"certificate verify failed: ([^(\"')]+)", text
    )
    if found:
        why = found.group(1).strip().rstrip(".,")
        return (
            f"TLS certificate of the portal not trusted ({why}); give its CA with "
            f"{CA_OPTION} PATH (or REQUESTS_CA_BUNDLE)"
        )
    return f"TLS handshake with the portal failed: {text[:160]}"

"""Unit tests of trusted origins: where the credentials may go."""

from __future__ import annotations

import pytest

from leampoll.origins import TrustedOrigins, origin_of

SITE = "https://portal.example.org/luc"


@pytest.mark.parametrize(
    "url",
    [
        "https://portal.example.org/luc/scenarios/x",
        "HTTPS://Portal.Example.ORG:443/other/path",
        "https://portal.example.org./x",
    ],
)
def test_same_origin_after_normalising(url):
    assert TrustedOrigins.build(SITE).allows(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://portal.example.org/luc/x",  # another scheme
        "https://portal.example.org:8443/luc/x",  # another port
        "https://evil.example.org/luc/x",
        "https://portal.example.org@evil.example.org/x",
        "https://user:pw@portal.example.org/x",  # credentials in the URL
        "ftp://portal.example.org/x",
        "/luc/x",
        "",
        "http://[::1/x",
    ],
)
def test_other_origins_are_refused(url):
    assert not TrustedOrigins.build(SITE).allows(url)


def test_default_http_port_is_normalised():
    trusted = TrustedOrigins.build("http://127.0.0.1/portal")
    assert trusted.allows("http://127.0.0.1:80/portal/jobs/x")
    assert not trusted.allows("http://127.0.0.1:8080/portal/jobs/x")


def test_trusted_origin_list_is_honoured():
    trusted = TrustedOrigins.build("http://10.0.0.5:8080/luc", ["https://Portal.Example.org"])
    assert trusted.allows("https://portal.example.org:443/luc/scenarios/x")
    assert not trusted.allows("http://portal.example.org/luc/scenarios/x")
    assert str(origin_of("https://portal.example.org:443/x")) == "https://portal.example.org"
    assert str(origin_of("http://localhost:8081/x")) == "http://localhost:8081"

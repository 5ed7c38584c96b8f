"""Unit tests of portal health: since when pops fail, the last answer, the totals."""

from __future__ import annotations

from leampoll.portal_health import PortalHealth


def test_portal_health_keeps_since_last_and_totals():
    health = PortalHealth({"http_5xx": 3})
    health.failed("http_5xx", "HTTP 500 a", now=10)
    health.failed("unreachable", "refused", now=20)
    status = health.as_status()
    assert status == {"since": 10, "reason": "unreachable", "last": "refused", "at": 20, "count": 2}
    assert health.totals == {"http_5xx": 4, "unreachable": 1}
    ended = health.answered()
    assert ended is not None and ended.count == 2 and health.as_status() is None

"""The fault proxy itself: each fault is what a client on the wire sees."""

from __future__ import annotations

import json

import pytest
import requests

from testing.fault_proxy import FaultProxy
from testing.portal_standin import PortalStandin
from tests.conftest import PASSWORD, USER

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def proxied():
    with (
        PortalStandin(USER, PASSWORD) as portal,
        FaultProxy(portal.root, site_path=portal.base_path) as proxy,
    ):
        yield portal, proxy


def pop(proxy: FaultProxy, timeout: float = 5.0) -> requests.Response:
    return requests.get(
        proxy.url + "/pop_queue", auth=(USER, PASSWORD), timeout=timeout, allow_redirects=False
    )


def test_forwards_and_names_itself_in_job_urls(proxied):
    portal, proxy = proxied
    portal.queue("j1", "true")
    job = pop(proxy).json()
    assert job["id"] == "j1"
    assert job["url"].startswith(proxy.url + "/")  # reports come back through the proxy
    assert portal.status["j1"] == "running"


def test_down_refuses_connections_and_comes_back_on_the_same_port(proxied):
    _portal, proxy = proxied
    port = proxy.port
    session = requests.Session()  # a kept-alive connection is cut too
    assert session.get(proxy.url + "/pop_queue", auth=(USER, PASSWORD), timeout=5).ok
    proxy.set("down")
    with pytest.raises(requests.ConnectionError):
        pop(proxy)
    with pytest.raises(requests.ConnectionError):
        session.get(proxy.url + "/pop_queue", auth=(USER, PASSWORD), timeout=5)
    proxy.set("none")
    assert proxy.port == port
    assert pop(proxy).json() == {"status": "EMPTY"}


@pytest.mark.parametrize("retry_after", [None, 7])
def test_storm_answers_503_without_reaching_the_portal(proxied, retry_after):
    portal, proxy = proxied
    portal.queue("j1", "true")
    with proxy.injecting("storm", retry_after=retry_after):
        r = pop(proxy)
    assert r.status_code == 503
    assert r.headers.get("Retry-After") == (None if retry_after is None else "7")
    assert portal.status["j1"] == "queued" and not portal.requests_of("pop")


def test_storm500_and_login_redirect(proxied):
    _portal, proxy = proxied
    with proxy.injecting("storm500"):
        r = pop(proxy)
        assert r.status_code == 500 and b"Traceback" in r.content
    with proxy.injecting("login"):
        r = pop(proxy)
        assert r.status_code == 302 and "/require_login?came_from=" in r.headers["Location"]
        report = requests.post(proxy.url + "/jobs/x/end_run", timeout=5, allow_redirects=False)
        assert report.status_code != 302  # end_run and requeue are public in Plone
    assert proxy.injected["storm500"] == 1 and proxy.injected["login"] == 1


@pytest.mark.parametrize("fault", ["truncate", "reset"])
def test_mid_answer_faults_break_the_answer(proxied, fault):
    _portal, proxy = proxied
    with proxy.injecting(fault), pytest.raises(requests.RequestException):
        pop(proxy)
    assert proxy.injected[fault] == 1


def test_slow_outlasts_a_read_timeout(proxied):
    _portal, proxy = proxied
    with proxy.injecting("slow", slow_seconds=1.5), pytest.raises(requests.ReadTimeout):
        pop(proxy, timeout=0.5)


@pytest.mark.parametrize("fault", ["truncate", "reset", "slow"])
def test_forwarding_faults_spare_answers_that_carry_a_job(proxied, fault):
    portal, proxy = proxied
    portal.queue("j1", "true")
    with proxy.injecting(fault, slow_seconds=3):
        assert json.loads(pop(proxy, timeout=1).content)["id"] == "j1"
    assert proxy.injected[fault] == 0


def test_flap_is_bounded_and_heals(proxied):
    _portal, proxy = proxied
    played = proxy.flap(1.0, period=(0.1, 0.2), seed=1)
    assert played and sum(span for _, span in played) <= 1.01
    assert proxy.fault == "none" and pop(proxy).status_code == 200

"""The stand-in answers as the real portal does: one sequence of requests, sent to a real
LEAM portal (leam.luc on Plone 4.3) and to the stand-in set up alike, compared request by
request: status code, content type, body (host names and ports normalised; for Plone's
HTML pages only the heading and the error line), and every job's runstatus afterwards.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import requests

from testing.portal_standin import PortalStandin
from testing.real_portal.build import SETTINGS, Build
from testing.real_portal.portal import RealPortal

pytestmark = [pytest.mark.real_portal, pytest.mark.timeout(900)]

VHOST = ("jobs.example.org", 80)  # the origin job URLs name through virtual hosting


@dataclass(frozen=True)
class Answer:
    """What a poller can tell of an answer, with both portals' own addresses normalised."""

    status: int
    content_type: str
    body: str
    states: dict[str, str]


@dataclass(frozen=True)
class Target:
    """One of the two portals, as the sequence talks to it."""

    root: str  # scheme://host:port
    site: str  # the site's URL
    vhm_site: str  # the site through Zope's VirtualHostMonster
    passwords: dict[str, str]
    states: Callable[[], dict[str, str]]
    unset_settings: Callable[[], None]


@dataclass(frozen=True)
class Request:
    name: str
    method: str
    path: str  # below the site; "vhm:"/"vhr:" first: through virtual hosting, site/Zope root
    user: str | None = "poller"  # None: no credentials
    password: str | None = None  # a wrong one instead of the user's
    before: str = ""  # "unset": the site's two settings unset first


SEQUENCE = [
    Request("isAnonymousUser poller", "GET", "portal_membership/isAnonymousUser"),
    Request(
        "isAnonymousUser wrong password",
        "GET",
        "portal_membership/isAnonymousUser",
        password="wrong",
    ),
    Request("isAnonymousUser anonymous", "GET", "portal_membership/isAnonymousUser", user=None),
    Request("isAnonymousUser member", "GET", "portal_membership/isAnonymousUser", user="member"),
    Request("pop wrong password", "GET", "pop_queue", password="wrong"),
    Request("pop anonymous", "GET", "pop_queue", user=None),
    Request("pop member", "GET", "pop_queue", user="member"),
    Request("search_rss queued", "GET", "search_rss?portal_type=LUC%20Scenario&runstatus=queued"),
    Request("pop", "GET", "pop_queue"),
    Request("pop empty", "GET", "pop_queue"),
    Request("search_rss running", "GET", "search_rss?portal_type=LUC%20Scenario&runstatus=running"),
    Request(
        "search_rss running wrong password",
        "GET",
        "search_rss?portal_type=LUC%20Scenario&runstatus=running",
        password="wrong",
    ),
    Request("success", "POST", "scenario-1/success"),
    Request("error", "POST", "scenario-1/error"),
    Request("end_run", "POST", "scenario-1/end_run"),
    Request(
        "search_rss complete", "GET", "search_rss?portal_type=LUC%20Scenario&runstatus=complete"
    ),
    Request("requeue", "POST", "scenario-1/requeue"),
    Request("pop after requeue", "GET", "pop_queue"),
    Request("end_run without credentials", "POST", "scenario-1/end_run", user=None),
    Request("requeue without credentials", "POST", "scenario-1/requeue", user=None),
    Request("end_run of a queued job", "POST", "scenario-1/end_run"),
    Request("pop after end_run of a queued job", "GET", "pop_queue"),
    Request("requeue of a complete job", "POST", "scenario-1/requeue"),
    Request("end_run of no job", "POST", "no-such-job/end_run"),
    Request("pop through virtual hosting", "GET", "vhm:pop_queue"),
    Request("end_run through virtual hosting", "POST", "vhm:scenario-1/end_run"),
    Request("requeue through virtual hosting", "POST", "vhm:scenario-1/requeue", user=None),
    Request("pop through virtual hosting at the Zope root", "GET", "vhr:pop_queue"),
    Request(
        "search_rss through virtual hosting at the Zope root",
        "GET",
        "vhr:search_rss?portal_type=LUC%20Scenario&runstatus=running",
    ),
    Request("end_run through virtual hosting at the Zope root", "POST", "vhr:scenario-1/end_run"),
    Request(
        "requeue through virtual hosting at the Zope root",
        "POST",
        "vhr:scenario-1/requeue",
        user=None,
    ),
    Request("pop with settings unset", "GET", "pop_queue", before="unset"),
    Request("pop with settings unset, nothing visible", "GET", "pop_queue", user=None),
]


def normalise(target: Target, answer: requests.Response) -> Answer:
    ctype = answer.headers.get("Content-Type", "")
    body = answer.text.replace(target.root, "ROOT")
    if ctype.startswith("text/html"):
        body = html_summary(body)
    elif ctype.startswith("application/atom+xml"):
        body = rss_summary(body)
    return Answer(answer.status_code, ctype, body, target.states())


def html_summary(page: str) -> str:
    """A Plone page's heading and, on an error page, the error line: what differs between
    Plone's chrome and the stand-in's bare page is neither."""
    heading = re.search(r"<h1 class=.documentFirstHeading.>(.*?)</h1>", page, re.S)
    error = re.search(r"</ul>\s*<p>(.*?)</p>", page, re.S)
    parts = [html.unescape(m.group(1)) for m in (heading, error) if m]
    return " | ".join(" ".join(p.split()) for p in parts)


def rss_summary(feed: str) -> str:
    """An RSS 1.0 feed without the white space between its elements."""
    return re.sub(r">\s+<", "><", feed.strip())


def send(target: Target, req: Request) -> Answer:
    if req.before == "unset":
        target.unset_settings()
    base = target.site
    path = req.path
    if path.startswith("vhm:"):
        base, path = target.vhm_site, path[4:]
    elif path.startswith("vhr:"):  # the Zope root as the virtual root, the site below it
        vhost = f"{VHOST[0]}:{VHOST[1]}"
        base, path = f"{target.root}/VirtualHostBase/http/{vhost}/VirtualHostRoot/leam", path[4:]
    auth = None
    if req.user is not None:
        auth = (req.user, req.password or target.passwords[req.user])
    answer = requests.request(
        req.method, f"{base}/{path}", auth=auth, timeout=30, allow_redirects=False
    )
    return normalise(target, answer)


def real_target(portal: RealPortal) -> Target:
    return Target(
        portal.root_url,
        portal.url,
        portal.vhm_url(*VHOST),
        {"poller": portal.credentials["poller"], "member": portal.credentials["member"]},
        portal.status,
        lambda: portal.set_settings(None, None),
    )


def standin_target(standin: PortalStandin) -> Target:
    def unset() -> None:
        standin.settings_unset = True

    return Target(
        standin.root,
        standin.url,
        f"{standin.root}/VirtualHostBase/http/{VHOST[0]}:{VHOST[1]}/leam/VirtualHostRoot",
        {"poller": standin.password, **standin.members},
        lambda: dict(standin.status),
        unset,
    )


def queue_like_the_real_one(standin: PortalStandin, job_id: str, title: str) -> None:
    """A job as a site with SETTINGS describes it: repository and command line from the
    site's two settings, formatted with the job's id and URL."""
    url = f"{standin.job_base}/{job_id}"
    standin.queue(
        job_id,
        SETTINGS["scenario_cmd"].format(id=job_id, url=url),
        repository=SETTINGS["scenario_repo"].format(id=job_id, url=url),
        title=title,
    )


@pytest.fixture(scope="module")
def answers(real_portal_build: Build) -> Iterator[dict[str, tuple[Answer, Answer]]]:
    """Every request of SEQUENCE sent to both, in order: name -> (real, stand-in)."""
    creds = real_portal_build.credentials
    with (
        RealPortal(real_portal_build).reset() as real,
        PortalStandin(
            "poller",
            creds["poller"],
            base_path="/leam",
            members={"member": creds["member"]},
            job_folder="",
        ) as standin,
    ):
        queue_like_the_real_one(standin, "scenario-1", "Scenario 1")
        targets = (real_target(real), standin_target(standin))
        yield {req.name: (send(targets[0], req), send(targets[1], req)) for req in SEQUENCE}


@pytest.mark.parametrize("name", [r.name for r in SEQUENCE])
def test_standin_answers_as_the_real_portal(answers, name):
    real, standin = answers[name]
    assert standin == real, f"{name}: the stand-in answers {standin}, the real portal {real}"

"""The real `leampoll` against a stand-in that answers as a real LEAM portal (Plone) does.

What a real portal does differently from the protocol the poller was first
built for: no success/error endpoints (end_run instead), no 401 for a wrong
password (Anonymous instead), job URLs from virtual-host settings, bare
repository URLs, and 500 on every pop while a broken item is queued.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from testing.portal_standin import Canned, Received
from tests.conftest import LEAMPOLL, PASSWORD, USER, leampoll_check, sh, status_json, wait_until
from tests.test_poller import both_modes, workdir_status
from tests.test_status_metrics import samples

pytestmark = pytest.mark.timeout(120)


def outbox_set_aside(workdir: Path) -> list[Path]:
    return sorted((workdir / ".leampoll" / "outbox").glob("*.undeliverable"))


# -- ending jobs ------------------------------------------------------------------------


def test_success_ends_complete_through_one_end_run_then_straight_to_it(
    portal, start_poller, workdir
):
    portal.queue("first", "true")
    portal.queue("second", "true")
    p = start_poller("-i", "1")
    assert p.wait() == 0
    assert portal.status == {"first": "complete", "second": "complete"}
    # The portal has no success endpoint: one try, then end_run; later jobs go straight to it.
    assert portal.events("first") == ["pop 200", "success 404", "end_run 204"]
    assert portal.events("second") == ["pop 200", "end_run 204"]
    assert portal.ending("first").form["status"] == "complete"
    assert "succeeded" in portal.ending("first").form["message"]
    assert not outbox_set_aside(workdir)
    # Remembered in the workdir's state: a restarted poller goes straight to end_run too.
    portal.queue("third", "true")
    p2 = start_poller("-i", "1")
    assert p2.wait() == 0
    assert portal.events("third") == ["pop 200", "end_run 204"]


@pytest.mark.parametrize("portal", ["extended"], indirect=True)
def test_extended_portal_takes_the_report_at_on_success(portal, start_poller):
    portal.queue("ok", "true")
    assert start_poller("-i", "1").wait() == 0
    assert portal.events("ok") == ["pop 200", "success 200"]
    assert portal.status["ok"] == "complete"


def test_failing_job_ends_complete_and_the_failure_stays_visible(
    portal, start_poller, workdir, tmp_path
):
    metrics = tmp_path / "m.prom"
    portal.queue("bad", sh("echo model diverged; exit 3"))
    p = start_poller("-i", "1", "--metrics-file", str(metrics), "--project", "p")
    assert p.wait() == 0
    assert portal.status["bad"] == "complete" and portal.ended_once("bad")
    assert portal.events("bad") == ["pop 200", "error 404", "end_run 204"]
    form = portal.ending("bad").form
    assert form["status"] == "error" and "exit code 3" in form["message"]
    assert "ERROR job bad: run failed: exit code 3" in p.log
    (row,) = status_json(workdir)
    assert row["last"]["outcome"] == "error" and row["last"]["portal"] == "end_run"
    assert row["failed"] == 1
    assert samples(metrics)[("leampoll_jobs_total", ("outcome", "error"), ("project", "p"))] == 1


def test_keep_failed_running_leaves_the_failed_job_running(portal, start_poller, workdir):
    portal.queue("bad", "false")
    portal.queue("good", "true")
    p = start_poller("-i", "1", "--keep-failed-running")
    assert p.wait() == 0
    assert portal.status == {"bad": "running", "good": "complete"}
    assert [e for e in portal.events("bad") if "end_run" in e] == []
    assert "job bad: failed; left running in the portal" in p.log
    assert "ERROR job bad: run failed" in p.log
    (row,) = status_json(workdir)
    assert row["totals"]["error"] == 1 and row["totals"]["success"] == 1
    assert not outbox_set_aside(workdir)  # left running on purpose, not undeliverable


def test_redirect_answering_a_report_is_set_aside_not_followed(portal, start_poller, workdir):
    elsewhere = "https://login.example.invalid/sso"

    def redirect_success(rec: Received) -> Canned | None:
        if rec.kind == "success" and rec.job_id == "moved":
            return Canned(302, b"", "text/html", {"Location": elsewhere})
        return None

    portal.fault_hook = redirect_success
    portal.queue("moved", "true")
    portal.queue("after", "true")
    p = start_poller("-i", "1")
    assert p.wait() == 0
    assert portal.events("moved") == ["pop 200", "success 302"]
    assert f"Location: {elsewhere}" in p.log and "set aside" in p.log
    assert len(outbox_set_aside(workdir)) == 1
    assert portal.status["after"] == "complete"  # the queue went on


# -- credentials --------------------------------------------------------------------------


def test_wrong_password_pops_nothing_and_says_so_at_once(
    portal, start_poller, env, workdir, tmp_path
):
    env["PORTAL_PASSWORD"] = "not-the-password"
    portal.queue("private-job", "true")
    portal.queue("public-job", "true", public=True)  # Anonymous could pop this one
    metrics = tmp_path / "m.prom"
    p = start_poller(
        "--speed", "300", "--metrics-file", str(metrics), "--project", "p", quick=False
    )
    # Before the first pop, so well within one poll interval (300 s).
    line = p.wait_log("credentials of user 'poller' rejected")
    assert line
    assert portal.base_path in p.log and "not-the-password" not in p.log
    wait_until(lambda: "auth" in status_json(workdir)[0]["guard"]["holding"], what="auth hold")
    assert not portal.requests_of("pop")
    assert portal.status == {"private-job": "queued", "public-job": "queued"}
    (row,) = status_json(workdir)
    assert row["auth"]["user"] == USER
    table = subprocess.run(
        [*LEAMPOLL, "status", str(workdir)], capture_output=True, text=True, check=True
    ).stdout
    assert " auth " in table.splitlines()[1]
    wait_until(
        lambda: (
            metrics.exists()
            and samples(metrics).get(("leampoll_guard_hold", ("guard", "auth"), ("project", "p")))
            == 1
        ),
        what="auth metric",
    )
    check = leampoll_check(portal.url, workdir, env)
    assert check.returncode == 1
    assert [ln.split()[0] for ln in check.stdout.splitlines() if " login " in ln] == ["FAIL"]


def test_credential_hold_ends_when_the_portal_accepts_them(portal, start_poller, workdir):
    portal.password = "changed-on-the-portal"
    portal.queue("j", "true")
    p = start_poller()
    p.wait_log("rejected by")
    assert not portal.requests_of("pop")
    portal.password = PASSWORD
    p.wait_log("accepted by")
    portal.wait_for(lambda pt: pt.status["j"] == "complete")
    assert p.log.count("rejected by") == 1  # one line for the whole hold


def test_private_site_login_redirect_is_a_credential_problem(start_poller, env, workdir):
    from testing.portal_standin import PortalStandin

    with PortalStandin(USER, PASSWORD, private=True) as portal:
        portal.queue("j", "true")
        p = start_poller(url=portal.url)
        portal.wait_for(lambda pt: pt.status["j"] == "complete")
        # The password is changed on the portal: the next pop is sent to require_login.
        portal.password = "changed"
        p.wait_log("to the login page")
        line = p.wait_log("credentials of user 'poller' rejected")
        assert line and "require_login" in p.log
        wait_until(lambda: "auth" in status_json(workdir)[0]["guard"]["holding"], what="auth hold")
        pops, checks = len(portal.requests_of("pop")), len(portal.requests_of("check"))
        assert portal.requests_of("pop")[-1].answer == 302
        # Re-checked with backoff while the hold lasts; no pop meanwhile.
        wait_until(lambda: len(portal.requests_of("check")) >= checks + 2, what="re-checks")
        assert len(portal.requests_of("pop")) == pops


# -- a broken portal ----------------------------------------------------------------------------


def test_broken_item_500_loop_keeps_the_poller_alive_and_visible(
    portal, start_poller, workdir, tmp_path
):
    metrics = tmp_path / "m.prom"
    portal.queue("stress-analysis", "", broken=True)
    portal.queue("good", "true")
    p = start_poller("--metrics-file", str(metrics), "--project", "p")
    wait_until(lambda: len(portal.requests_of("pop")) >= 3, what="three pops")
    assert p.proc.poll() is None
    row = wait_until(
        lambda: (
            (status_json(workdir)[0]["portal_error"] or {}).get("count", 0) >= 2
            and status_json(workdir)[0]
        ),
        what="portal error in status",
    )
    assert row["portal_error"]["reason"] == "http_5xx" and "HTTP 500" in row["portal_error"]["last"]
    assert row["failing"]
    table = subprocess.run(
        [*LEAMPOLL, "status", "--portal-error-after", "0", str(workdir)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "http_5xx for" in table and "HTTP 500" in table
    wait_until(
        lambda: (
            samples(metrics).get(
                ("leampoll_portal_errors_total", ("project", "p"), ("reason", "http_5xx")), 0
            )
            >= 2
        ),
        what="portal errors counted",
    )
    assert portal.status["stress-analysis"] == "queued" and portal.status["good"] == "queued"
    portal.remove("stress-analysis")  # what an admin does
    portal.wait_for(lambda pt: pt.status["good"] == "complete", timeout=30)
    p.wait_log("portal answers pops again")
    wait_until(lambda: status_json(workdir)[0]["portal_error"] is None, what="error cleared")


# -- virtual hosting ----------------------------------------------------------------------------


def test_virtual_host_job_urls_need_a_trusted_origin(portal, start_poller, workdir):
    public = f"http://localhost:{portal.port}"
    portal.public_url = public  # the portal builds its job URLs on its public name
    portal.queue("vh1", "true")
    p = start_poller("-i", "1")
    assert p.wait() == 0
    assert portal.status["vh1"] == "running"
    assert [r for r in portal.reports() if r.job_id == "vh1"] == []  # nothing sent there
    assert f"--trusted-origin {public}" in p.log
    assert len(outbox_set_aside(workdir)) == 1
    assert status_json(workdir)[0]["portal_errors_total"] == {"report_undeliverable": 1}

    portal.queue("vh2", "true")
    p2 = start_poller("-i", "1", "--trusted-origin", public)
    assert p2.wait() == 0
    assert portal.status["vh2"] == "complete"
    assert {r.host for r in portal.reports() if r.job_id == "vh2"} == {f"localhost:{portal.port}"}


# -- repositories ---------------------------------------------------------------------------------


def run(*argv, cwd=None) -> None:
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(not shutil.which("svnadmin"), reason="needs subversion (apt: subversion)")
def test_bare_svn_file_url_is_checked_out(portal, start_poller, workdir, tmp_path):
    repo, src = tmp_path / "svnrepo", tmp_path / "src"
    run("svnadmin", "create", str(repo))
    src.mkdir()
    (src / "startup.sh").write_text("echo svn model ran > result.txt\n")
    run("svn", "import", "--non-interactive", "-q", "-m", "model", str(src), f"file://{repo}/trunk")
    portal.queue("svn-scenario", "sh startup.sh", repository=f"file://{repo}/trunk")
    p = start_poller("-i", "1", "--preserve")
    assert p.wait() == 0
    rundir = workdir / "svn_scenario"
    assert (rundir / "result.txt").read_text() == "svn model ran\n"
    assert (rundir / ".svn").is_dir()
    assert portal.status["svn-scenario"] == "complete"


def test_bare_git_url_is_cloned(portal, start_poller, workdir, tmp_path):
    repo = tmp_path / "model.git"
    repo.mkdir()
    run("git", "init", "-q", cwd=repo)
    (repo / "startup.sh").write_text("echo git model ran > result.txt\n")
    run("git", "add", ".", cwd=repo)
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m", cwd=repo)
    portal.queue("git-scenario", "sh startup.sh", repository=f"file://{repo}")
    p = start_poller("-i", "1", "--preserve")
    assert p.wait() == 0
    assert (workdir / "git_scenario" / "result.txt").read_text() == "git model ran\n"
    assert (workdir / "git_scenario" / ".git").is_dir()
    assert "checkout with git" in (workdir / "git_scenario.log").read_text()


@both_modes
def test_bad_repository_url_fails_the_checkout_and_is_reported(portal, start_poller, tmp_path):
    portal.queue("nowhere", "true", repository=f"file://{tmp_path}/missing-repo")
    p = start_poller("-i", "1")
    assert p.wait() == 0
    assert portal.outcome("nowhere") == "error"
    assert "checkout failed" in portal.ending("nowhere").form["message"]
    status = workdir_status(p)
    assert status and status["last"]["outcome"] == "error"

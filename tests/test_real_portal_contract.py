"""The poller's contract against the real LEAM portal (leam.luc on Plone 4.3): the real
`leampoll` command against a real portal, every job's runstatus read from the portal
itself, and the requests it took from its own access log (Z2.log).

The real portal has one command and one repository for all its jobs (the site's
`scenario_cmd` and `scenario_repo`, with `{id}` and `{url}` filled in), so each test
sets them first; `true` as the repository is a checkout command that does nothing.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from testing.real_portal.portal import RealPortal
from tests.conftest import leampoll_check, password_file, sh, status_json, wait_until

pytestmark = [pytest.mark.real_portal, pytest.mark.timeout(600)]

NO_CHECKOUT = "true"
# One line of Z2.log: client, -, user (from the request's credentials, right or wrong), ...
_REQUEST = re.compile(r'^\S+ - (\S+) \[[^]]*\] "(\w+) (.+?) HTTP/[\d.]+" (\d{3})', re.M)


@pytest.fixture(autouse=True)
def poller_password(env: dict[str, str], real_portal: RealPortal) -> None:
    """The poller's own password on this build (made at random per build)."""
    env["PORTAL_PASSWORD"] = real_portal.credentials["poller"]


def access_log(portal: RealPortal) -> list[tuple[str, str, int]]:
    """(user, path, status) of every request the portal took, from its Z2.log."""
    log = portal.home / "var" / "log" / "Z2.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return [(m[1], m[3].split("?")[0], int(m[4])) for m in _REQUEST.finditer(text)]


def taken(portal: RealPortal, job: str, endpoint: str) -> list[int]:
    """Status codes the portal answered to requests for <job>/<endpoint>."""
    return [status for _, path, status in access_log(portal) if path.endswith(f"/{job}/{endpoint}")]


def pops(portal: RealPortal) -> int:
    """Pops sent as the poller (the fixture's own start-up probes are anonymous)."""
    return sum(
        1 for u, path, _ in access_log(portal) if u == "poller" and path.endswith("/pop_queue")
    )


def settle(portal: RealPortal, want: dict[str, str], timeout: float = 60.0) -> None:
    wait_until(lambda: portal.status() == want, timeout, f"runstatus {want} in the real portal")


def job_pid(pidfile: Path) -> int:
    return int(
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 60, "the job to start")
    )


# -- --check and credentials ---------------------------------------------------------


def test_check_is_ok_with_the_pollers_password_and_fails_with_a_wrong_one(
    real_portal, workdir, env
):
    good = leampoll_check(real_portal.url, workdir, env)
    assert good.returncode == 0, good.stdout + good.stderr
    assert [ln.split()[0] for ln in good.stdout.splitlines() if " login " in ln] == ["ok"]
    env["PORTAL_PASSWORD"] = "not-the-password"
    bad = leampoll_check(real_portal.url, workdir, env)
    assert bad.returncode == 1
    assert [ln.split()[0] for ln in bad.stdout.splitlines() if " login " in ln] == ["FAIL"]
    assert "not-the-password" not in bad.stdout + bad.stderr
    assert pops(real_portal) == 0 and real_portal.status() == {"scenario-1": "queued"}


def test_wrong_password_holds_pops_until_the_file_is_fixed_and_sighup(
    real_portal, start_leampoll, env, workdir, tmp_path
):
    real_portal.set_settings(NO_CHECKOUT, "true")
    path = password_file(tmp_path / "portal.password", "not-the-password")
    del env["PORTAL_PASSWORD"]
    env["PORTAL_PASSWORD_FILE"] = str(path)
    p = start_leampoll(url=real_portal.url)
    p.wait_log("credentials of user 'poller' rejected")
    wait_until(lambda: "auth" in status_json(workdir)[0]["guard"]["holding"], what="auth hold")
    # A wrong password pops nothing on Plone ({"status": "EMPTY"}): the poller never asks.
    assert pops(real_portal) == 0
    assert real_portal.status() == {"scenario-1": "queued"}

    password_file(path, real_portal.credentials["poller"])
    p.signal(signal.SIGHUP)
    p.wait_log("SIGHUP: reloading credentials")
    p.wait_log("accepted by")
    settle(real_portal, {"scenario-1": "complete"})
    assert p.log.count("rejected by") == 1 and p.proc.poll() is None
    assert real_portal.credentials["poller"] not in p.log


# -- ending jobs -------------------------------------------------------------------------


def test_jobs_end_complete_through_end_run_and_the_404_is_learned_once(
    real_portal, start_leampoll, workdir
):
    real_portal.set_settings(NO_CHECKOUT, "true")
    real_portal.queue("job-2", "job-3")
    assert start_leampoll("-i", "1", url=real_portal.url).wait(120) == 0
    assert real_portal.status() == {
        "scenario-1": "complete",
        "job-2": "complete",
        "job-3": "complete",
    }
    # leam.luc has no success endpoint: one 404, then end_run for every job.
    assert taken(real_portal, "scenario-1", "success") == [404]
    assert [taken(real_portal, j, "success") for j in ("job-2", "job-3")] == [[], []]
    assert [taken(real_portal, j, "end_run") for j in ("scenario-1", "job-2", "job-3")] == [
        [204]
    ] * 3
    # Remembered in the workdir: a restarted poller goes straight to end_run.
    assert json.loads((workdir / ".leampoll" / "endpoints.json").read_text())["end_run"] is True
    real_portal.queue("job-4")
    assert start_leampoll("-i", "1", url=real_portal.url).wait(120) == 0
    assert real_portal.status()["job-4"] == "complete"
    assert taken(real_portal, "job-4", "success") == []
    assert taken(real_portal, "job-4", "end_run") == [204]


@pytest.mark.parametrize("keep", [False, True], ids=["default", "keep-failed-running"])
def test_failing_job_ends_complete_or_stays_running_with_keep_failed_running(
    real_portal, start_leampoll, keep
):
    real_portal.set_settings(
        NO_CHECKOUT, sh('case "$LEAM_JOB_ID" in fail-*) echo model diverged; exit 3;; esac')
    )
    real_portal.queue("fail-1")
    extra = ["--keep-failed-running"] if keep else []
    p = start_leampoll("-i", "1", *extra, url=real_portal.url)
    assert p.wait(120) == 0
    assert "ERROR job fail-1: run failed: exit code 3" in p.log
    if keep:
        assert real_portal.status() == {"scenario-1": "complete", "fail-1": "running"}
        assert taken(real_portal, "fail-1", "end_run") == []
        assert "job fail-1: failed; left running in the portal" in p.log
    else:
        assert real_portal.status() == {"scenario-1": "complete", "fail-1": "complete"}
        assert taken(real_portal, "fail-1", "end_run") == [204]


# -- signals and crashes ---------------------------------------------------------------


def test_sigterm_mid_job_leaves_it_queued(real_portal, start_leampoll, workdir):
    real_portal.set_settings(NO_CHECKOUT, sh("echo $$ > job.pid; sleep 300"))
    p = start_leampoll(url=real_portal.url)
    pid = job_pid(workdir / "scenario_1" / "job.pid")
    assert real_portal.status() == {"scenario-1": "running"}
    p.signal(signal.SIGTERM)
    assert p.wait(30) == 0
    assert not psutil.pid_exists(pid)
    assert real_portal.status() == {"scenario-1": "queued"}
    assert taken(real_portal, "scenario-1", "requeue") == [200]
    assert taken(real_portal, "scenario-1", "end_run") == []


def test_kill_9_mid_job_then_a_restart_hand_it_back_once_and_run_it_again(
    real_portal, start_leampoll, workdir, tmp_path
):
    runs, mark = tmp_path / "runs.txt", tmp_path / "ran-once"
    # Long the first time, done at once the second; every run is counted on the job's side.
    script = (
        f'echo "$LEAM_JOB_ID" >> {shlex.quote(str(runs))}; '
        f"[ -e {shlex.quote(str(mark))} ] && exit 0; touch {shlex.quote(str(mark))}; "
        "echo $$ > job.pid; exec sleep 300"
    )
    real_portal.set_settings(NO_CHECKOUT, sh(script))
    first = start_leampoll(url=real_portal.url)
    pid = job_pid(workdir / "scenario_1" / "job.pid")
    current = workdir / ".leampoll" / "current.json"
    wait_until(
        lambda: current.exists() and '"stage":"run"' in current.read_text(),
        what="the job's process group recorded",
    )
    first.signal(signal.SIGKILL)
    first.wait()
    assert psutil.pid_exists(pid)  # its own session: the kill did not reach the job
    assert real_portal.status() == {"scenario-1": "running"}

    again = start_leampoll("-i", "1", url=real_portal.url)
    assert again.wait(120) == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert real_portal.status() == {"scenario-1": "complete"}
    assert taken(real_portal, "scenario-1", "requeue") == [200]
    assert taken(real_portal, "scenario-1", "end_run") == [204]
    assert runs.read_text().split() == ["scenario-1", "scenario-1"]


# -- repositories ---------------------------------------------------------------------------


def run(*argv, cwd=None) -> None:
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)


def test_scenario_repo_as_a_bare_git_url_is_cloned(real_portal, start_leampoll, workdir, tmp_path):
    src, bare = tmp_path / "src", tmp_path / "model.git"
    src.mkdir()
    run("git", "init", "-q", cwd=src)
    (src / "startup.sh").write_text('echo "git model ran for $1" > result.txt\n')
    run("git", "add", ".", cwd=src)
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m", cwd=src)
    run("git", "clone", "-q", "--bare", str(src), str(bare))
    real_portal.set_settings(f"file://{bare}", "sh startup.sh {id}")
    assert start_leampoll("-i", "1", "--preserve", url=real_portal.url).wait(120) == 0
    rundir = workdir / "scenario_1"
    assert (rundir / "result.txt").read_text() == "git model ran for scenario-1\n"
    assert (rundir / ".git").is_dir()
    assert "checkout with git" in (workdir / "scenario_1.log").read_text()
    assert real_portal.status() == {"scenario-1": "complete"}


@pytest.mark.skipif(not shutil.which("svnadmin"), reason="needs subversion (apt: subversion)")
def test_scenario_repo_as_a_subversion_file_url_is_checked_out(
    real_portal, start_leampoll, workdir, tmp_path
):
    repo, src = tmp_path / "svnrepo", tmp_path / "src"
    run("svnadmin", "create", str(repo))
    src.mkdir()
    (src / "startup.sh").write_text("echo svn model ran > result.txt\n")
    run("svn", "import", "--non-interactive", "-q", "-m", "model", str(src), f"file://{repo}/trunk")
    real_portal.set_settings(f"file://{repo}/trunk", "sh startup.sh")
    assert start_leampoll("-i", "1", "--preserve", url=real_portal.url).wait(120) == 0
    rundir = workdir / "scenario_1"
    assert (rundir / "result.txt").read_text() == "svn model ran\n"
    assert (rundir / ".svn").is_dir()
    assert "checkout with svn" in (workdir / "scenario_1.log").read_text()
    assert real_portal.status() == {"scenario-1": "complete"}


# -- virtual hosting --------------------------------------------------------------------------


def test_virtual_host_job_urls_are_reported_to_with_a_trusted_origin_only(
    real_portal, start_leampoll, workdir
):
    # Zope's VirtualHostMonster: the poller talks to 127.0.0.1, the portal names its jobs
    # on another origin (what a front server's rewrite does in production).
    public = f"http://localhost:{real_portal.port}"
    site = (
        f"{real_portal.root_url}/VirtualHostBase/http/localhost:{real_portal.port}"
        "/VirtualHostRoot/leam"
    )
    real_portal.set_settings(NO_CHECKOUT, "true")
    refused = start_leampoll("-i", "1", url=site)
    assert refused.wait(120) == 0
    assert real_portal.status() == {"scenario-1": "running"}
    assert taken(real_portal, "scenario-1", "end_run") == []
    assert f"--trusted-origin {public}" in refused.log
    assert len(list((workdir / ".leampoll" / "outbox").glob("*.undeliverable"))) == 1

    real_portal.queue("job-2")
    trusted = start_leampoll("-i", "1", "--trusted-origin", public, url=site)
    assert trusted.wait(120) == 0
    assert real_portal.status() == {"scenario-1": "running", "job-2": "complete"}
    assert taken(real_portal, "job-2", "end_run") == [204]

"""The real `leampoll` command against a real portal stand-in, with real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from leampoll import __version__
from testing.pollers import sh, workdir_status
from testing.portal_standin import Canned
from tests.conftest import LEAMPOLL, PASSWORD, USER, both_modes, leampoll_check, wait_until

pytestmark = pytest.mark.timeout(120)


def states(portal, *ids):
    return [portal.status.get(i) for i in ids]


def ended_as(portal, outcome: str) -> str:
    """The runstatus a job ends with: a real portal knows only 'complete'."""
    return "error" if outcome == "error" and portal.mode == "extended" else "complete"


# -- command line ---------------------------------------------------------------


def test_version():
    out = subprocess.run([*LEAMPOLL, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"leampoll {__version__}"


@pytest.mark.parametrize(
    "args,envkeys,needle",
    [
        (["http://127.0.0.1:9/portal"], {}, "PORTAL_USER"),
        ([], {"PORTAL_USER": "u", "PORTAL_PASSWORD": "p"}, "URL"),
    ],
)
def test_missing_credentials_or_url_exit_1_with_one_line(args, envkeys, needle):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")} | envkeys
    out = subprocess.run([*LEAMPOLL, *args], capture_output=True, text=True, env=env, timeout=20)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]


def test_password_flag_still_works_and_env_password_never_logged(portal, start_poller, workdir):
    portal.queue("j1", sh("echo done"))
    p = start_poller("-i", "1")
    assert p.wait() == 0
    assert portal.requests_of("pop")[0].user == USER
    assert portal.outcome("j1") == "success" and portal.ending("j1").user == USER
    assert PASSWORD not in p.log


def test_once_runs_one_job_and_exits(portal, start_poller):
    portal.queue("a", "true")
    portal.queue("b", "true")
    p = start_poller("--once", "--speed", "60")
    assert p.wait() == 0
    assert states(portal, "a", "b") == ["complete", "queued"]


def test_idle_exits_after_n_empty_polls(portal, start_poller):
    p = start_poller("--idle", "3")
    assert p.wait() == 0
    assert len(portal.requests_of("pop")) == 3


def test_idle_does_not_count_errors(portal, start_poller):
    portal.script(*[Canned(status=500, body=b"boom", content_type="text/html")] * 3)
    p = start_poller("--idle", "2")
    assert p.wait(30) == 0
    assert len(portal.requests_of("pop")) == 5  # 3 errors + 2 empty


@both_modes
def test_check_reports_each_item_and_pops_nothing(portal, workdir, env):
    portal.queue("j", "true")
    out = leampoll_check(portal.url, workdir, env)
    assert out.returncode == 0, out.stdout + out.stderr
    names = [line.split()[1] for line in out.stdout.splitlines()]
    assert {"config", "workdir", "disk", "memory", "portal", "login"} <= set(names)
    assert not portal.requests_of("pop") and portal.status["j"] == "queued"


@both_modes
def test_check_fails_on_bad_credentials_and_short_memory(portal, workdir, env):
    env["PORTAL_PASSWORD"] = "wrong"
    out = subprocess.run(
        [*LEAMPOLL, "--check", "--workdir", str(workdir), "--min-free-mem", "100%", portal.url],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert out.returncode == 1
    failed = {line.split()[1] for line in out.stdout.splitlines() if line.startswith("FAIL")}
    assert failed == {"memory", "login"}
    assert "wrong" not in out.stdout + out.stderr


# -- 1. guards --------------------------------------------------------------------


def test_memory_guard_holds_without_popping_and_logs_once(portal, start_poller):
    portal.queue("j", "true")
    p = start_poller("--min-free-mem", "100%")
    p.wait_log("guard hold")
    time.sleep(1.0)  # five --speed periods: the hold must be logged once, not five times
    assert p.log.count("guard hold") == 1
    assert "memory" in p.log and not portal.requests_of("pop")
    assert portal.status["j"] == "queued"


def test_disk_guard_holds_then_releases_when_space_returns(portal, start_poller, small_fs):
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * 15 * 1024 * 1024)
    portal.queue("j", "true")
    p = start_poller("--min-free-disk", "10M", wd=small_fs)
    p.wait_log("guard hold")
    assert "disk" in p.log and not portal.requests_of("pop")
    filler.unlink()
    p.wait_log("guard hold ended")
    portal.wait_for(lambda pt: pt.status["j"] == "complete")


def test_job_filling_the_disk_is_ended_then_pops_hold_until_space_returns(
    portal, start_poller, small_fs
):
    # The poller's own state lives on the job filesystem: its reserve lets it
    # record the job's end although the job took every byte.
    portal.queue("fill", "sh -c 'dd if=/dev/zero of=big bs=1M; exit 1'")
    p = start_poller("--min-free-disk", "5M", "--guard-mode", "static", wd=small_fs)
    portal.wait_for(lambda pt: pt.status["fill"] == "complete")
    assert "released the 1024 KiB reserve" in p.log
    portal.queue("after", "true")
    p.wait_log("guard hold, not popping: disk")
    assert portal.status["after"] == "queued"
    (small_fs / "fill" / "big").unlink()
    portal.wait_for(lambda pt: pt.status["after"] == "complete")
    assert (small_fs / ".leampoll" / "reserve").exists() and p.proc.poll() is None


def test_inode_guard_holds(portal, start_poller, small_fs):
    for i in range(300):
        (small_fs / f"f{i}").touch()
    portal.queue("j", "true")
    p = start_poller("--min-free-inodes", "200", wd=small_fs)
    p.wait_log("guard hold")
    assert "inodes" in p.log and not portal.requests_of("pop")


# -- 2./3. pop and hostile answers -----------------------------------------------------


def test_pop_reuses_one_connection_and_names_itself(portal, start_poller):
    for i in range(3):
        portal.queue(f"j{i}", "true")
    p = start_poller("-i", "2")
    assert p.wait() == 0
    pops = portal.requests_of("pop")
    assert len({r.client_port for r in pops}) == 1
    assert all(r.agent.startswith(f"leampoll/{__version__}") for r in pops)


HOSTILE = [
    Canned(200, b"<html><form id='login_form'>Log in</form></html>", "text/html"),
    Canned(401, b"Unauthorized", "text/plain"),
    Canned(403, b"Forbidden", "text/html"),
    Canned(302, b"", "text/html", {"Location": "/login_form"}),
    Canned(500, b"<html>Traceback (most recent call last) ...</html>", "text/html"),
    Canned(502, b"Bad Gateway", "text/html"),
    Canned(200, b"{not json", "application/json"),
    Canned(200, b"[1, 2, 3]", "application/json"),
    Canned(200, b'"OK"', "application/json"),
    Canned(200, b'{"status": "OK", "id": 5, "cmdline": ["rm", "-rf", "/"]}', "application/json"),
    Canned(200, b"x" * (2 * 1024 * 1024), "application/json"),
    Canned(200, b"\x00\xff\xfe", "application/octet-stream"),
    Canned(
        200, b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>", "application/xml"
    ),
    Canned(200, b"<x>ERROR</x>", "application/xml"),
]


def test_hostile_answers_are_logged_and_survived(portal, start_poller):
    portal.script(*HOSTILE)
    portal.queue("real", sh("echo real job"))
    p = start_poller()
    portal.wait_for(lambda pt: pt.status["real"] == "complete", timeout=60)
    assert p.proc.poll() is None
    warnings = [line for line in p.log.splitlines() if "WARNING portal:" in line]
    assert len(warnings) >= len(HOSTILE) - 1  # the bad OK job is popped and reported instead
    assert any("login" in w for w in warnings)
    assert "Traceback" not in p.log.replace("Traceback (most recent", "")


def test_retry_after_is_honoured(portal, start_poller):
    portal.script(Canned(503, b"restarting", "text/html", {"Retry-After": "2"}))
    p = start_poller("--max-backoff", "10", "-i", "1")
    assert p.wait(30) == 0
    first, second = portal.requests_of("pop")[:2]
    assert second.at - first.at >= 1.9


def test_hung_portal_times_out_instead_of_hanging(portal, start_poller):
    portal.pop_delay = 30
    p = start_poller("--timeout", "1")
    p.wait_log("next try in", timeout=15)
    assert p.proc.poll() is None


@both_modes
def test_unrunnable_popped_job_is_reported_never_run(portal, start_poller, workdir):
    portal.queue("nocmd", "")
    p = start_poller("-i", "1")
    assert p.wait() == 0
    assert portal.outcome("nocmd") == "error" and portal.ended_once("nocmd")
    assert "no cmdline" in portal.ending("nocmd").form["message"]
    assert portal.status["nocmd"] == ended_as(portal, "error")
    assert not (workdir / "nocmd").exists()


def test_legacy_xml_job_gets_config_xml(portal, start_poller, workdir):
    portal.legacy_xml = True  # Content-Type application/xml;;charset=UTF-8, as it was sent
    portal.queue("old-scenario", "ignored", title="Old")
    p = start_poller("-i", "1")
    assert p.wait() == 0
    assert b"<id>old-scenario</id>" in (workdir / "old_scenario" / "config.xml").read_bytes()
    assert "legacy XML" in p.log and "no URL to report" in p.log
    assert portal.status["old-scenario"] == "running"  # that answer gives nothing to end it


# -- 5./6. run directory, checkout and run ---------------------------------------------


def test_rundir_stays_in_workdir_and_is_fresh(portal, start_poller, workdir, tmp_path):
    (workdir / "etcpasswd").mkdir()
    (workdir / "etcpasswd" / "stale").write_text("old run")
    portal.queue("../../etc/passwd", sh("pwd > where; ls -A > listing"))
    p = start_poller("-i", "1", "--preserve")
    assert p.wait() == 0
    rundir = workdir / "etcpasswd"
    assert (rundir / "where").read_text().strip() == str(rundir)
    assert "stale" not in (rundir / "listing").read_text()
    assert (
        sorted(
            x.name
            for x in tmp_path.iterdir()
            if x.name not in ("jobdir",) and not x.name.startswith("poller-")
        )
        == []
    )


def test_git_checkout_into_rundir(portal, start_poller, workdir, tmp_path):
    repo = tmp_path / "repo"
    run = {"cwd": repo, "check": True, "capture_output": True}
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], **run)
    (repo / "startup.sh").write_text("echo model ran > result.txt\n")
    subprocess.run(["git", "add", "."], **run)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m"], **run
    )
    portal.queue("scenario-1", "sh startup.sh", repository=f"git clone -q {repo}")
    p = start_poller("-i", "1", "--preserve")
    assert p.wait() == 0
    assert (workdir / "scenario_1" / "result.txt").read_text() == "model ran\n"


@pytest.mark.parametrize("portal", ["extended"], indirect=True)  # its 401 makes git ask
def test_checkout_asking_for_a_password_fails_fast(portal, start_poller):
    # The stand-in answers 401 to git's smart-HTTP probe: git would prompt for a user.
    portal.queue("private", "true", repository=f"git clone {portal.url}/private.git")
    p = start_poller("-i", "1", "--checkout-timeout", "60")
    assert p.wait(30) == 0
    (err,) = portal.reports("error")
    assert "checkout failed" in err.form["message"]


def test_checkout_timeout(portal, start_poller):
    portal.queue("slow", "true", repository="sh -c 'sleep 30'")
    p = start_poller("-i", "1", "--checkout-timeout", "1")
    assert p.wait(30) == 0
    assert "checkout failed: timed out" in portal.ending("slow").form["message"]


def test_job_environment_and_log(portal, start_poller, workdir):
    job = portal.queue(
        "envjob",
        sh(
            'echo "$PORTAL_USER $LEAM_JOB_ID $LEAM_JOB_URL";'
            ' test "$PORTAL_PASSWORD" = "$EXPECTED" && echo pw-ok;'
            " echo to-stderr >&2"
        ),
    )
    p = start_poller("-i", "1")
    p.proc.wait(30)
    log = (workdir / "envjob.log").read_text().splitlines()
    assert log[0] == f"{USER} envjob {job['url']}"
    assert "to-stderr" in log
    assert p.proc.returncode == 0


def test_job_timeout_kills_the_whole_group(portal, start_poller, workdir):
    portal.queue("hog", sh("sleep 300 & echo $! > child.pid; wait"))
    p = start_poller("-i", "1", "--job-timeout", "1", "--grace", "1")
    assert p.wait(30) == 0
    child = int((workdir / "hog" / "child.pid").read_text())
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"
    assert "timed out" in portal.ending("hog").form["message"]


# -- 7. reports ------------------------------------------------------------------------


@both_modes
def test_error_report_names_exit_code_and_log_tail(portal, start_poller):
    portal.queue("bad", sh("echo model exploded; exit 3"))
    p = start_poller("-i", "1")
    assert p.wait() == 0
    assert portal.outcome("bad") == "error" and portal.ended_once("bad")
    assert portal.status["bad"] == ended_as(portal, "error")
    msg = portal.ending("bad").form["message"]
    assert "exit code 3" in msg and "model exploded" in msg


@both_modes
def test_undelivered_report_is_kept_and_delivered_before_next_pop(portal, start_poller, workdir):
    portal.report_status = 503
    portal.queue("first", "true")
    portal.queue("second", "true")
    p = start_poller()
    outbox = workdir / ".leampoll" / "outbox"
    wait_until(lambda: list(outbox.glob("*.json")), what="a report in the outbox")
    p.wait_log("report not delivered")
    assert portal.status["second"] == "queued"
    pops_while_refused = len(portal.requests_of("pop"))
    time.sleep(1)
    assert len(portal.requests_of("pop")) == pops_while_refused == 1
    portal.report_status = 200
    portal.wait_for(lambda pt: pt.status["second"] == "complete", timeout=30)
    pops = portal.requests_of("pop")
    assert pops[1].at > portal.ending("first").at
    assert portal.ended_once("first") and portal.ended_once("second")


@both_modes
def test_pending_report_survives_kill_9(portal, start_poller, workdir):
    portal.report_status = 503
    portal.queue("j", "true")
    p = start_poller()
    outbox = workdir / ".leampoll" / "outbox"
    wait_until(lambda: list(outbox.glob("*.json")), what="a report in the outbox")
    p.signal(signal.SIGKILL)
    p.wait()
    portal.report_status = 200
    p2 = start_poller("-i", "1")
    assert p2.wait(30) == 0
    assert portal.status["j"] == "complete" and portal.ended_once("j")
    assert not list(outbox.glob("*.json"))


# -- 8. backlog --------------------------------------------------------------------------


def test_backlog_drains_back_to_back(portal, start_poller):
    for i in range(20):
        portal.queue(f"b{i}", "true")
    p = start_poller("--speed", "30", "-i", "1", quick=False)
    # With a 30 s interval, 20 jobs within 30 s means no sleep between jobs.
    portal.wait_for(lambda pt: list(pt.status.values()).count("complete") == 20, timeout=25)
    p.signal(signal.SIGTERM)
    assert p.wait() == 0


# -- 9. signals -----------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_while_idle_is_immediate(portal, start_poller, sig):
    p = start_poller("--speed", "300", quick=False)
    wait_until(lambda: portal.requests_of("pop"), what="first poll")
    wait_until(lambda: "idle" in (workdir_status(p.workdir) or {}).get("state", ""), what="idle")
    p.signal(sig)
    assert p.wait(timeout=5) == 0


def test_sigterm_during_job_stops_it_and_requeues(portal, start_poller, workdir):
    portal.queue("long", sh("echo $$ > job.pid; sleep 300"))
    p = start_poller()
    pidfile = workdir / "long" / "job.pid"
    wait_until(pidfile.exists, what="the job to start")
    job_pid = int(wait_until(lambda: pidfile.read_text().strip(), what="job pid"))
    p.signal(signal.SIGTERM)
    assert p.wait(20) == 0
    assert not psutil.pid_exists(job_pid)
    assert [r.kind for r in portal.reports()] == ["requeue"]
    assert portal.status["long"] == "queued" and portal.events("long") == ["pop 200", "requeue 200"]


def test_sigterm_kills_a_job_that_ignores_term(portal, start_poller, workdir):
    portal.queue("stubborn", sh("trap '' TERM; echo $$ > job.pid; while :; do sleep 0.1; done"))
    p = start_poller("--grace", "1")
    pidfile = workdir / "stubborn" / "job.pid"
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), what="job start")
    job_pid = int(pidfile.read_text())
    p.signal(signal.SIGTERM)
    assert p.wait(20) == 0
    assert not psutil.pid_exists(job_pid)
    assert portal.status["stubborn"] == "queued"


@pytest.mark.parametrize("portal", ["extended"], indirect=True)
def test_requeue_falls_back_to_on_error(portal, start_poller, workdir):
    job = portal.queue("x", sh("touch started; sleep 300"))
    job_url = job["url"]
    portal.jobs["x"]["url"] = job_url + "-gone"  # requeue URL answers 404
    p = start_poller()
    wait_until((workdir / "x" / "started").exists, what="job start")
    p.signal(signal.SIGTERM)
    assert p.wait(30) == 0
    assert [r.kind for r in portal.reports()] == ["requeue", "error"]  # requeue got a 404
    assert portal.status["x"] == "error"


def test_sigusr1_drains(portal, start_poller, workdir):
    portal.queue("current", sh("touch started; sleep 1; echo finished"))
    portal.queue("next", "true")
    p = start_poller()
    wait_until((workdir / "current" / "started").exists, what="job start")
    p.signal(signal.SIGUSR1)
    assert p.wait(20) == 0
    assert states(portal, "current", "next") == ["complete", "queued"]
    assert len(portal.requests_of("pop")) == 1


def test_sigusr1_while_idle_exits_at_once(portal, start_poller):
    p = start_poller("--speed", "300", quick=False)
    wait_until(lambda: portal.requests_of("pop"), what="first poll")
    p.signal(signal.SIGUSR1)
    assert p.wait(5) == 0


# -- 10. crash recovery ---------------------------------------------------------------------


def test_kill_9_orphan_is_stopped_and_requeued_then_errored_the_second_time(
    portal, start_poller, workdir
):
    portal.queue("fragile", sh("echo $$ > job.pid; sleep 300"))
    pidfile = workdir / "fragile" / "job.pid"

    def job_pid() -> int:
        return int(
            wait_until(
                lambda: pidfile.exists() and pidfile.read_text().strip(), what="the job to start"
            )
        )

    def kill_poller_mid_job(p) -> int:
        pid = job_pid()
        # The job can write its pid before the poller has recorded its process group.
        current = workdir / ".leampoll" / "current.json"
        wait_until(
            lambda: current.exists() and '"stage":"run"' in current.read_text(),
            what="the job's process group recorded",
        )
        p.signal(signal.SIGKILL)
        p.wait()
        assert psutil.pid_exists(pid)  # its own session: the kill did not reach the job
        pidfile.unlink()
        return pid

    first = kill_poller_mid_job(start_poller())
    # Restarted: the leftover is stopped and the job handed back before anything is popped;
    # the portal queues it again and the same poller pops it again.
    second_poller = start_poller()
    second = kill_poller_mid_job(second_poller)
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == "zombie"
    kinds = [r.kind for r in portal.received if r.kind != "check"]
    assert kinds == ["pop", "requeue", "pop"]

    third = start_poller("-i", "1")
    assert third.wait(30) == 0
    assert not psutil.pid_exists(second) or psutil.Process(second).status() == "zombie"
    assert [r.kind for r in portal.reports()] == ["requeue", "error", "end_run"]
    assert portal.outcome("fragile") == "error" and portal.status["fragile"] == "complete"
    assert "died twice" in portal.ending("fragile").form["message"]


# -- 11. retention ---------------------------------------------------------------------------


def test_retention(portal, start_poller, workdir):
    portal.queue("good", "true")
    for i in range(4):
        portal.queue(f"bad{i}", "false")
    p = start_poller("-i", "1", "--keep-failed", "2")
    assert p.wait(30) == 0
    dirs = sorted(d.name for d in workdir.iterdir() if d.is_dir() and d.name != ".leampoll")
    assert dirs == ["bad2", "bad3"]
    assert (workdir / "good.log").exists()


def test_preserve_keeps_successful_rundirs(portal, start_poller, workdir):
    portal.queue("good", "true")
    p = start_poller("-i", "1", "-p")
    assert p.wait() == 0
    assert (workdir / "good").is_dir()


# -- 12. logs ---------------------------------------------------------------------------------


def test_log_lines_name_the_job_and_hide_the_password(portal, start_poller):
    portal.queue("visible-id", "false")
    p = start_poller("-i", "1", "-d")
    assert p.wait() == 0
    job_lines = [line for line in p.log.splitlines() if " job " in line]
    assert job_lines and all("visible-id" in line for line in job_lines)
    assert PASSWORD not in p.log


def test_password_not_on_command_line(portal, start_poller):
    p = start_poller()
    wait_until(lambda: portal.requests_of("pop"), what="first poll")
    assert PASSWORD not in " ".join(psutil.Process(p.proc.pid).cmdline())


def test_status_file_counts_outcomes(portal, start_poller, workdir):
    portal.queue("ok", "true")
    portal.queue("ko", "false")
    p = start_poller("-i", "1")
    assert p.wait() == 0
    status = json.loads((workdir / ".leampoll" / "status.json").read_text())
    assert status["counts"] == {"success": 1, "error": 1, "requeued": 0}
    assert status["state"] == "stopped"
    mode = (workdir / ".leampoll").stat().st_mode & 0o777
    assert mode == 0o700
    assert Path(status["workdir"]) == workdir

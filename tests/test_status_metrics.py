"""`leampoll status` and `--metrics-file`, read while a real poller runs."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LEAMPOLL, wait_until
from tests.test_poller import sh

pytestmark = pytest.mark.timeout(120)


def status_json(*workdirs, env=None) -> list[dict]:
    out = subprocess.run(
        [*LEAMPOLL, "status", "--json", *map(str, workdirs)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env=env,
    )
    return json.loads(out.stdout)


def samples(path) -> dict[tuple, float]:
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            found[(s.name, *sorted(s.labels.items()))] = s.value
    return found


def test_status_shows_running_job_then_last_outcome(portal, start_poller, workdir):
    portal.queue("long-run", sh("touch started; sleep 1.5"))
    p = start_poller("--project", "chicago")
    wait_until((workdir / "long_run" / "started").exists, what="job start")
    (row,) = status_json(workdir)
    assert row["project"] == "chicago" and row["job"]["id"] == "long-run"
    assert row["pid"] == p.proc.pid and row["disk"]["free"] > 0
    portal.wait_for(lambda pt: pt.reports("success"))
    wait_until(lambda: status_json(workdir)[0]["job"] is None, what="job end in status")
    (row,) = status_json(workdir)
    assert row["last"]["outcome"] == "success" and row["succeeded"] == 1
    table = subprocess.run(
        [*LEAMPOLL, "status", str(workdir)], capture_output=True, text=True, check=True
    ).stdout
    assert "chicago" in table and "success long-run" in table


def test_status_shows_a_guard_hold_with_figures(portal, start_poller, workdir):
    start_poller("--min-free-mem", "100%")
    wait_until(lambda: status_json(workdir)[0]["guard"]["holding"], what="guard hold")
    (row,) = status_json(workdir)
    assert row["guard"]["holding"] == ["memory"]
    table = subprocess.run(
        [*LEAMPOLL, "status", str(workdir)], capture_output=True, text=True, check=True
    ).stdout
    assert "memory " in table.splitlines()[1]


def test_status_without_projects_says_so(tmp_path, env):
    env["LEAMPOLL_PROJECTS_FILE"] = str(tmp_path / "none.json")
    out = subprocess.run([*LEAMPOLL, "status"], capture_output=True, text=True, env=env)
    assert out.returncode == 1 and "no workdir" in out.stderr


def test_metrics_file_counts_outcomes_and_survives_restart(portal, start_poller, workdir, tmp_path):
    metrics = tmp_path / "leampoll.prom"
    portal.queue("ok", "true")
    portal.queue("ko", "false")
    p = start_poller("--metrics-file", str(metrics), "--project", "chicago", "-i", "1")
    assert p.wait() == 0
    found = samples(metrics)
    proj = ("project", "chicago")
    assert found[("leampoll_jobs_total", ("outcome", "success"), proj)] == 1
    assert found[("leampoll_jobs_total", ("outcome", "error"), proj)] == 1
    assert found[("leampoll_job_duration_seconds_count", proj)] == 2
    assert found[("leampoll_build_info", proj, ("version", row_version()))] == 1
    assert found[("leampoll_last_poll_timestamp_seconds", proj)] > 0
    assert found[("leampoll_guard_hold", ("guard", "memory"), proj)] == 0

    portal.queue("ok2", "true")
    p2 = start_poller("--metrics-file", str(metrics), "--project", "chicago", "-i", "1")
    assert p2.wait() == 0
    found = samples(metrics)
    assert found[("leampoll_jobs_total", ("outcome", "success"), proj)] == 2
    assert found[("leampoll_jobs_total", ("outcome", "error"), proj)] == 1


def test_metrics_show_running_job_and_guard(portal, start_poller, workdir, tmp_path):
    metrics = tmp_path / "m.prom"
    portal.queue("long", sh("touch started; sleep 30"))
    start_poller("--metrics-file", str(metrics), "--project", "p")
    wait_until((workdir / "long" / "started").exists, what="job start")
    found = wait_until(lambda: metrics.exists() and samples(metrics), what="metrics")
    wait_until(
        lambda: samples(metrics)[("leampoll_job_running", ("project", "p"))] == 1,
        what="running gauge",
    )
    assert found[("leampoll_job_start_timestamp_seconds", ("project", "p"))] > 0


def poller_state(path, project: str) -> list[str]:
    """The states whose leampoll_state series is 1 (one, if the file is right)."""
    return [
        labels["state"]
        for (name, *pairs), value in samples(path).items()
        if name == "leampoll_state" and value == 1
        for labels in [dict(pairs)]
        if labels["project"] == project
    ]


def test_state_series_idle_draining_then_stopped(portal, start_poller, workdir, tmp_path):
    metrics = tmp_path / "state.prom"
    p = start_poller("--metrics-file", str(metrics), "--project", "p")
    wait_until(
        lambda: metrics.exists() and poller_state(metrics, "p") == ["idle"], what="state idle"
    )
    states = {
        dict(pairs)["state"] for (name, *pairs) in samples(metrics) if name == "leampoll_state"
    }
    assert {"idle", "running", "draining", "holding", "stopped"} <= states
    # The job runs until the test lets it end (bounded: 60 s).
    portal.queue(
        "drained-job",
        sh(
            "touch started; i=0; while [ ! -e go ] && [ $i -lt 600 ]; "
            "do sleep 0.1; i=$((i+1)); done"
        ),
    )
    wait_until((workdir / "drained_job" / "started").exists, what="job start")
    wait_until(lambda: poller_state(metrics, "p") == ["running"], what="state running")
    p.signal(signal.SIGUSR1)
    # Shown while the job still runs, not only after it.
    wait_until(lambda: poller_state(metrics, "p") == ["draining"], what="state draining")
    assert status_json(workdir)[0]["state"] == "draining"
    assert portal.status["drained-job"] == "running"
    (workdir / "drained_job" / "go").touch()
    assert p.wait() == 0
    assert portal.status["drained-job"] == "complete"
    assert poller_state(metrics, "p") == ["stopped"]


def row_version() -> str:
    from leampoll import __version__

    return __version__


def test_poller_without_metrics_never_imports_prometheus_client():
    code = (
        "import sys, leampoll.cli, leampoll.worker, leampoll.cmd_status; "
        "sys.exit('prometheus_client' in sys.modules)"
    )
    assert subprocess.run([LEAMPOLL[0], "-c", code]).returncode == 0

"""Unit tests of the state folder's data: status.json as its readers read it, and the
failed run directories kept for a person.

No network, no subprocesses.
"""

from __future__ import annotations

import json

from leampoll.portal_health import Trouble
from leampoll.state import AuthHold, Current, Guard, Last, State, Status

# The keys of status.json, in order: `leampoll status`, the metrics and the fleet
# table read them, and a poller reads its predecessor's file on start.
STATUS_KEYS = [
    "project",
    "version",
    "pid",
    "site",
    "workdir",
    "started_at",
    "state",
    "current",
    "last",
    "counts",
    "session",
    "guard",
    "last_poll",
    "reports_pending",
    "auth",
    "portal_error",
    "portal_errors_total",
    "idle_since",
    "jobs",  # how jobs are contained (cgroups.Mode.describe)
    "usage",  # the running job's usage so far
]


def busy_status() -> Status:
    return Status(
        project="luc",
        version="1.0",
        pid=4242,
        site="https://portal.example.org/luc",
        workdir="/srv/luc",
        started_at=100.0,
        state="running",
        current=Current("j2", "Chicago", 150.0, "/srv/luc/j2", "/srv/luc/j2.log"),
        last=Last("j1", "error", 140.0, "job j1 run failed", portal="end_run"),
        counts={"success": 3, "error": 1, "requeued": 0},
        session={"success": 1, "error": 1, "requeued": 0},
        guard=Guard(["disk", "auth"], {"disk": [1, 10, 5]}),
        last_poll=149.0,
        reports_pending=2,
        auth=AuthHold("poller", 120.0, "HTTP 401"),
        portal_error=Trouble(130.0, "http_5xx", "HTTP 500", 145.0, 3),
        portal_errors_total={"http_5xx": 3},
        idle_since=None,
    )


def test_status_json_has_the_keys_readers_read():
    data = busy_status().to_json()
    assert list(data) == STATUS_KEYS
    assert data["current"] == {
        "id": "j2",
        "title": "Chicago",
        "started_at": 150.0,
        "rundir": "/srv/luc/j2",
        "log": "/srv/luc/j2.log",
    }
    assert data["last"] == {
        "id": "j1",
        "outcome": "error",
        "at": 140.0,
        "message": "job j1 run failed",
        "portal": "end_run",
    }
    assert data["guard"] == {
        "holding": ["disk", "auth"],
        "readings": {"disk": [1, 10, 5]},
        "needs": {},
        "ledger": None,
    }
    assert data["auth"] == {"user": "poller", "since": 120.0, "detail": "HTTP 401"}
    assert data["portal_error"] == {
        "since": 130.0,
        "reason": "http_5xx",
        "last": "HTTP 500",
        "at": 145.0,
        "count": 3,
    }


def test_last_has_no_portal_key_until_its_report_is_delivered():
    assert Last("j1", "success", 1.0, "ok").to_json() == {
        "id": "j1",
        "outcome": "success",
        "at": 1.0,
        "message": "ok",
    }


def test_status_written_and_read_back_is_the_same(tmp_path):
    state = State(tmp_path)
    state.save_status(busy_status())
    assert json.loads((tmp_path / "status.json").read_text())["pid"] == 4242
    assert state.load_status() == busy_status()


def test_missing_status_reads_as_what_a_missing_key_means(tmp_path):
    status = State(tmp_path).load_status()
    assert status == Status() == Status.from_json("not an object")
    assert status.pid is None and status.version is None and status.state is None
    assert status.current is None and status.last is None and status.portal_error is None
    assert status.counts == {} and status.session == {} and status.reports_pending == 0
    assert status.guard == Guard([], {})


def test_status_of_another_version_keeps_what_it_can():
    status = Status.from_json(
        {
            "pid": 7,
            "unknown": 1,
            "counts": ["not", "a", "dict"],
            "current": "garbage",
            "last": {"id": "j", "outcome": "success", "at": 5.0, "message": "m", "extra": True},
            "portal_error": {"since": 1.0},
            "guard": {"holding": ["memory"]},
        }
    )
    assert status.pid == 7 and status.counts == {} and status.current is None
    assert status.last == Last("j", "success", 5.0, "m")
    assert status.portal_error is None  # too little of it to show
    assert status.guard == Guard(["memory"], {})


def test_failed_run_directories_kept_are_bounded_oldest_removed_first(tmp_path):
    state = State(tmp_path / ".leampoll")
    state.ensure()
    runs = [tmp_path / f"run{i}" for i in range(4)]
    for run in runs:
        run.mkdir()
        state.keep_failed(run, 2)
    assert [r.exists() for r in runs] == [False, False, True, True]
    assert json.loads(state.failed_path.read_text()) == [str(runs[2]), str(runs[3])]
    # The same directory failing again is kept once, as the newest.
    state.keep_failed(runs[2], 2)
    assert json.loads(state.failed_path.read_text()) == [str(runs[3]), str(runs[2])]
    assert runs[2].exists() and runs[3].exists()

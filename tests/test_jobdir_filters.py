"""plugins/filter/jobdir.py: the job tree's space and the learned disk needs the role warns of.

The sizes are the poller's (leampoll.units) and the needs its own
(leampoll.needs over a history as leampoll.usage writes it), with its defaults.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import sys

import pytest

from leampoll.config import Config
from testing.playbook import ROOT

_spec = importlib.util.spec_from_file_location("jobdir", ROOT / "plugins" / "filter" / "jobdir.py")
jd = importlib.util.module_from_spec(_spec)
sys.modules["jobdir"] = jd
_spec.loader.exec_module(jd)

G = 1024**3


@pytest.mark.parametrize(
    "min_free,required,share",
    [("10G", 10 * G, False), ("10GiB", 10 * G, False), ("15%", 15 * G, True), ("512", 512, False)],
)
def test_space_reads_min_free_as_the_poller(min_free, required, share):
    room = jd.jobdir_space(f"{5 * G} {100 * G} /mnt", min_free)
    assert room == {
        "free": 5 * G,
        "total": 100 * G,
        "path": "/mnt",
        "required": required,
        "share": share,
    }


def test_space_keeps_a_path_with_spaces():
    assert jd.jobdir_space("1 2 /mnt/a b\n", "1")["path"] == "/mnt/a b"


def slurped(name, peaks=None, ended="exit"):
    """An ansible.builtin.slurp result of a project's history (None: no file)."""
    if peaks is None:
        return {"item": name, "failed": True, "msg": "file not found"}
    lines = [
        json.dumps({"job_id": f"j{i}", "started": i, "peak_disk_bytes": p, "ended": ended})
        for i, p in enumerate(peaks)
    ]
    return {"item": name, "content": base64.b64encode("\n".join(lines).encode()).decode()}


ROOM = {"total": 100 * G, "required": 10 * G}


def test_no_history_no_warning():
    assert jd.jobdir_need_warnings([slurped("a")], [{"name": "a"}], ROOM) == []


def test_needs_beyond_the_minimum_and_the_filesystem_are_warned_of():
    histories = [slurped("small", [G]), slurped("mid", [10 * G]), slurped("huge", [90 * G])]
    projects = [{"name": "small"}, {"name": "mid"}, {"name": "huge"}]
    assert jd.jobdir_need_warnings(histories, projects, ROOM) == [
        f"mid: learned disk need {12 * G} bytes exceeds leam_jobdir_min_free ({10 * G} bytes)",
        f"huge: learned disk need {108 * G} bytes exceeds the job filesystem ({100 * G} bytes)",
    ]


def test_the_pollers_defaults_then_the_hosts_then_the_projects():
    # Defaults: Config's learn_runs (the last 10 runs) and learn_margin (1.2).
    assert (Config.learn_runs, Config.learn_margin) == (10, 1.2)
    old_peak = [20 * G] + [G] * 10
    assert jd.jobdir_need_warnings([slurped("p", old_peak)], [{"name": "p"}], ROOM) == []
    warned = jd.jobdir_need_warnings([slurped("p", old_peak)], [{"name": "p"}], ROOM, 11)
    assert warned and "exceeds leam_jobdir_min_free" in warned[0]
    projects = [{"name": "p", "learn_runs": 10}]
    assert jd.jobdir_need_warnings([slurped("p", old_peak)], projects, ROOM, 11) == []
    near = [slurped("p", [9 * G])]
    assert jd.jobdir_need_warnings(near, [{"name": "p"}], ROOM, None, "1.0") == []
    assert jd.jobdir_need_warnings(near, [{"name": "p", "learn_margin": 1.5}], ROOM, None, 1.0)


def test_a_run_that_filled_the_disk_raises_the_need_as_the_poller_does():
    # It reached 6G before the disk was full: the poller doubles the need it ran with.
    history = [slurped("p", [4 * G, 6 * G], ended="exit")]
    assert jd.jobdir_need_warnings(history, [{"name": "p"}], ROOM) == []
    full = slurped("p", [5 * G])
    lines = base64.b64decode(full["content"]).decode() + "\n"
    lines += json.dumps({"job_id": "x", "started": 9, "peak_disk_bytes": G, "ended": "disk_full"})
    full["content"] = base64.b64encode(lines.encode()).decode()
    (line,) = jd.jobdir_need_warnings([full], [{"name": "p"}], ROOM)
    assert line == (
        f"p: learned disk need {12 * G} bytes exceeds leam_jobdir_min_free ({10 * G} bytes)"
    )


def test_a_damaged_history_line_is_skipped():
    text = "not json\n" + json.dumps({"job_id": "a", "started": 1, "peak_disk_bytes": 20 * G})
    result = {"item": "p", "content": base64.b64encode(text.encode()).decode()}
    (line,) = jd.jobdir_need_warnings([result], [{"name": "p"}], ROOM)
    assert line.startswith(f"p: learned disk need {24 * G} bytes")

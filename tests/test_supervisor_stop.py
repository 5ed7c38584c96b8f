"""The supervisor role's stop timeout: computed from the programs' stopwaitsecs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_ROLE = Path(__file__).resolve().parent.parent / "roles/supervisor"
_PATH = _ROLE / "filter_plugins/supervisor_stop.py"
_spec = importlib.util.spec_from_file_location("supervisor_stop", _PATH)
stop = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stop)


def test_timeout_is_the_sum_of_the_programs_plus_margin():
    # supervisord stops one program after the other: 3 pollers of 125 s each
    assert stop.supervisor_stop_timeout([125, 125, 125], 30) == 405
    assert stop.supervisor_stop_timeout(["40", "40"], "30") == 110


def test_timeout_never_below_debians_90_seconds():
    assert stop.supervisor_stop_timeout([], 30) == 90
    assert stop.supervisor_stop_timeout([40], 30) == 90
    assert stop.supervisor_stop_timeout([61], 30) == 91


def test_filters_are_registered():
    assert set(stop.FilterModule().filters()) == {"supervisor_stop_timeout",
                                                 "supervisor_stop_problems"}


def test_a_fitting_timeout_has_no_problem():
    assert stop.supervisor_stop_problems([125, 125], 30, 1740) == []
    assert stop.supervisor_stop_problems([1710], 30, 1740) == []


def test_a_timeout_beyond_the_bound_says_which_bound_and_why():
    (problem,) = stop.supervisor_stop_problems([900, 900], 30, 1740)
    assert "1830 s" in problem and "900 + 900" in problem
    assert "supervisor_stop_timeout_max (1740 s)" in problem
    assert "reboot.target JobTimeoutSec" in problem and "leampoll_grace" in problem


@pytest.mark.parametrize("waits,margin,limit,word", [
    ([10, "x"], 30, 1740, "supervisor_programs_stopwaitsecs[1]"),
    ([-5], 30, 1740, "must not be negative"),
    ("125", 30, 1740, "must be a list"),
    ([10], "soon", 1740, "supervisor_stop_margin"),
    ([10], 30, True, "supervisor_stop_timeout_max"),
])
def test_bad_values_are_named(waits, margin, limit, word):
    (problem,) = stop.supervisor_stop_problems(waits, margin, limit)
    assert word in problem

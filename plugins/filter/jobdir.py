"""Filters of the jobdir role: the job tree's free space, and the projects' learned disk needs.

A size (leam_jobdir_min_free) means what it means to the poller (leampoll.units),
and a learned need is the poller's (leampoll.needs over the project's history,
read as leampoll.usage reads it), with the poller's own defaults for learn_runs
and learn_margin (leampoll.config), so the role warns of the need the poller
will hold its jobs to. Covered by tests/test_jobdir_filters.py.

Filters (by their full name, leam.jobserver.<name>):
  jobdir_space(measured, min_free)     "free total path" of the job tree -> its figures
  jobdir_need_warnings(histories, projects, space, learn_runs, learn_margin)
                                       the warnings of needs the tree cannot meet
"""

from __future__ import annotations

import base64
import binascii
import functools
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

try:
    import leampoll  # noqa: F401  (a checkout's venv has it installed)
except ImportError:  # the installed collection carries the poller's source at its root
    sys.path.append(str(Path(__file__).resolve().parents[2]))
from leampoll import needs, options, units, usage


@functools.lru_cache(maxsize=1)
def _parser() -> Any:
    return options.build_parser()


def jobdir_space(measured: str, min_free: Any) -> dict[str, Any]:
    """The job tree's figures from "free total path" (statvfs of the tree, or of its
    nearest existing parent), and the bytes leam_jobdir_min_free requires of them:
    a size, or a percentage of the filesystem, as the poller's guards read it."""
    free, total, path = str(measured).strip().split(" ", 2)
    size = units.parse_size(str(min_free))
    return {
        "free": int(free),
        "total": int(total),
        "path": path,
        "required": size.bytes_of(int(total)),
        "share": size.percent,
    }


def _text(result: Mapping[str, Any]) -> str:
    """The text of one ansible.builtin.slurp result; "" when the file was not there."""
    try:
        return base64.b64decode(result.get("content") or "").decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return ""


def _setting(dest: str, *values: Any) -> Any:
    """The first value given (a project's, then the host's), as the poller's option
    converts it; else the poller's default."""
    for value in values:
        if value is not None:
            return options.convert(_parser(), dest, value)
    return options.DEFAULTS[dest]


def jobdir_need_warnings(
    histories: Iterable[Mapping[str, Any]],
    projects: Iterable[Mapping[str, Any]],
    space: Mapping[str, Any],
    learn_runs: Any = None,
    learn_margin: Any = None,
) -> list[str]:
    """One line per project whose learned disk need the job tree cannot meet.

    `histories`: the results of slurping each project's .leampoll/history.jsonl,
    their `item` the project's name (a missing file is no history). `space`:
    jobdir_space's figures. `learn_runs`, `learn_margin`: the host's
    leampoll_learn_* (None: the poller's defaults), which a project's own keys
    override. A need larger than the filesystem can never be met; one above
    leam_jobdir_min_free means that minimum is too low.
    """
    by_name = {p.get("name"): p for p in projects if isinstance(p, Mapping)}
    total, floor = int(space["total"]), int(space["required"])
    lines = []
    for result in histories:
        name = result.get("item")
        project = by_name.get(name, {})
        runs = _setting("learn_runs", project.get("learn_runs"), learn_runs)
        margin = _setting("learn_margin", project.get("learn_margin"), learn_margin)
        history = usage.parse_history(_text(result), runs)
        need = needs.learn("disk", 0, history, margin, total=total).amount
        if need > total:
            lines.append(
                f"{name}: learned disk need {need} bytes exceeds the job filesystem ({total} bytes)"
            )
        elif need > floor:
            lines.append(
                f"{name}: learned disk need {need} bytes exceeds leam_jobdir_min_free "
                f"({floor} bytes)"
            )
    return lines


class FilterModule:
    """The jobdir role's filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "jobdir_space": jobdir_space,
            "jobdir_need_warnings": jobdir_need_warnings,
        }

"""Benchmarks: each figure measured side by side with a baseline in the same run.

A suite is one function registered with `@suite(name, title)` in any module of
this package; `python -m bench` runs every registered suite, `python -m bench
NAME` only that one. A suite returns a `Section` (a table of figures and the
notes explaining them); the sections are printed and written to
BENCHMARKS.md, where the sections of suites not run this time are kept as
they were.

Adding a suite (e.g. provisioning) is one function in a new module here::

    from bench import Section, suite

    @suite("provisioning", "Provisioning")
    def provisioning(options) -> Section:
        ...
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

# Modules of this package that hold no suites (scripts and helpers).
_NOT_SUITES = {"__main__", "baseline_poller", "common", "report"}


@dataclass
class Row:
    """One line of a results table."""

    figure: str
    ours: str
    baseline: str = "-"
    ratio: str = "-"
    goal: str = "-"
    met: bool | None = None  # None: no goal for this line


@dataclass
class Section:
    """What one suite measured: a table and the notes that explain it."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    header: str = ""  # machine, date, run time: above the table
    notes: str = ""  # markdown below the table
    subjects: tuple[str, str] = ("leampoll", "baseline")  # the two measured columns


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    run: Callable[..., Section]


SUITES: dict[str, Suite] = {}

# Suites that are planned but not written yet: their place in BENCHMARKS.md.
PLANNED: dict[str, tuple[str, str]] = {}


def suite(name: str, title: str) -> Callable[[Callable[..., Section]], Callable[..., Section]]:
    """Register a suite: `fn(options) -> Section`."""

    def register(fn: Callable[..., Section]) -> Callable[..., Section]:
        SUITES[name] = Suite(name, title, fn)
        return fn

    return register


def discover() -> dict[str, Suite]:
    """Import every module of the package, so their `@suite` functions register."""
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _NOT_SUITES:
            importlib.import_module(f"{__name__}.{module.name}")
    return SUITES

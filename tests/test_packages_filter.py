"""The roles' dpkg check (plugins/filter/packages.py): apt runs only where a package is missing."""

from __future__ import annotations

import importlib.util

from testing.playbook import ROOT

_spec = importlib.util.spec_from_file_location(
    "packages_filter", ROOT / "plugins" / "filter" / "packages.py"
)
packages = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(packages)

# `dpkg-query --show --showformat='${Package} ${db:Status-Abbrev}\n' ...` as a host answers:
# git installed, python3-venv removed with its configuration kept ("rc"), and
# dpkg-query's exit 1 for an unknown package leaves it out of the output.
DPKG = "git ii \npython3-venv rc \n"


def test_only_installed_packages_count():
    wanted = ["python3-venv", "git", "unknown-pkg"]
    assert packages.dpkg_missing(DPKG, wanted) == ["python3-venv", "unknown-pkg"]


def test_nothing_missing_and_no_answer_at_all():
    assert packages.dpkg_missing(DPKG, ["git"]) == []
    assert packages.dpkg_missing("", ["git"]) == ["git"]
    assert packages.dpkg_missing(None, ["git"]) == ["git"]

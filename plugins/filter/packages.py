"""Which of the host's packages are missing, from dpkg's own record.

The roles ask `dpkg-query --show --showformat='${Package} ${db:Status-Abbrev}\\n'`
first and call apt (its cache, a refresh of stale package lists) only where a
package is missing: a re-run stays fast and offline.

Filters (by their full name, leam.jobserver.<name>):
  dpkg_missing(dpkg_output, packages)  the packages not installed, in the given order
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# A line of that format for an installed package: "<name> ii ".
INSTALLED = re.compile(r"^(\S+) ii ", re.M)


def dpkg_missing(dpkg_output: str | None, packages: Iterable[str]) -> list[str]:
    """The packages dpkg does not list as installed ("ii"): unknown, removed or half-installed."""
    installed = set(INSTALLED.findall(dpkg_output or ""))
    return [name for name in packages if name not in installed]


class FilterModule:
    """The roles' package filters."""

    def filters(self) -> dict[str, Any]:
        return {"dpkg_missing": dpkg_missing}

"""Units: sizes and shares of a total (5G, 512M, 15%), and bytes shown short.

Used by the option parser, the guards and `leampoll status`, so a size means
the same wherever it is read or shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True)
class Size:
    """A threshold: an absolute byte (or inode) count, or a share of the total."""

    value: float
    percent: bool = False

    def bytes_of(self, total: int) -> int:
        """The absolute threshold for a resource of `total` units."""
        return int(total * self.value / 100) if self.percent else int(self.value)

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else human(self.value)


def parse_size(text: str, units: bool = True) -> Size:
    """Parse '5G', '512M', '1.5T', '100' or '15%' (suffixes are powers of 1024)."""
    match = _PERCENT.match(text)
    if match:
        value = float(match.group(1))
        if value > 100:
            raise ValueError(f"{text!r}: a percentage cannot exceed 100%")
        return Size(value, percent=True)
    match = _SIZE.match(text)
    if not match or (match.group(2) and not units):
        raise ValueError(f"{text!r} is not a size (a number with K/M/G/T, or a percentage)")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if value >= 2**63:
        raise ValueError(f"{text!r} is too large")
    return Size(value)


MIN_MEMORY_MAX = 1024**2
CPU_WEIGHT_MIN, CPU_WEIGHT_MAX = 1, 10000  # systemd's CPUWeight=
# A job's processes and threads (--tasks-max; 0: the slice's bound only). Its
# unit gets one more, for the unit's keeper (leampoll.cgroups), and the
# job-unit helper refuses a TasksMax= above 2^22 (the kernel's largest pid_max).
TASKS_MAX_MAX = 2**22 - 1


def parse_memory_max(text: str) -> int:
    """A job's memory bound: an absolute size of at least 1M, in bytes."""
    size = parse_size(text)
    if size.percent or size.value < MIN_MEMORY_MAX:
        raise ValueError(f"{text!r}: must be an absolute size of at least 1M")
    return int(size.value)


def check_cpu_weight(value: int) -> int:
    if not CPU_WEIGHT_MIN <= value <= CPU_WEIGHT_MAX:
        raise ValueError(f"{value!r}: must be within {CPU_WEIGHT_MIN}..{CPU_WEIGHT_MAX}")
    return value


def check_tasks_max(value: int) -> int:
    if not 0 <= value <= TASKS_MAX_MAX:
        raise ValueError(f"{value!r}: must be within 0..{TASKS_MAX_MAX}")
    return value


def human(n: float) -> str:
    """Bytes as a short figure with a 1024-based unit, e.g. 5.0G."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")

"""How long systemd lets Supervisor stop: the value of the role's drop-in and its check.

supervisord stops its program groups one after another when it shuts down
(each [program:x] is a group of its own; the next group is stopped only once
every process of the last one has stopped), and each may take its full
stopwaitsecs. So a `systemctl stop/restart supervisor`, a package upgrade or
a reboot can take the *sum* of the programs' stopwaitsecs, not the longest
one; systemd must wait that long, or it kills supervisord (and with it a
poller still handing its job back to the portal).
"""

from __future__ import annotations

from collections.abc import Iterable

# Debian's supervisor.service waits 90 s (systemd's default): never less.
DEBIAN_TIMEOUT_STOP_SEC = 90


def _seconds(value: object, what: str) -> int:
    """A whole number of seconds >= 0, from an int or its text; ValueError names `what`."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a whole number of seconds, not {value!r}")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{what} must be a whole number of seconds, not {value!r}") from None
    if number < 0:
        raise ValueError(f"{what} must not be negative ({number})")
    return number


def _stopwaitsecs(values: Iterable[object]) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"supervisor_programs_stopwaitsecs must be a list, not {values!r}")
    return [_seconds(v, f"supervisor_programs_stopwaitsecs[{i}]") for i, v in enumerate(values)]


def supervisor_stop_timeout(stopwaitsecs: Iterable[object], margin: object = 30,
                            floor: object = DEBIAN_TIMEOUT_STOP_SEC) -> int:
    """TimeoutStopSec for supervisor.service: the programs' stop times in a row, plus margin.

    Never below `floor` (Debian's own 90 s).
    """
    total = sum(_stopwaitsecs(stopwaitsecs)) + _seconds(margin, "supervisor_stop_margin")
    return max(total, _seconds(floor, "floor"))


def supervisor_stop_problems(stopwaitsecs: Iterable[object], margin: object,
                             limit: object) -> list[str]:
    """What makes the stop timeout impossible, one sentence each (empty: it fits)."""
    try:
        waits = _stopwaitsecs(stopwaitsecs)
        limit_s = _seconds(limit, "supervisor_stop_timeout_max")
        timeout = supervisor_stop_timeout(waits, margin)
    except ValueError as exc:
        return [str(exc)]
    if timeout <= limit_s:
        return []
    return [
        f"Supervisor would need up to {timeout} s to stop: it stops its {len(waits)} programs one "
        f"after another, each within its stopwaitsecs ({' + '.join(map(str, waits))} s), plus "
        f"supervisor_stop_margin ({_seconds(margin, 'supervisor_stop_margin')} s). That exceeds "
        f"supervisor_stop_timeout_max ({limit_s} s): systemd forces a reboot or poweroff 30 min "
        f"after it began (reboot.target JobTimeoutSec), so a job stopped last would be killed "
        f"before its poller hands it back. Lower leampoll_grace or leampoll_stop_margin, or "
        f"serve fewer projects on this host"
    ]


class FilterModule:
    """Filters of the supervisor role."""

    def filters(self) -> dict:
        return {
            "supervisor_stop_timeout": supervisor_stop_timeout,
            "supervisor_stop_problems": supervisor_stop_problems,
        }

"""Asking this host's Supervisor about (and acting on) its programs, via supervisorctl.

LEAMPOLL_SUPERVISORCTL overrides the command (split like a shell would), e.g.
`supervisorctl -c /etc/supervisor/other.conf` for a Supervisor with its own
configuration file.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess


def command() -> list[str] | None:
    """argv prefix of supervisorctl; None when there is none on this host."""
    words = shlex.split(os.environ.get("LEAMPOLL_SUPERVISORCTL", "supervisorctl"))
    if not words or not shutil.which(words[0]):
        return None
    return words


def ctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str] | None:
    """Run `supervisorctl ARGS`; None when supervisorctl is missing or does not answer."""
    exe = command()
    if exe is None:
        return None
    try:
        return subprocess.run(
            [*exe, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def states() -> dict[str, str]:
    """Program name -> Supervisor state; empty when supervisorctl is not usable here."""
    out = ctl("status", timeout=10)
    if out is None:
        return {}
    found = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isupper():
            found[parts[0]] = parts[1]
    return found

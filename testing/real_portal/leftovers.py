"""What of the real portal outlives its tests: servers, chrooted processes, mounts.

The leftovers check (`python -m testing.demo leftovers`, run by .ci/run) lists these,
so a portal a test forgot to stop fails CI instead of lingering.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from testing.real_portal.build import cache_dir, mounts_under


def leftovers() -> list[str]:
    """One line per process running in a real-portal chroot and per mount below the cache."""
    cache = cache_dir()
    if not cache.is_dir():
        return []
    prefix = str(cache.resolve()) + "/"
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if (os.readlink(proc / "root") + "/").startswith(prefix):
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                found.append(f"process {proc.name} in a real-portal chroot: {cmd}")
    found += [f"mount {point} (real portal)" for point in mounts_under(cache)]
    return found

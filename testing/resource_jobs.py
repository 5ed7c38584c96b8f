"""Jobs that take disk or memory step by step, for the guard tests and `bench/guards.py`.

Step by step, so that two jobs running at once both grow and the one that
finds the disk full (or the memory limit reached) dies of it, as a model run
does hours in.
"""

from __future__ import annotations

import json

MIB = 2**20


def disk_job(mib: int, steps: int = 30, pause: float = 0.05) -> str:
    """Writes `mib` MiB to `out` in its run directory in `steps` appends; exit 1 on a full disk."""
    chunk = mib * MIB // steps
    return (
        f"sh -c 'for i in $(seq {steps}); do head -c {chunk} /dev/zero >> out || exit 1; "
        f"sleep {pause}; done'"
    )


def memory_job(mib: int, steps: int = 10, pause: float = 0.1, hold: float = 1.0) -> str:
    """Takes `mib` MiB of memory (written, so the kernel really gives it) in `steps`, holds it."""
    chunk = mib * MIB // steps
    script = (
        f"import time; held = [(b'x' * {chunk}, time.sleep({pause})) for _ in range({steps})]; "
        f"time.sleep({hold})"
    )
    return "python3 -c " + json.dumps(script)

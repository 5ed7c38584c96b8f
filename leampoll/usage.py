"""What a job used, and the per-project history of it.

The executor measures every job (from its cgroup where there is one, sampled
with psutil elsewhere) and the worker appends one `JobUsage` per job to
`<workdir>/.leampoll/history.jsonl`. The guards learn a project's needs from
that file, so its format is a contract: one JSON object per line, the fields
of `JobUsage`, the newest last, at most `HISTORY_KEEP` lines.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from leampoll import records

HISTORY_FILE = "history.jsonl"
HISTORY_KEEP = 100

# How a job ended, as recorded.
ENDED_EXIT = "exit"  # its main process exited (any code)
ENDED_SIGNAL = "signal"  # killed by a signal it did not ask for
ENDED_OOM = "oom"  # killed by the OOM killer (its cgroup's or the kernel's)
ENDED_TIMEOUT = "timeout"  # ran past --job-timeout / --checkout-timeout
ENDED_INTERRUPTED = "interrupted"  # drain, SIGTERM, retire: handed back
ENDED_DISK_FULL = "disk_full"  # failed with its run directory's filesystem full


@dataclass(frozen=True)
class JobUsage:
    """One job's measured usage and how it ended."""

    job_id: str
    started: float  # unix time
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_memory_bytes: int = 0
    peak_disk_bytes: int = 0  # bytes used in its run directory
    peak_inodes: int = 0  # files and directories in its run directory
    ended: str = ENDED_EXIT
    exit_code: int | None = None
    signal: int | None = None
    mode: str = "pgroup"  # "cgroup-v2", "cgroup-v1" or "pgroup" (sampled)

    @property
    def ok(self) -> bool:
        return self.ended == ENDED_EXIT and self.exit_code == 0

    @property
    def short_of_resources(self) -> bool:
        """Failed for lack of memory or space: the guards raise the need."""
        return self.ended in (ENDED_OOM, ENDED_DISK_FULL)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> JobUsage | None:
        """A record from one history line; None for anything unreadable."""
        if not isinstance(data, dict) or not isinstance(data.get("job_id"), str):
            return None
        return records.from_json(cls, data)


def history_path(state_dir: Path) -> Path:
    return state_dir / HISTORY_FILE


def read_history(path: Path, last: int | None = None) -> list[JobUsage]:
    """The recorded runs, oldest first; a damaged line is skipped, not fatal."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return parse_history(text, last)


def parse_history(text: str, last: int | None = None) -> list[JobUsage]:
    """The runs of a history file's text, oldest first (the jobdir role reads it too)."""
    runs = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            usage = JobUsage.from_json(json.loads(line))
            if usage is not None:
                runs.append(usage)
    return runs[-last:] if last else runs


def append_history(path: Path, usage: JobUsage, keep: int = HISTORY_KEEP) -> None:
    """Add one run, keeping the newest `keep`; atomic like every state file."""
    runs = read_history(path)[-(keep - 1) :] if keep > 1 else []
    runs.append(usage)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for run in runs:
            f.write(json.dumps(run.to_json(), separators=(",", ":")) + "\n")
    os.replace(tmp, path)

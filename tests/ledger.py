"""What the jobs themselves saw: each run appends its start and end to a ledger.

The portal stand-in knows what it handed out and how each job ended; only the
job knows when it really ran. Each fault-suite job is a small shell script that
appends ``start ID TIME`` and ``end ID TIME`` to one ledger file (O_APPEND
writes of a short line are atomic), so a test can prove that no job ran twice
at the same time and count how often each ran. Sandbox hosts share the
machine's kernel, so their clocks are the same clock.
"""

from __future__ import annotations

import itertools
import json
import shlex
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

BESIDE_RUNDIR = '"$LEAM_RUNDIR/../ledger.txt"'  # in the project's workdir, on its host


def job_cmdline(ledger: str = BESIDE_RUNDIR, seconds: float = 0.0) -> str:
    """A job command line recording its run in ``ledger`` (a path on the job's host;
    by default a file in the poller's workdir, which the job tree keeps)."""
    path = ledger if ledger == BESIDE_RUNDIR else shlex.quote(ledger)
    script = (f'echo "start $LEAM_JOB_ID $(date +%s.%N)" >> {path}; '
              f"sleep {seconds}; "
              f'echo "end $LEAM_JOB_ID $(date +%s.%N)" >> {path}')
    return "sh -c " + json.dumps(script)


@dataclass
class Runs:
    """Every run of every job: (start, end or None) intervals by job id."""

    by_job: dict[str, list[tuple[float, float | None]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, texts: list[str]) -> Runs:
        open_runs: dict[str, list[float]] = defaultdict(list)
        runs: dict[str, list[tuple[float, float | None]]] = defaultdict(list)
        events = []
        for text in texts:
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[0] in ("start", "end"):
                    events.append((float(parts[2]), parts[0], parts[1]))
        for at, what, job in sorted(events):
            if what == "start":
                open_runs[job].append(at)
            elif open_runs[job]:
                runs[job].append((open_runs[job].pop(0), at))
        for job, starts in open_runs.items():
            runs[job].extend((at, None) for at in starts)
        return cls(dict(runs))

    @classmethod
    def read(cls, paths: list[Path]) -> Runs:
        return cls.parse([p.read_text() for p in paths if p.exists()])

    def completed(self, job: str) -> int:
        return sum(1 for _, end in self.by_job.get(job, []) if end is not None)

    def overlapping(self) -> list[str]:
        """Jobs with two runs alive at the same time."""
        bad = []
        for job, runs in self.by_job.items():
            spans = sorted((s, e if e is not None else float("inf")) for s, e in runs)
            if any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)):
                bad.append(job)
        return bad

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

BESIDE_RUNDIR = '"$LEAM_RUNDIR/../ledger.txt"'  # in the project's workdir, on its host


def job_cmdline(ledger: str = BESIDE_RUNDIR, seconds: float = 0.0) -> str:
    """A job command line recording its run in ``ledger`` (a path on the job's host;
    by default a file in the poller's workdir, which the job tree keeps).

    Each line names the run (its shell's pid and start time), so an end is never
    paired with another run's start. A run stopped by SIGTERM writes ``killed``
    instead of ``end``: it ended, but did not complete. A run killed outright
    (power cut) writes nothing more.
    """
    path = ledger if ledger == BESIDE_RUNDIR else shlex.quote(ledger)
    say = f'echo "$1 $LEAM_JOB_ID $run $(date +%s.%N)" >> {path}'
    script = (
        f"say() {{ {say}; }}; run=$$.$(date +%s%N); "
        "trap 'say killed; exit 143' TERM; "
        f"say start; sleep {seconds} & wait; say end"
    )
    return "sh -c " + json.dumps(script)


@dataclass(frozen=True)
class Run:
    start: float
    end: float | None  # None: still running, or killed without a word
    completed: bool


@dataclass
class Runs:
    """Every run of every job, by job id."""

    by_job: dict[str, list[Run]] = field(default_factory=dict)

    @classmethod
    def parse(cls, texts: list[str], cut_at: list[float | None] | None = None) -> Runs:
        """Runs from ledger texts (one per host). ``cut_at[i]``: when text i's host
        lost its power; its runs left open then ended at that moment."""
        runs: dict[str, list[Run]] = defaultdict(list)
        for i, text in enumerate(texts):
            starts: dict[tuple[str, str], float] = {}
            ends: dict[tuple[str, str], tuple[float, bool]] = {}
            for line in text.splitlines():
                parts = line.split()
                if len(parts) != 4:
                    continue
                what, job, run, at = parts[0], parts[1], parts[2], float(parts[3])
                if what == "start":
                    starts[job, run] = at
                elif what in ("end", "killed"):
                    ends[job, run] = (at, what == "end")
            cut = cut_at[i] if cut_at else None
            for (job, run), at in starts.items():
                end, completed = ends.get((job, run), (cut, False))
                runs[job].append(Run(at, end, completed))
        return cls(dict(runs))

    def completed(self, job: str) -> int:
        return sum(1 for r in self.by_job.get(job, []) if r.completed)

    def interrupted(self, job: str) -> int:
        return sum(1 for r in self.by_job.get(job, []) if not r.completed)

    def overlapping(self) -> list[str]:
        """Jobs with two runs alive at the same time (a run with no end is alive for ever)."""
        bad = []
        for job, runs in self.by_job.items():
            spans = sorted((r.start, r.end if r.end is not None else float("inf")) for r in runs)
            if any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)):
                bad.append(job)
        return bad

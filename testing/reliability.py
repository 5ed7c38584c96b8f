"""Figures of a fault-suite run, and RELIABILITY.md made from them.

Each fault case adds one `Case` (jobs queued, faults injected, jobs lost, jobs
run twice, throughput) through the `reliability` fixture; at the end of the
session the cases are written as JSON to ``$LEAM_RELIABILITY_JSON`` when it is
set. ``python -m testing.reliability render FILE`` turns that file into
RELIABILITY.md, so the document always carries the figures of one real run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

COMMAND = "make faults"


@dataclass
class Case:
    """One fault case's outcome, as RELIABILITY.md shows it."""

    name: str
    jobs: int
    faults: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    run_twice: int = 0
    repeated_reports: int = 0  # delivered again after a lost answer; without effect
    seconds: float = 0.0
    note: str = ""

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0


@dataclass
class Run:
    cases: list[Case] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def add(self, case: Case) -> Case:
        self.cases.append(case)
        return case

    def dump(self, path: Path) -> None:
        data = {
            "started": self.started,
            "finished": time.time(),
            "machine": f"{platform.node()} {platform.machine()}",
            "cases": [asdict(c) for c in self.cases],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))


# What follows this line in RELIABILITY.md is kept when the table is rendered again.
KEEP = "<!-- kept when the fault-suite figures above are rendered again -->"


def render(data: dict) -> str:
    cases = [Case(**c) for c in data["cases"]]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(data["finished"]))
    minutes = (data["finished"] - data["started"]) / 60
    total = {
        k: sum(c.faults.get(k, 0) for c in cases)
        for k in sorted({k for c in cases for k in c.faults})
    }
    lines = [
        "# Reliability",
        "",
        "The promise: every job the portal hands out is run and ended, or handed back,",
        "exactly once; never lost, never left `running`, never run twice at the same time.",
        "These are the figures of one full run of the fault suite (pytest marker `faults`)",
        f"on {when}, {minutes:.1f} minutes, reproduced with `{COMMAND}` (root; sandbox hosts).",
        "Each case asserts the promise on the portal stand-in's record of every job and on",
        "a ledger the jobs themselves write; a case that broke it would have failed the run.",
        "",
        "| case | jobs | faults injected | lost | run twice | reports repeated | seconds "
        "| jobs/s | note |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for c in cases:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(c.faults.items()) if v) or "-"
        lines.append(
            f"| {c.name} | {c.jobs} | {faults} | {c.lost} | {c.run_twice} | "
            f"{c.repeated_reports} | {c.seconds:.1f} | {c.jobs_per_second:.1f} "
            f"| {c.note} |"
        )
    lines += [
        "",
        f"Totals: {len(cases)} cases, {sum(c.jobs for c in cases)} jobs, "
        f"{sum(total.values())} faults injected ("
        + ", ".join(f"{k} {v}" for k, v in total.items() if v)
        + "), "
        f"jobs lost {sum(c.lost for c in cases)}, "
        f"jobs run twice {sum(c.run_twice for c in cases)}.",
        "",
        "*Lost*: a job the portal handed out that did not end (left `running`). *Run twice*:",
        "a job that completed more than once, or whose runs overlapped in time (from the",
        "jobs' own ledger). *Reports repeated*: a report the portal took twice because its",
        "answer was lost on the way back (connection reset, truncated answer); the poller",
        "cannot know it arrived, and `end_run` and `requeue` are idempotent, so a repeat",
        "changes nothing. A pop answer lost on its way back would leave its job `running`",
        "(the protocol has no lease and the poller never learnt the job's id); the fault",
        "proxy therefore spares answers that carry a job and breaks empty pops and reports.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testing.reliability")
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="write RELIABILITY.md from a run's JSON")
    r.add_argument("json")
    r.add_argument("--out", default="RELIABILITY.md")
    args = parser.parse_args(argv)
    text = render(json.loads(Path(args.json).read_text()))
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    if KEEP in old:  # sections of other runs (bench/guards.py) stay
        text += "\n" + KEEP + old.split(KEEP, 1)[1]
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

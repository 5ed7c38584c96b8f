"""The poller against the real LEAM portal beside the stand-in, both measured in this run.

The real portal is leam.luc on Plone 4.3 (testing/real_portal; built once, cached);
the stand-in answers as it does (`plone` mode: end_run, no success endpoint). Both
get the same jobs: bash noting $EPOCHREALTIME as its first and its last statement,
with no checkout (a blank repository). Only clocks both runs share are used: the
jobs' own stamps, and the moment the poller exits.

1. drain: N queued jobs, `leampoll --speed 20 --idle 1`, the first job's start to
   the poller's exit (the last report, then one empty pop);
2. per-job overhead: one job's last statement to the next job's first (the report,
   the next pop, the spawn);
3. an empty pop: one keep-alive request, the floor under both.
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from bench import Row, Section, suite
from bench.common import PASSWORD, USER, leampoll, log, median, ms, pct, ratio, secs
from bench.report import machine, now
from testing.portal_standin import PortalStandin
from testing.real_portal.build import build, use_shipped_luc
from testing.real_portal.portal import RealPortal

BLANK_REPO = " "  # no checkout; the real portal answers 500 to an unset one


@dataclass
class Plan:
    drain_jobs: int = 20
    drain_reps: int = 3
    overhead_jobs: int = 60
    pop_samples: int = 50

    @classmethod
    def quick(cls) -> Plan:
        return cls(drain_jobs=10, drain_reps=2, overhead_jobs=20, pop_samples=10)


def stamp_cmd(stamps: Path) -> str:
    script = f's=$EPOCHREALTIME; echo "$s $EPOCHREALTIME" >> {shlex.quote(str(stamps))}'
    return shlex.join(["bash", "-c", script])


def _stamps(path: Path) -> list[tuple[float, float]]:
    return [
        (float(a.replace(",", ".")), float(b.replace(",", ".")))
        for a, b in (line.split() for line in path.read_text().splitlines())
    ]


class Target:
    """One portal to measure, fresh for every run: the real one or the stand-in."""

    name = ""
    password = PASSWORD

    def fresh(self, n: int, cmd: str) -> object:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Real(Target):
    name = "real portal"

    def __init__(self) -> None:
        use_shipped_luc()
        self.portal = RealPortal(build(log=log))
        self.password = self.portal.credentials["poller"]

    def fresh(self, n: int, cmd: str) -> RealPortal:
        # A fresh database queues `scenario-1`: n - 1 more make n.
        self.portal.stop()
        self.portal.reset().start()
        self.portal.set_settings(BLANK_REPO, cmd)
        ids = [f"job-{k:03d}" for k in range(1, n)]
        for at in range(0, len(ids), 10):  # each request well within the fixture's timeout
            self.portal.queue(*ids[at : at + 10])
        return self.portal

    def close(self) -> None:
        self.portal.close()


class Standin(Target):
    name = "stand-in"

    def __init__(self) -> None:
        self.portal: PortalStandin | None = None

    def fresh(self, n: int, cmd: str) -> PortalStandin:
        self.close()
        self.portal = PortalStandin(USER, PASSWORD, mode="plone").start()
        for k in range(n):
            self.portal.queue(f"job-{k:03d}", cmd, repository=BLANK_REPO)
        return self.portal

    def close(self) -> None:
        if self.portal is not None:
            self.portal.stop()
            self.portal = None


def run_jobs(target: Target, n: int, wd: Path, tag: str) -> tuple[list[tuple[float, float]], float]:
    """Queue n stamp jobs on a fresh portal, drain them; (stamps, the poller's exit time)."""
    stamps = wd / f"{tag}.stamps"
    portal = target.fresh(n, stamp_cmd(stamps))
    with leampoll(portal, wd / tag, wd / f"{tag}.log", 20, 1, password=target.password) as proc:
        code = proc.wait(60 + n)
        exited = time.time()
    if code != 0:
        raise RuntimeError(f"bench: {tag} exited {code}; see {wd / tag}.log")
    done = _stamps(stamps)
    if len(done) != n:
        raise RuntimeError(f"bench: {tag}: {len(done)} of {n} jobs ran")
    return done, exited


def empty_pops(target: Target, samples: int) -> list[float]:
    portal = target.fresh(1, "true")
    out = []
    with requests.Session() as s:
        s.auth = (USER, target.password)
        s.get(portal.url + "/pop_queue", timeout=30)  # hands out the one job
        for _ in range(samples):
            before = time.perf_counter()
            answer = s.get(portal.url + "/pop_queue", timeout=30)
            out.append(time.perf_counter() - before)
            if answer.json() != {"status": "EMPTY"}:
                raise RuntimeError(f"bench: {target.name}: an empty pop answered {answer.text}")
    return out


def measure(target: Target, plan: Plan, wd: Path) -> dict:
    wd.mkdir(parents=True)
    walls = []
    for rep in range(plan.drain_reps):
        done, exited = run_jobs(target, plan.drain_jobs, wd, f"drain-{rep}")
        walls.append(exited - done[0][0])
    log(f"  {target.name}: drain of {plan.drain_jobs} jobs, median {secs(median(walls))}")
    done, _ = run_jobs(target, plan.overhead_jobs, wd, "overhead")
    gaps = [nxt[0] - cur[1] for cur, nxt in itertools.pairwise(done)]
    log(f"  {target.name}: job end -> next job start, median {ms(median(gaps))}")
    pops = empty_pops(target, plan.pop_samples)
    return {"drain": walls, "gaps": gaps, "pops": pops}


@suite("real_portal", "The poller against the real LEAM portal beside the stand-in")
def real_portal(options) -> Section:
    plan = Plan.quick() if options.quick else Plan()
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="leampoll-bench-real-"))
    real, standin = Real(), Standin()
    try:
        log("1/2 the real portal")
        r = measure(real, plan, tmp / "real")
        log("2/2 the stand-in")
        s = measure(standin, plan, tmp / "standin")
    except BaseException:
        log(f"failed; logs kept in {tmp}")
        raise
    finally:
        real.close()
        standin.close()
    shutil.rmtree(tmp, ignore_errors=True)
    n, m = plan.drain_jobs, plan.overhead_jobs
    rows = [
        Row(
            f"Backlog drain: {n} jobs, first job's start to the poller's exit "
            f"(median of {plan.drain_reps} runs)",
            secs(median(r["drain"])),
            secs(median(s["drain"])),
            ratio(median(s["drain"]), median(r["drain"])),
        ),
        Row(
            f"Per-job overhead: job end → next job start (report, pop, spawn), median of {m - 1}",
            ms(median(r["gaps"])),
            ms(median(s["gaps"])),
            ratio(median(s["gaps"]), median(r["gaps"])),
        ),
        Row(
            f"Per-job overhead: job end → next job start, p95 of {m - 1}",
            ms(pct(r["gaps"], 95)),
            ms(pct(s["gaps"], 95)),
            ratio(pct(s["gaps"], 95), pct(r["gaps"], 95)),
        ),
        Row(
            f"Empty pop, one keep-alive request, median of {plan.pop_samples}",
            ms(median(r["pops"])),
            ms(median(s["pops"])),
            ratio(median(s["pops"]), median(r["pops"])),
        ),
    ]
    header = (
        f"Machine: {machine()}.  \nDate: {now()}; this suite ran "
        f"{time.monotonic() - started:.0f} s (`python -m bench real_portal`); load average "
        f"(1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after.  \n"
        "Real portal: leam.luc 7a454dd on Plone 4.3.20 / Zope 2.13.30 / Python 2.7 "
        "(one Zope process, 2 threads, `testing/real_portal`); stand-in: "
        "`testing/portal_standin.py` in `plone` mode, in this process."
    )
    notes = (
        "Both columns are the same poller on the same jobs; the ratio is stand-in / real "
        "portal, so below 1x means the real portal is slower. The per-job gap holds the "
        "`end_run` of one job and the pop of the next: the difference between the columns "
        "is what Plone takes for those two requests (a catalog query and a reindex each). "
        "The stand-in is what the other suites measure the poller against; these figures "
        "say how far a real portal moves them."
    )
    return Section(
        "real_portal",
        "The poller against the real LEAM portal (`python -m bench real_portal`)",
        rows,
        header,
        notes,
        subjects=("real portal", "stand-in"),
    )

"""The poller suite: leampoll against the old loop design, both measured in this run.

1. backlog drain  2. per-job overhead  3. idle cost  4. pickup latency.
All traffic goes to portal stand-ins on 127.0.0.1 run inside this process;
every poller started here is bounded by `--idle` (and the baseline by
`--deadline`) and is ended by its pid at the end of its phase.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from bench import Row, Section, suite
from bench.common import (
    PASSWORD,
    USER,
    BenchPortal,
    Proc,
    baseline,
    leampoll,
    log,
    mb,
    median,
    ms,
    pct,
    ratio,
    secs,
    standin,
)
from bench.report import machine, now

EPSILON = 0.05  # s: what the pickup latency may exceed --speed by (one cycle's own work)
RSS_ALLOWANCE = 3e6  # bytes above the bare interpreter with requests and psutil


@dataclass
class Plan:
    """How much to measure; --quick shrinks it for trying the suite out."""

    drain_jobs: int = 20
    drain_speed: float = 20.0
    drain_reps: int = 9
    model_fit_speed: float = 1.0  # the baseline's real run with all the jobs
    model_check_jobs: int = 3  # the baseline's real run at drain_speed
    overhead_jobs: int = 200
    baseline_overhead_speed: float = 0.01
    floor_samples: int = 50
    idle_speed: float = 0.05
    idle_cycles: int = 300
    idle_settle: int = 20
    breakdown_calls: int = 100
    pickup_speed: float = 2.0
    pickup_samples: int = 30

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            drain_reps=2,
            model_fit_speed=0.2,
            model_check_jobs=2,
            drain_speed=5.0,
            overhead_jobs=30,
            floor_samples=10,
            idle_cycles=60,
            breakdown_calls=20,
            pickup_samples=4,
        )


@dataclass
class Results:
    plan: Plan
    drain: dict = field(default_factory=dict)
    overhead: dict = field(default_factory=dict)
    idle: dict = field(default_factory=dict)
    pickup: dict = field(default_factory=dict)


@suite("poller", "The poller: leampoll against the old loop design")
def poller(options) -> Section:
    plan = Plan.quick() if options.quick else Plan()
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="leampoll-bench-"))
    res = Results(plan)
    try:
        log("1/4 backlog drain")
        res.drain = measure_drain(plan, tmp / "drain")
        log("2/4 per-job overhead")
        res.overhead = measure_overhead(plan, tmp / "overhead")
        log("3/4 idle cost")
        res.idle = measure_idle(plan, tmp / "idle")
        log("4/4 pickup latency")
        res.pickup = measure_pickup(plan, tmp / "pickup")
    except BaseException:
        log(f"failed; logs kept in {tmp}")
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - started
    header = (
        f"Machine: {machine()}.  \nDate: {now()}; this suite ran {elapsed:.0f} s "
        f"(`python -m bench poller`); load average (1 min) {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after.  \nleampoll {_version()}, requests "
        f"{requests.__version__}, psutil {psutil.__version__}."
    )
    return Section("poller", "The poller (`python -m bench poller`)", rows(res), header, notes(res))


def _version() -> str:
    from leampoll import __version__

    return __version__


# -- 1. backlog drain ------------------------------------------------------------------


def drain_figures(portal: BenchPortal, ids: list[str]) -> dict:
    """First pop -> last report, and the per-job pop times, from the stand-in's records."""
    pops = [portal.popped_by[i].at for i in ids]
    reports = [portal.report_of(i) for i in ids]
    if any(r is None or r.kind != "success" for r in reports):
        raise RuntimeError("bench: a drain job was not reported as a success")
    return {
        "wall": reports[-1].at - pops[0],
        "pops": pops,
        "last_pop_to_report": reports[-1].at - pops[-1],
    }


def drain_run(make, n: int, wd: Path, speed: float, timeout: float, tag: str) -> dict:
    with standin() as portal:
        ids = [f"{tag}-{k:03d}" for k in range(n)]
        for job_id in ids:
            portal.queue(job_id, "true")
        with make(portal, wd / tag, wd / f"{tag}.log", speed) as proc:
            code = proc.wait(timeout)
        if code != 0:
            raise RuntimeError(f"bench: {tag} exited {code}; see {wd / tag}.log")
        return drain_figures(portal, ids)


def measure_drain(plan: Plan, wd: Path) -> dict:
    wd.mkdir(parents=True)
    n, speed = plan.drain_jobs, plan.drain_speed

    def ours(portal, workdir, logfile, s):
        return leampoll(portal, workdir, logfile, s, 1)

    def old(portal, workdir, logfile, s):
        return baseline(portal, workdir, logfile, s, 1, deadline=n * s + 60)

    walls = []
    for rep in range(plan.drain_reps):
        walls.append(drain_run(ours, n, wd, speed, 60, f"leampoll-{rep}")["wall"])
        log(f"  leampoll, {n} jobs at --speed {speed:g}: {secs(walls[-1])}")

    # The baseline for real: all jobs at a short interval (fits the model) ...
    fit_speed = plan.model_fit_speed
    fit = drain_run(old, n, wd, fit_speed, n * fit_speed + 60, "baseline-fit")
    gaps = [b - a for a, b in itertools.pairwise(fit["pops"])]
    per_job = sum(gaps) / len(gaps) - fit_speed  # all a job costs between pops, but the sleep
    last = fit["last_pop_to_report"]
    log(f"  baseline, {n} jobs at --speed {fit_speed:g}: {secs(fit['wall'])}")

    def model(jobs: int, s: float) -> float:
        return (jobs - 1) * (s + per_job) + last

    # ... and a few jobs at the benchmark's interval, to check the model against.
    m = plan.model_check_jobs
    check = drain_run(old, m, wd, speed, m * speed + 60, "baseline-check")
    log(
        f"  baseline, {m} jobs at --speed {speed:g}: {secs(check['wall'])} "
        f"(model {secs(model(m, speed))})"
    )
    return {
        "walls": walls,
        "ours": median(walls),
        "n": n,
        "speed": speed,
        "fit_speed": fit_speed,
        "fit_wall": fit["wall"],
        "fit_model": model(n, fit_speed),
        "per_job": per_job,
        "last": last,
        "check_jobs": m,
        "check_wall": check["wall"],
        "check_model": model(m, speed),
        "baseline": model(n, speed),
    }


# -- 2. per-job overhead ---------------------------------------------------------------

# The job: bash notes $EPOCHREALTIME (a builtin: no fork) as its first and its last
# statement, into a file of its own. The first is the job's start, the second its end.
_STAMP_SCRIPT = 's=$EPOCHREALTIME; echo "$s $EPOCHREALTIME" > {}'


def stamp_job(stamps: Path, job_id: str) -> str:
    script = _STAMP_SCRIPT.format(shlex.quote(str(stamps / job_id)))
    return shlex.join(["bash", "-c", script])


def _epoch(text: str) -> float:
    return float(text.replace(",", "."))  # $EPOCHREALTIME follows LC_NUMERIC


def overhead_run(make, n: int, wd: Path, tag: str) -> dict:
    stamps = wd / f"{tag}-stamps"
    stamps.mkdir(parents=True)
    with standin() as portal:
        ids = [f"{tag}-{k:03d}" for k in range(n)]
        for job_id in ids:
            portal.queue(job_id, stamp_job(stamps, job_id))
        with make(portal, wd / tag, wd / f"{tag}.log") as proc:
            code = proc.wait(120)
        if code != 0:
            raise RuntimeError(f"bench: {tag} exited {code}; see {wd / tag}.log")
        starts, ends = [], []
        for job_id in ids:
            report = portal.report_of(job_id)
            if report is None or report.kind != "success":
                raise RuntimeError(f"bench: {job_id} not reported as a success")
            start, end = map(_epoch, (stamps / job_id).read_text().split())
            starts.append(start - portal.popped_by[job_id].at)
            ends.append(report.at - end)
    return {"start": starts, "report": ends}


def spawn_floor(samples: int) -> list[float]:
    """time.time() just before Popen -> the same bash job's first statement."""
    out = []
    for _ in range(samples):
        before = time.time()
        run = subprocess.run(
            ["bash", "-c", "echo $EPOCHREALTIME"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        out.append(_epoch(run.stdout) - before)
    return out


def post_floor(samples: int) -> list[float]:
    """One keep-alive POST from a requests.Session: just before it -> the stand-in has it."""
    out = []
    with standin() as portal, requests.Session() as s:
        job = portal.queue("floor", "true")
        s.auth = (USER, PASSWORD)
        s.post(job["on_success"], data={"message": "warm-up"}, timeout=10)
        for _ in range(samples):
            before = time.time()
            s.post(job["on_success"], data={"message": "floor"}, timeout=10)
            out.append(portal.requests_of("success")[-1].at - before)
    return out


def measure_overhead(plan: Plan, wd: Path) -> dict:
    wd.mkdir(parents=True)
    n = plan.overhead_jobs

    def ours(portal, workdir, logfile):
        return leampoll(portal, workdir, logfile, 20, 1)

    def old(portal, workdir, logfile):
        return baseline(
            portal,
            workdir,
            logfile,
            plan.baseline_overhead_speed,
            1,
            deadline=n * (plan.baseline_overhead_speed + 1) + 60,
        )

    result = {"n": n, "ours": overhead_run(ours, n, wd, "leampoll")}
    log(
        f"  leampoll: pop->start median {ms(median(result['ours']['start']))}, "
        f"end->report median {ms(median(result['ours']['report']))}"
    )
    result["baseline"] = overhead_run(old, n, wd, "baseline")
    log(
        f"  baseline: pop->start median {ms(median(result['baseline']['start']))}, "
        f"end->report median {ms(median(result['baseline']['report']))}"
    )
    result["spawn_floor"] = median(spawn_floor(plan.floor_samples))
    result["post_floor"] = median(post_floor(plan.floor_samples))
    return result


# -- 3. idle cost ----------------------------------------------------------------------


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def idle_run(make, plan: Plan, wd: Path, tag: str) -> dict:
    with standin() as portal:
        bound = plan.idle_settle + plan.idle_cycles + 40  # it stops by itself after these
        with make(portal, wd / tag, wd / f"{tag}.log", bound) as proc:
            ps = psutil.Process(proc.pid)
            timeout = bound * plan.idle_speed * 4 + 30
            portal.wait(lambda p: p.pops() >= plan.idle_settle, timeout, f"{tag} to settle")
            cpu0, pops0, t0 = _cpu(ps), portal.pops(), time.monotonic()
            target = pops0 + plan.idle_cycles
            portal.wait(lambda p: p.pops() >= target, timeout, f"{tag}'s empty polls")
            cpu1, pops1, t1 = _cpu(ps), portal.pops(), time.monotonic()
            rss = ps.memory_info().rss
    cycles = pops1 - pops0
    return {
        "cycles": cycles,
        "cpu": (cpu1 - cpu0) / cycles,
        "cpu_total": cpu1 - cpu0,
        "wall": (t1 - t0) / cycles,
        "rss": rss,
    }


def settled_rss(wd: Path, imports: str) -> int:
    """RSS of a bare interpreter (this one) that imported these modules and sleeps."""
    code = f"import {imports}, time; time.sleep(30)"
    with Proc([sys.executable, "-c", code], wd / "rss.log") as proc:
        ps = psutil.Process(proc.pid)
        deadline = time.monotonic() + 20
        rss, last = 0, -1
        while time.monotonic() < deadline and rss != last:  # settled: two equal readings
            time.sleep(1.0)
            last, rss = rss, ps.memory_info().rss
        return rss


def measure_idle(plan: Plan, wd: Path) -> dict:
    wd.mkdir(parents=True)
    speed = plan.idle_speed

    def ours(portal, workdir, logfile, bound):
        return leampoll(portal, workdir, logfile, speed, bound)

    def old(portal, workdir, logfile, bound):
        return baseline(portal, workdir, logfile, speed, bound, deadline=bound * speed * 4 + 30)

    result = {"speed": speed, "ours": idle_run(ours, plan, wd, "leampoll")}
    log(
        f"  leampoll: {ms(result['ours']['cpu'], 2)} CPU per empty poll, "
        f"RSS {mb(result['ours']['rss'])}"
    )
    result["baseline"] = idle_run(old, plan, wd, "baseline")
    log(
        f"  baseline: {ms(result['baseline']['cpu'], 2)} CPU per empty poll, "
        f"RSS {mb(result['baseline']['rss'])}"
    )
    result["floor"] = settled_rss(wd, "requests, psutil")
    log(f"  floor: RSS {mb(result['floor'])}")
    # Where the idle poller's figures come from (for the notes, not goals).
    result["imports_rss"] = settled_rss(wd, "requests, psutil, leampoll.cli, leampoll.worker")
    result["parts"] = idle_breakdown(plan, wd / "parts")
    return result


def idle_breakdown(plan: Plan, wd: Path) -> dict[str, float]:
    """CPU of each part of leampoll's idle cycle, each called after an idle-length sleep.

    In this process, on leampoll's own objects; time.thread_time() counts only the
    calling thread, so the stand-in's server threads are not in it.
    """
    from leampoll.loading import load
    from leampoll.worker import Worker

    wd.mkdir(parents=True)
    out: dict[str, float] = {}
    with standin() as portal:
        config = load(
            ["--workdir", str(wd), "--speed", f"{plan.idle_speed:g}", portal.url],
            environ={"PORTAL_USER": USER, "PORTAL_PASSWORD": PASSWORD},
        )
        worker = Worker(config)
        worker.state.ensure()
        parts = {
            "guards (statvfs, psutil.virtual_memory)": worker.guards_hold,
            "pop (requests session GET, parse)": worker.portal.pop,
            "status file (status.json, written on a change or every 10 s)": worker.publish,
        }
        try:
            for name, part in parts.items():
                for _ in range(5):
                    part()
                total = 0.0
                for _ in range(plan.breakdown_calls):
                    time.sleep(plan.idle_speed * 0.95)
                    before = time.thread_time()
                    part()
                    total += time.thread_time() - before
                out[name] = total / plan.breakdown_calls
        finally:
            worker.portal.close()
    return out


# -- 4. pickup latency -----------------------------------------------------------------


def pickup_samples(portal: BenchPortal, n: int, speed: float, tag: str, seed: int) -> list:
    """Queue n jobs one by one, each at a random moment of an idle wait; their latencies.

    Idle means: the poller's first pop after the previous job answered EMPTY. The
    job is queued at a moment drawn uniformly from [that pop, that pop + --speed].
    """
    rng = random.Random(seed)
    latencies: list[float] = []
    after = 0  # pop_log index: look for an EMPTY pop from here on
    timeout = 3 * speed + 10
    for k in range(n):

        def empty_pop(p: BenchPortal, after: int = after):
            return next((r for r, job in p.pop_log[after:] if job is None), None)

        idle = portal.wait(empty_pop, timeout, f"{tag} to poll an empty queue")
        time.sleep(max(0.0, idle.at + rng.uniform(0, speed) - time.time()))
        job_id = f"{tag}-{k:03d}"
        portal.queue(job_id, "true")
        portal.wait(lambda p, j=job_id: p.report_of(j), timeout, f"the report of {job_id}")
        latencies.append(portal.popped_by[job_id].at - portal.queued_at[job_id])
        with portal.lock:
            after = next(i for i, (_, job) in enumerate(portal.pop_log) if job == job_id) + 1
    return latencies


def idle_intervals(portal: BenchPortal) -> list[float]:
    """Time from each EMPTY pop to the poller's next pop: its idle wait, as seen by the portal."""
    with portal.lock:
        pops = sorted(portal.pop_log, key=lambda entry: entry[0].at)
    return [b.at - a.at for (a, job), (b, _) in itertools.pairwise(pops) if job is None]


def pickup_run(make, plan: Plan, wd: Path, tag: str, seed: int) -> dict:
    with standin() as portal:
        with make(portal, wd / tag, wd / f"{tag}.log") as proc:
            latencies = pickup_samples(portal, plan.pickup_samples, plan.pickup_speed, tag, seed)
            proc.stop()
        return {"latency": latencies, "intervals": idle_intervals(portal)}


def measure_pickup(plan: Plan, wd: Path) -> dict:
    wd.mkdir(parents=True)
    speed = plan.pickup_speed

    def ours(portal, workdir, logfile):
        return leampoll(portal, workdir, logfile, speed, 10)

    def old(portal, workdir, logfile):
        return baseline(
            portal, workdir, logfile, speed, 10, deadline=plan.pickup_samples * speed * 3 + 60
        )

    # Both pollers at once, each on its own stand-in: they are idle nearly all the time.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        mine = pool.submit(pickup_run, ours, plan, wd, "leampoll", 1)
        theirs = pool.submit(pickup_run, old, plan, wd, "baseline", 2)
        result = {"speed": speed, "ours": mine.result(), "baseline": theirs.result()}
    for who in ("ours", "baseline"):
        lat = result[who]["latency"]
        log(f"  {who}: pickup median {secs(median(lat))}, max {secs(max(lat))}")
    return result


# -- the table and the notes -------------------------------------------------------------


def _dist(values: list[float], fmt=secs) -> str:
    return (
        f"min {fmt(min(values))}, median {fmt(median(values))}, "
        f"p95 {fmt(pct(values, 95))}, max {fmt(max(values))}"
    )


def rows(res: Results) -> list[Row]:
    d, o, i, p = res.drain, res.overhead, res.idle, res.pickup
    out: list[Row] = []
    drain_ratio = d["baseline"] / d["ours"]
    out.append(
        Row(
            f"Backlog drain: {d['n']} jobs at --speed {d['speed']:g}, first pop to last report "
            f"(leampoll: median of {len(d['walls'])} runs; baseline: model, checked below)",
            secs(d["ours"]),
            secs(d["baseline"]),
            ratio(d["baseline"], d["ours"]),
            "\u2264 0.2 s and \u2265 1,900\u00d7",
            d["ours"] <= 0.2 and drain_ratio >= 1900,
        )
    )
    check_err = abs(d["check_wall"] - d["check_model"]) / d["check_wall"]
    out.append(
        Row(
            f"Baseline model check: {d['check_jobs']} jobs at --speed {d['speed']:g}, "
            f"real run vs model",
            "-",
            f"{secs(d['check_wall'])} measured, {secs(d['check_model'])} model "
            f"({check_err:.2%} off)",
            "-",
            "model within 1 %",
            check_err <= 0.01,
        )
    )
    out.append(
        Row(
            f"Baseline model fit: {d['n']} jobs at --speed {d['fit_speed']:g}, real run",
            "-",
            f"{secs(d['fit_wall'])} measured",
            "-",
            "-",
            None,
        )
    )

    n = o["n"]
    for key, what in (
        ("start", "pop \u2192 job start"),
        ("report", "job end \u2192 report delivered"),
    ):
        ours, old = o["ours"][key], o["baseline"][key]
        out.append(
            Row(
                f"Per-job overhead: {what}, median of {n} jobs",
                ms(median(ours), 2),
                ms(median(old), 2),
                ratio(median(old), median(ours)),
                "\u2264 10 ms",
                median(ours) <= 0.010,
            )
        )
        out.append(
            Row(
                f"Per-job overhead: {what}, p95 of {n} jobs",
                ms(pct(ours, 95), 2),
                ms(pct(old, 95), 2),
                ratio(pct(old, 95), pct(ours, 95)),
            )
        )

    ours, old = i["ours"], i["baseline"]
    out.append(
        Row(
            f"Idle cost: CPU per empty poll cycle ({ours['cycles']} cycles at "
            f"--speed {i['speed']:g})",
            ms(ours["cpu"], 2),
            ms(old["cpu"], 2),
            ratio(old["cpu"], ours["cpu"]),
            "\u2264 2 ms",
            ours["cpu"] <= 0.002,
        )
    )
    above = ours["rss"] - i["floor"]
    out.append(
        Row(
            "Idle cost: RSS of the idle poller (above the floor)",
            f"{mb(ours['rss'])} (+{above / 1e6:.1f} MB)",
            f"{mb(old['rss'])} ({(old['rss'] - i['floor']) / 1e6:+.1f} MB)",
            ratio(old["rss"], ours["rss"]),
            "\u2264 floor + 3 MB",
            above <= RSS_ALLOWANCE,
        )
    )
    out.append(
        Row("Idle cost: RSS floor, bare `python -c 'import requests, psutil'`", mb(i["floor"]))
    )

    speed = p["speed"]
    ours, old = p["ours"]["latency"], p["baseline"]["latency"]
    for name, q in (("min", 0), ("median", 50), ("p95", 95), ("max", 100)):
        a = min(ours) if q == 0 else median(ours) if q == 50 else pct(ours, q)
        b = min(old) if q == 0 else median(old) if q == 50 else pct(old, q)
        met = a <= speed + EPSILON if name == "max" else None
        goal = (
            f"\u2264 {speed + EPSILON:g} s (--speed + {EPSILON * 1000:.0f} ms)"
            if name == "max"
            else "-"
        )
        out.append(
            Row(
                f"Pickup latency at --speed {speed:g}, {name} of {len(ours)} (baseline {len(old)})",
                secs(a),
                secs(b),
                ratio(b, a),
                goal,
                met,
            )
        )
    iv, biv = p["ours"]["intervals"], p["baseline"]["intervals"]
    lo, hi = min(iv) / speed, max(iv) / speed
    out.append(
        Row(
            f"Idle wait after an empty poll / --speed, min-max over {len(iv)} waits "
            f"(baseline {len(biv)})",
            f"{lo:.3f}-{hi:.3f}",
            f"{min(biv) / speed:.3f}-{max(biv) / speed:.3f}",
            "-",
            f"0.90-1.00 (+{EPSILON * 1000:.0f} ms)",
            lo >= 0.9 and max(iv) <= speed + EPSILON,
        )
    )
    return out


def _overhead_table(o: dict) -> str:
    lines = ["| | median | p95 | max |", "|---|---|---|---|"]
    for key, what in (("start", "pop to job start"), ("report", "job end to report")):
        for who, name in (("ours", "leampoll"), ("baseline", "baseline")):
            v = o[who][key]
            lines.append(
                f"| {name}, {what} | {ms(median(v), 2)} | {ms(pct(v, 95), 2)} | {ms(max(v), 2)} |"
            )
    return "\n".join(lines)


def _parts_table(parts: dict[str, float]) -> str:
    lines = ["| part of the idle cycle | CPU per call |", "|---|---|"]
    lines += [f"| {name} | {ms(v, 2)} |" for name, v in parts.items()]
    lines.append(f"| sum | {ms(sum(parts.values()), 2)} |")
    return "\n".join(lines)


def notes(res: Results) -> str:
    d, o, i, p, plan = res.drain, res.overhead, res.idle, res.pickup, res.plan
    iv, biv = p["ours"]["intervals"], p["baseline"]["intervals"]
    return f"""
**The baseline** is `bench/baseline_poller.py`: the old poller's loop design modelled
for this benchmark (not its code): a plain `requests.get` per poll without a session
(a new TCP connection each time), the job in a subprocess, a plain `requests.post` of
the outcome, and a fixed `time.sleep(speed)` after every job and after every empty
poll. Both pollers run as separate processes with the same interpreter against their
own portal stand-in (`testing.portal_standin`, real HTTP on 127.0.0.1) inside the bench
process. All times come from the stand-in's records (`Received.at`, `time.time()` on
arrival of each request) and, for job start and end, from the job itself.

### 1. Backlog drain

{d["n"]} trivial jobs (`true`) are queued, then the poller starts (`--speed
{d["speed"]:g} --idle 1`); the figure is the first pop's arrival to the last report's
arrival. leampoll, {len(d["walls"])} runs: {", ".join(secs(w) for w in d["walls"])}.

The baseline would need about {secs(d["baseline"])} at `--speed {d["speed"]:g}`, too long
for this run, so its figure is computed from a model, and the model is checked against
real runs of the same baseline in this run:

- model: T(N, s) = (N - 1) x (s + a) + b, with a = the mean time from one pop to the
  next minus the sleep (running the job, reporting, a new connection) and b = the last
  job's pop to its report;
- fitted on a real run of all {d["n"]} jobs at `--speed {d["fit_speed"]:g}`
  (measured {secs(d["fit_wall"])}): a = {ms(d["per_job"], 2)}, b = {ms(d["last"], 2)};
- checked on a real run of {d["check_jobs"]} jobs at `--speed {d["speed"]:g}`: measured
  {secs(d["check_wall"])}, the model says {secs(d["check_model"])};
- so {d["n"]} jobs at `--speed {d["speed"]:g}`: {d["n"] - 1} x ({d["speed"]:g} s +
  {ms(d["per_job"], 2)}) + {ms(d["last"], 2)} = **{secs(d["baseline"])}** (extrapolated, not
  measured).

### 2. Per-job overhead

{o["n"]} jobs queued at once, run back to back (leampoll `--speed 20 --idle 1`, the
baseline `--speed {plan.baseline_overhead_speed:g}`: its sleep comes after the report,
so it is in neither figure). Each job is `bash -c` with a script whose first statement
notes `$EPOCHREALTIME` (a bash builtin: no fork, microseconds) and whose last notes it
again, into a file of its own: the job's start and end by the same clock
(CLOCK_REALTIME) as the stand-in's `time.time()`.

- *pop to job start*: the pop request's arrival at the stand-in to the job's first
  statement. It includes the answer, the poller's bookkeeping before the start, fork/exec
  and bash's own start-up. That last part is a floor no poller can go under: from a
  `time.time()` just before `subprocess.run` to the same first statement takes
  {ms(o["spawn_floor"], 2)} (median of {plan.floor_samples}, from the bench process).
- *job end to report delivered*: the job's last statement to the report's arrival at the
  stand-in: bash's exit, the poller noticing it, its bookkeeping, the POST. For scale:
  one keep-alive `requests.Session` POST takes {ms(o["post_floor"], 2)} from just before
  the call to its arrival (median of {plan.floor_samples}).

{_overhead_table(o)}

### 3. Idle cost

Each poller runs against an empty queue at `--speed {i["speed"]:g}`; after
{plan.idle_settle} polls to settle, its own CPU counters (`psutil.Process(pid).cpu_times()`,
user + system, children not counted: an idle poller has none) are read before and after
{i["ours"]["cycles"]} cycles, counted as the pops the stand-in received; a cycle is the
guards, the pop and the status file for leampoll, the pop for the baseline. leampoll
used {ms(i["ours"]["cpu_total"], 0)} CPU in {i["ours"]["cycles"]} cycles
({ms(i["ours"]["wall"], 1)} wall per cycle); the baseline {ms(i["baseline"]["cpu_total"], 0)}
in {i["baseline"]["cycles"]} ({ms(i["baseline"]["wall"], 1)} wall per cycle). The counters
tick in 10 ms steps, under 5 % of either total.

RSS (`memory_info().rss`) is read at the end of those cycles. The floor is a bare
`{Path(sys.executable).name} -c 'import requests, psutil, time; time.sleep(30)'` started with
the same interpreter in this run and read once its RSS stopped changing:
{mb(i["floor"])}. MB here are 10^6 bytes. The same interpreter importing what leampoll
imports (`leampoll.cli`, `leampoll.worker`) besides, without running anything:
{mb(i["imports_rss"])} (+{(i["imports_rss"] - i["floor"]) / 1e6:.1f} MB); the running idle
poller: {mb(i["ours"]["rss"])}.

Where leampoll's idle CPU goes: each part of the cycle called {plan.breakdown_calls} times
on leampoll's own objects inside the bench process, each call after a sleep as long as
the idle wait (so with caches as cold as in the poller), CPU of the calling thread only:

{_parts_table(i["parts"])}

status.json used to be rewritten on every cycle (0.3-0.7 ms, the largest part after
the pop); it is now written at once when what a reader sees changes (state, job,
outcome, counts, guard hold) and otherwise at most every 10 s, which cut the idle CPU
per cycle by about a quarter.

### 4. Pickup latency

Both pollers at `--speed {p["speed"]:g}` at the same time, each on its own stand-in.
{plan.pickup_samples} jobs (`true`) each, one at a time: after the poller's first pop after
the previous job answered EMPTY (so it is idle), the job is queued at a moment drawn
uniformly from the next {p["speed"]:g} s; the latency is the queueing (`time.time()` just
before the job is put in the queue) to the arrival of the pop that took it.

- leampoll: {_dist(p["ours"]["latency"])}
- baseline: {_dist(p["baseline"]["latency"])}

leampoll sleeps 90-100 % of `--speed` after an empty poll (jitter, so pollers of one portal
do not poll in step) and never longer; the baseline sleeps exactly `--speed`. The waits as
the portal sees them (an EMPTY pop to the next pop, so including one cycle's work), divided
by `--speed`:

- leampoll, {len(iv)} waits: {_dist([x / p["speed"] for x in iv], lambda v: f"{v:.3f}")}
- baseline, {len(biv)} waits: {_dist([x / p["speed"] for x in biv], lambda v: f"{v:.3f}")}
"""

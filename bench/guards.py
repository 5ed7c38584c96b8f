"""`python -m bench.guards`: jobs lost for lack of resources, static guards against learned ones.

On this machine (root): a 512 MB tmpfs as the job filesystem and two real
pollers, one per project, on portal stand-ins; each project gets ten jobs
that write 300 MB. Then the same with memory: the pollers in a memory cgroup
with 450 MB of room above what they use, jobs that take 300 MB. Each case
runs with static guards (100 MB floors, each poller alone) and with learned
guards sharing the host's ledger, and prints, side by side, how many jobs
died of a full disk or of the OOM killer, how many failed in all, and the
time until all twenty had ended.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from leampoll.usage import history_path, read_history
from testing.pollers import LEAMPOLL, poller_flags
from testing.portal_standin import PortalStandin
from testing.resource_jobs import disk_job, memory_job

ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "poller", "bench-Pa55word"
MIB = 2**20
CGROUP = Path("/sys/fs/cgroup/memory")
LOGS = Path(tempfile.gettempdir())  # the pollers' logs; --logs sets it


@dataclass
class Result:
    case: str
    mode: str
    jobs: int
    short: int  # died of a full disk or the OOM killer
    failed: int
    seconds: float


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def memory_cgroup(name: str) -> Iterator[Path]:
    """A cgroup v1 memory group of our own; the limit is set once the pollers are in."""
    group = CGROUP / name
    group.mkdir()
    try:
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (group / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.1)
        group.rmdir()


def run_case(
    case: str, mode: str, base: Path, jobs: int, cmd: str, group: Path | None, room: int
) -> Result:
    workdirs = {p: base / f"{case}-{mode}-{p}" for p in ("a", "b")}
    portals = {p: PortalStandin(USER, PASSWORD, base_path=f"/{p}").start() for p in workdirs}
    env = {
        **os.environ,
        "PORTAL_USER": USER,
        "PORTAL_PASSWORD": PASSWORD,
        "PYTHONPATH": str(ROOT),
    }
    ledger = base.parent / f"ledger-{case}-{mode}.json"
    pollers = []
    try:
        for p, wd in workdirs.items():
            wd.mkdir()
            argv = [*LEAMPOLL, *poller_flags(wd), "--keep-failed", "0", "--guard-mode", mode]
            # The guards under test at 100M, over poller_flags' (the last flag wins).
            argv += ["--min-free-disk", "100M", "--min-free-mem", "100M", portals[p].url]
            argv += ["--ledger", str(ledger) if mode == "learned" else "off"]
            pollers.append(
                subprocess.Popen(
                    argv,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=open(LOGS / f"{case}-{mode}-{p}.log", "wb"),  # noqa: SIM115
                    preexec_fn=(lambda: _join(group)) if group else None,
                )
            )
        if group is not None:
            time.sleep(2)  # the pollers started: their own memory is not the jobs'
            usage = int((group / "memory.usage_in_bytes").read_text())
            (group / "memory.limit_in_bytes").write_text(str(usage + room))
        started = time.monotonic()
        for i in range(jobs):
            for p, portal in portals.items():
                portal.queue(f"{p}{i}", cmd)
        ids = {p: [f"{p}{i}" for i in range(jobs)] for p in portals}
        deadline = started + 60 + 30 * jobs
        while not all(
            portals[p].status.get(j) in ("complete", "error") for p in ids for j in ids[p]
        ):
            if time.monotonic() > deadline:
                states = [portals[p].status for p in ids]
                raise TimeoutError(f"{case}/{mode}: jobs not ended: {states}")
            time.sleep(0.2)
        seconds = time.monotonic() - started
        failed = sum(portals[p].outcome(j) != "success" for p in ids for j in ids[p])
        short = sum(
            u.short_of_resources
            for wd in workdirs.values()
            for u in read_history(history_path(wd / ".leampoll"))
        )
        return Result(case, mode, 2 * jobs, short, failed, seconds)
    finally:
        for proc in pollers:
            proc.send_signal(signal.SIGTERM)
        for proc in pollers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for portal in portals.values():
            portal.stop()


def _keep(logs: Path | None, *dirs: str | Path) -> None:
    """Copy the pollers' logs and the projects' histories for a closer look."""
    if logs is None:
        return
    logs.mkdir(parents=True, exist_ok=True)
    for d in dirs:
        for f in Path(d).glob("*/.leampoll/history.jsonl"):
            (logs / f"{f.parent.parent.name}.history.jsonl").write_bytes(f.read_bytes())


def _join(group: Path) -> None:
    (group / "cgroup.procs").write_text(str(os.getpid()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.guards", description=__doc__)
    parser.add_argument("--jobs", type=int, default=10, help="jobs per project (default 10)")
    parser.add_argument("--cases", default="disk,memory", help="disk, memory or both (default)")
    parser.add_argument("--logs", type=Path, help="keep the pollers' logs and histories here")
    args = parser.parse_args(argv)
    global LOGS
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
        LOGS = args.logs
    if os.geteuid() != 0:
        parser.error("needs root (a tmpfs, a memory cgroup)")
    results = []
    with tempfile.TemporaryDirectory(prefix="leam-bench-guards-") as tmp:
        if "disk" in args.cases:
            with tmpfs(Path(tmp) / "jobfs", "512M") as fs:
                for mode in ("static", "learned"):
                    results.append(run_case("disk", mode, fs, args.jobs, disk_job(300), None, 0))
                    _keep(args.logs, fs, tmp)
        if CGROUP.is_dir() and "memory" in args.cases:
            work = Path(tmp) / "memwork"
            work.mkdir()
            for mode in ("static", "learned"):
                with memory_cgroup(f"leam-bench-guards-{os.getpid()}-{mode}") as group:
                    results.append(
                        run_case("memory", mode, work, args.jobs, memory_job(300), group, 450 * MIB)
                    )
            _keep(args.logs, work, tmp)
    print("| case | guards | jobs | died of a full disk / OOM | failed | all ended after |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        what = "static, 100 MB, alone" if r.mode == "static" else "learned, shared ledger"
        print(f"| {r.case} | {what} | {r.jobs} | {r.short} | {r.failed} | {r.seconds:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

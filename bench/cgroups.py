"""`python -m bench cgroups`: the cost of a cgroup per job, beside process groups, one run.

One Debian 12 systemd sandbox host converged by site.yml (helper, sudoers
line, leam-jobs.slice). Its Supervisor program is stopped, and the same
leampoll build runs there as the pollers' account, by turns with
`--job-cgroups auto` (a scope per job, made through the root helper) and
`--job-cgroups off` (process groups), blocks of jobs alternating so both see
the same machine. Each job notes the time it starts and ends; the stand-in
notes when it was popped and when its report came: pop to start and end to
report, per mode.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
import time
from pathlib import Path

from bench import Row, Section, suite
from bench.common import PASSWORD, USER, log, median, ms, pct, standin
from bench.provisioning import STATE_DIR
from bench.report import machine, now
from testing.fleet import Inventory, leam_project
from testing.sandbox import Host, Sandbox

PROJECT = "cgb"
MODES = {"cgroup": "auto", "process group": "off"}
BLOCKS, PER_BLOCK = 4, 10  # per mode: BLOCKS x PER_BLOCK jobs, alternating
STAMP = "date +%s.%N > /var/tmp/cgb/$LEAM_JOB_ID"
JOB = f"sh -c '{STAMP}.start; {STAMP}.end'"
NOTES = """\
Pop to start: from the pop request reaching the portal to the job's first
command (its `date`); end to report: from its last command to the report
reaching the portal. The cgroup path adds, before the job starts, a keeper
process and two calls of the root helper through `sudo` (make the scope,
attach the stage, each waiting until the kernel shows the process in it),
and after it ends the reading of the cgroup's counters, the keeper's end, a
`systemctl is-active` and here a third helper call that stops the scope:
systemd does not collect an empty scope by itself on cgroup v1 inside a
container (no release agent); on a server it does, and that call is skipped.
Each helper call (sudo, then a short Python run and a D-Bus call) costs about
0.3-0.5 s here: the cost of a cgroup per job is those calls, about a second
per job, against jobs that run minutes to hours. Both modes also walk the run
directory and read their usage figures at the end. Times on the shared 2-core
machine, the sandbox-host tests of the cgroups running beside it.
"""


def _converge(sandbox: Sandbox, work: Path, url: str) -> None:
    # The project polls at its default speed: the bench measures pop to start.
    project = leam_project(PROJECT, url, PASSWORD, user=USER)
    del project["speed"]
    inventory = Inventory(sandbox, work / "inventory.yml", {"bench-cg": [project]}, log_dir=work)
    inventory.write()
    out = inventory.play()
    if out.returncode != 0:
        raise RuntimeError(f"site.yml failed; output in {work}")


def _poller(host: Host, url: str, mode: str, jobs: int) -> None:
    """Run leampoll on the host until it finds the queue empty twice."""
    cmd = (
        f"cd /mnt/jobdir/{PROJECT} && sudo -u leam env PORTAL_USER={USER} "
        "PORTAL_PASSWORD_FILE=/var/tmp/bench.pw "
        f"leampoll --workdir /mnt/jobdir/{PROJECT} --job-cgroups {mode} --speed 0.2 --idle 2 "
        f"--min-free-disk 10M --min-free-mem 10M --allow-insecure-http {shlex.quote(url)}"
    )
    out = host.ssh(cmd, timeout=60 + 10 * jobs)
    if out.returncode != 0:
        raise RuntimeError(f"poller on the host failed: {out.stderr[-2000:]}")


@suite("cgroups", "A cgroup per job against process groups")
def cgroups_suite(options) -> Section:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="leampoll-bench-cg-"))
    sandbox = Sandbox(STATE_DIR, log=lambda m: None)
    blocks = 1 if options.quick else BLOCKS
    times: dict[str, tuple[list[float], list[float]]] = {m: ([], []) for m in MODES}
    try:
        sandbox.down_all()
        with standin() as portal, sandbox.hosts_up(["bench-cg"]) as hosts:
            host = hosts[0]
            url = portal.url
            log("converge one host (cgroups set up by the role)")
            _converge(sandbox, work, url)
            host.ssh(
                f"supervisorctl stop leampoll-{PROJECT}; mkdir -p /var/tmp/cgb; "
                f"chown leam /var/tmp/cgb; printf %s {shlex.quote(PASSWORD)} > /var/tmp/bench.pw; "
                "chown leam /var/tmp/bench.pw; chmod 600 /var/tmp/bench.pw",
                check=True,
            )
            n = 0
            for block in range(blocks):
                for label, mode in MODES.items():
                    ids = [f"{mode}-{block}-{i}" for i in range(PER_BLOCK)]
                    for job in ids:
                        portal.queue(job, JOB)
                    log(f"block {block + 1}/{blocks}: {PER_BLOCK} jobs, {label}")
                    _poller(host, url, mode, PER_BLOCK)
                    stamps = host.ssh("cd /var/tmp/cgb && grep . *", check=True).stdout
                    at = {
                        name: float(value)
                        for name, value in (line.split(":", 1) for line in stamps.split())
                    }
                    for job in ids:
                        report = portal.report_of(job)
                        if report is None:
                            raise RuntimeError(f"{job} was not reported")
                        times[label][0].append(at[f"{job}.start"] - portal.popped_by[job].at)
                        times[label][1].append(report.at - at[f"{job}.end"])
                    host.ssh("rm -f /var/tmp/cgb/*", check=True)
                    n += len(ids)
            sandbox.down_all()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cg, pg = times["cgroup"], times["process group"]
    rows = []
    for i, what in enumerate(("pop to start", "end to report")):
        for q, name in ((50, "median"), (90, "p90")):
            ours, base = pct(cg[i], q), pct(pg[i], q)
            rows.append(
                Row(
                    f"{what}, {name}",
                    ms(ours),
                    ms(base),
                    f"+{ms(ours - base)}",
                )
            )
    elapsed = time.monotonic() - started
    header = (
        f"Machine: {machine()}.  \nDate: {now()}; this suite ran {elapsed:.0f} s "
        f"(`python -m bench cgroups`); {len(cg[0])} jobs per mode in {blocks} alternating "
        f"blocks; median of all: pop to start {ms(median(cg[0]))} vs {ms(median(pg[0]))}.  \n"
        "Sandbox host: Debian 12, systemd 252, cgroup v1 (this machine's kernel)."
    )
    return Section(
        "cgroups",
        "A cgroup per job (`python -m bench cgroups`)",
        rows,
        header,
        NOTES,
        subjects=("cgroup per job", "process group"),
    )

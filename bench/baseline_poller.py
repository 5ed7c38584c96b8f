"""The baseline: the old poller's loop design, modelled for the benchmarks.

Not the old code (see ../../shared/reference/portal-protocol.md for the design):
one plain `requests.get` per poll without a session (a new connection each
time), the job in a subprocess in its run directory with its output in
`<rundir>.log`, and a fixed `time.sleep(speed)` after every job and after
every empty poll, so a backlog of N jobs drains at one job per interval. The
old poller never reported; this one POSTs the outcome (plain `requests.post`,
no session) so both pollers do the same work per job and the portal's records
time both the same way. The old fixed sleeps after errors (60 s after a
connection error, 600 s after an HTTP error status) are kept; no error
happens in the benchmarks.

Two things only bound it, as every benchmark process must stop by itself, and
neither changes a figure: `--idle N` (exit after N empty polls in a row; the
old poller parsed that flag but ignored it) and `--deadline` (exit after that
many seconds whatever happens; every sleep is cut to it).

    PORTAL_USER=... PORTAL_PASSWORD=... python bench/baseline_poller.py \\
        --speed 20 --idle 1 --workdir DIR http://127.0.0.1:8780/portal
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import requests


def rundir_name(job_id: str) -> str:
    name = re.sub(r"[-\s]+", "_", job_id)
    name = re.sub(r"[^A-Za-z0-9_]", "", name)
    return re.sub(r"^[^A-Za-z]+", "", name) or "job"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("site")
    p.add_argument("-s", "--speed", type=float, default=20.0)
    p.add_argument("-i", "--idle", type=int, default=0)
    p.add_argument("-q", "--popq", default="/pop_queue")
    p.add_argument("--workdir", default=".")
    p.add_argument(
        "--deadline",
        type=float,
        default=900.0,
        help="exit after this many seconds (a bound for the benchmarks)",
    )
    args = p.parse_args(argv)
    user, password = os.environ["PORTAL_USER"], os.environ["PORTAL_PASSWORD"]
    auth = (user, password)
    url = args.site.rstrip("/") + args.popq
    end = time.monotonic() + args.deadline

    def pause(seconds: float) -> None:
        time.sleep(max(0.0, min(seconds, end - time.monotonic())))

    empties = 0
    while time.monotonic() < end:
        try:
            r = requests.get(url, auth=auth, timeout=60)
        except requests.ConnectionError:
            pause(60)
            continue
        if r.status_code != 200:
            pause(600)
            continue
        job = r.json()
        if job.get("status") != "OK":
            empties += 1
            if args.idle and empties >= args.idle:
                return 0
            pause(args.speed)
            continue
        empties = 0
        rundir = os.path.join(args.workdir, rundir_name(job["id"]))
        shutil.rmtree(rundir, ignore_errors=True)
        os.mkdir(rundir)
        with open(rundir + ".log", "wb") as log:
            code = subprocess.call(
                shlex.split(job["cmdline"]), cwd=rundir, stdout=log, stderr=subprocess.STDOUT
            )
        target = job["on_success"] if code == 0 else job["on_error"]
        requests.post(
            target, data={"message": f"job {job['id']} exit code {code}"}, auth=auth, timeout=60
        )
        pause(args.speed)
    return 0


if __name__ == "__main__":
    sys.exit(main())

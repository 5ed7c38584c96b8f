"""`leampoll status`: what every poller on this host is doing, at a glance.

It reads each project's `.leampoll/status.json` (replaced atomically by the
poller, so reading never blocks or confuses it), asks Supervisor for the
program's state, and measures the workdir's filesystem and memory itself.
Without workdirs it shows the projects the provisioning deployed, listed in
/etc/leampoll/projects.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import psutil

from leampoll import supervisor
from leampoll.state import Guard, State, read_json
from leampoll.units import human

PROJECTS_FILE = Path(os.environ.get("LEAMPOLL_PROJECTS_FILE", "/etc/leampoll/projects.json"))
COLUMNS = (
    "project",
    "supervisor",
    "version",
    "uptime",
    "job",
    "last",
    "ok/failed",
    "guard",
    "need",
    "portal",
    "disk",
    "inodes",
    "memory",
    "log",
)
# Failed pops are shown in the table once they last this long (a blip is not news).
PORTAL_ERROR_AFTER = 180.0


def _ago(seconds: float | None) -> str:
    """A duration the way a person reads it: 45s, 12m, 3h, 2d."""
    if seconds is None:
        return "-"
    seconds = int(max(0, seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def supervisor_states() -> dict[str, str]:
    """Program name -> Supervisor state; empty when supervisorctl is not usable here."""
    return supervisor.states()


def deployed() -> list[dict]:
    data = read_json(PROJECTS_FILE)
    if not isinstance(data, list):
        return []
    return [p for p in data if isinstance(p, dict) and "workdir" in p]


def row(project: dict, programs: dict[str, str], now: float) -> dict:
    """One project's facts, as plain data (the --json form)."""
    workdir = Path(project["workdir"])
    status = State(workdir / ".leampoll").load_status()
    name = project.get("name") or status.project or workdir.name
    program = project.get("program", f"leampoll-{name}")
    alive = bool(status.pid) and psutil.pid_exists(int(status.pid or 0))
    current = status.current if alive else None
    last = status.last
    guard = status.guard if alive else Guard()
    trouble = status.portal_error if alive else None
    disk: dict[str, int] | None
    inodes: dict[str, int] | None
    try:
        st = os.statvfs(workdir)
        disk = {"free": st.f_bavail * st.f_frsize, "total": st.f_blocks * st.f_frsize}
        inodes = {"free": st.f_favail, "total": st.f_files}
    except OSError:
        disk = inodes = None
    # The program, not a job: a job that fails is reported and the poller goes on.
    failing = programs.get(program) in ("FATAL", "BACKOFF") or (alive and status.state == "backoff")
    log = project.get("log", f"/var/log/supervisor/{program}.log")
    if last and last.outcome == "error" and last.id and programs.get(program) != "FATAL":
        log = str(workdir / f"{_rundir_name(last.id)}.log")
    return {
        "project": name,
        "program": program,
        "supervisor": programs.get(program, "unknown"),
        "version": status.version,
        "pid": status.pid if alive else None,
        "uptime": now - status.started_at if alive and status.started_at else None,
        "state": status.state if alive else "stopped",
        "job": {
            "id": current.id,
            "running_for": now - current.started_at,
            "usage": status.usage,  # so far: memory now and peaks (leampoll.accounting)
        }
        if current
        else None,
        "jobs_mode": status.jobs if alive else None,
        "last": {**last.to_json(), "ago": now - last.at} if last and last.at else None,
        "succeeded": status.session.get("success", 0),
        "failed": status.session.get("error", 0),
        "totals": status.counts,
        "guard": {
            "holding": guard.holding,
            "readings": guard.readings,
            "needs": guard.needs,
            "ledger": guard.ledger,
        },
        "auth": asdict(status.auth) if alive and status.auth else None,
        "portal_error": {**asdict(trouble), "for": now - trouble.since} if trouble else None,
        "portal_errors_total": status.portal_errors_total,
        "disk": disk,
        "inodes": inodes,
        "memory_available": psutil.virtual_memory().available,
        "last_poll_ago": now - status.last_poll if status.last_poll else None,
        # How long the queue has been found empty without a break (retire --when-idle).
        "idle_for": now - status.idle_since if alive and status.idle_since else None,
        "failing": failing,
        "log": log,
        "workdir": str(workdir),
    }


def _rundir_name(job_id: str) -> str:
    from leampoll.executor import rundir_name

    return rundir_name(job_id)


def _portal(r: dict, after: float) -> str:
    """Failed pops lasting `after` seconds or more: reason, for how long, the last answer."""
    trouble = r.get("portal_error")
    if not trouble or trouble["for"] < after:
        return "-"
    return f"{trouble['reason']} for {_ago(trouble['for'])}: {trouble['last'][:60]}"


def _needs(r: dict) -> str:
    """Each resource's need and where it came from: `disk 6.0M learned from 3 runs`."""
    needs = r["guard"].get("needs") or {}
    parts = []
    for g in ("disk", "memory", "inodes"):
        if g in needs:
            fmt = str if g == "inodes" else human
            parts.append(f"{g} {fmt(needs[g]['need'])} {needs[g].get('why', '')}".rstrip())
    if r["guard"].get("ledger"):
        parts.append("no ledger")
    return "; ".join(parts) or "-"


def render(rows: list[dict], portal_error_after: float = PORTAL_ERROR_AFTER) -> str:
    cells = []
    for r in rows:
        guard = ",".join(r["guard"]["holding"]) or "-"
        for g in r["guard"]["holding"]:
            if g not in r["guard"]["readings"]:
                continue  # auth: no figures; its detail is in --json
            free, _total, need = r["guard"]["readings"][g]
            fmt = str if g == "inodes" else human
            reserved = r["guard"].get("needs", {}).get(g, {}).get("reserved", 0)
            held = f"{g} {fmt(free)}<{fmt(need)}"
            if reserved:
                held += f" ({fmt(reserved)} reserved by other jobs)"
            guard = guard.replace(g, held, 1)
        cells.append(
            [
                r["project"],
                r["supervisor"],
                r["version"] or "-",
                _ago(r["uptime"]),
                f"{r['job']['id']} ({_ago(r['job']['running_for'])})" if r["job"] else "-",
                f"{r['last']['outcome']} {r['last']['id']} {_ago(r['last']['ago'])} ago"
                if r["last"]
                else "-",
                f"{r['succeeded']}/{r['failed']}",
                guard,
                _needs(r),
                _portal(r, portal_error_after),
                human(r["disk"]["free"]) if r["disk"] else "?",
                str(r["inodes"]["free"]) if r["inodes"] else "?",
                human(r["memory_available"]),
                r["log"],
            ]
        )
    widths = [max(len(str(c)) for c in col) for col in zip(COLUMNS, *cells, strict=True)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in [COLUMNS, *cells]
    ]
    return "\n".join(lines + _notes(rows))


def _notes(rows: list[dict]) -> list[str]:
    """Below the table: how each running poller contains jobs, and its job's usage so far."""
    notes = []
    for r in rows:
        text = r.get("jobs_mode") or ""
        usage = (r.get("job") or {}).get("usage")
        if usage:
            text += (
                f"; {r['job']['id']} so far: memory {human(usage.get('memory_bytes', 0))} "
                f"(peak {human(usage.get('peak_memory_bytes', 0))}), "
                f"cpu {usage.get('cpu_seconds', 0):.1f}s, "
                f"disk {human(usage.get('peak_disk_bytes', 0))} "
                f"in {usage.get('peak_inodes', 0)} inodes"
            )
        if text:
            notes.append(f"{r['project']}: {text.lstrip('; ')}")
    return notes


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="leampoll status", description="Show what the pollers on this host are doing."
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--portal-error-after",
        type=float,
        default=PORTAL_ERROR_AFTER,
        metavar="SECONDS",
        help="show failed pops in the table once they last this long "
        f"(default {PORTAL_ERROR_AFTER:g})",
    )
    parser.add_argument(
        "workdirs",
        nargs="*",
        type=Path,
        metavar="WORKDIR",
        help=f"project workdirs (default: the projects in {PROJECTS_FILE})",
    )
    args = parser.parse_args(argv)
    projects = [{"workdir": str(w.absolute())} for w in args.workdirs] or deployed()
    if not projects:
        print(
            f"leampoll status: no workdir given and none listed in {PROJECTS_FILE}", file=sys.stderr
        )
        return 1
    now = time.time()
    programs = supervisor_states()
    rows = sorted((row(p, programs, now) for p in projects), key=lambda r: r["project"])
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(render(rows, args.portal_error_after))
    return 0

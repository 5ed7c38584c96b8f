"""`leampoll retire`: take this host out of service without killing a job, then act.

For clouds that scale in: every poller the provisioning deployed (listed in
/etc/leampoll/projects.json) is drained through Supervisor (SIGUSR1: it
finishes its job, reports it, pops nothing more and exits 0, which Supervisor
leaves stopped). Pollers still busy at `--timeout` are stopped (SIGTERM:
the job is stopped and handed back to the portal with requeue). Then the
final action runs: `systemctl poweroff` by default, or a cloud's scale-in
hook (e.g. `aws autoscaling complete-lifecycle-action ...`).

`--when-idle SECONDS` retires only once every running poller has found its
queue empty for that long (status.json's `idle_since`); with `--watch` it
keeps looking, for clouds that scale on queue length.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from leampoll import cmd_status, supervisor
from leampoll.state import State

log = logging.getLogger("leampoll")

# Supervisor states of a program that has not exited (a poller that may pop or run a job).
BUSY = ("RUNNING", "STARTING", "BACKOFF", "STOPPING")
DEFAULT_ACTION = "systemctl poweroff"


class RetireError(RuntimeError):
    """The host cannot be retired safely; nothing final was done."""


@dataclass
class Poller:
    """One deployed poller: its project, Supervisor program and workdir."""

    project: str
    program: str
    workdir: Path

    def pending_reports(self) -> int:
        try:
            return State(self.workdir / ".leampoll").pending_count()
        except OSError:
            return 0


@dataclass
class Options:
    timeout: float
    action: list[str]
    poll: float
    when_idle: float | None
    watch: float | None


def deployed() -> list[Poller]:
    found = []
    for p in cmd_status.deployed():
        name = p.get("name") or Path(p["workdir"]).name
        found.append(Poller(name, p.get("program", f"leampoll-{name}"), Path(p["workdir"])))
    return found


def _states(pollers: list[Poller]) -> dict[str, str]:
    states = supervisor.states()
    if not states:
        raise RetireError("Supervisor does not answer (supervisorctl status); nothing done")
    return {p.program: states.get(p.program, "unknown") for p in pollers}


def idle_report(pollers: list[Poller], seconds: float, now: float) -> list[str]:
    """Why the host is not idle yet, one line per poller; empty when it is.

    A running poller must have found its queue empty, without a break, for
    `seconds`. One that is not running holds the host up (it may be drained
    for an upgrade, or failing), unless Supervisor never started it
    (STOPPED: a project kept out of service).
    """
    programs = supervisor.states()
    reasons = [] if pollers else [f"no poller listed in {cmd_status.PROJECTS_FILE}"]
    for p in pollers:
        r = cmd_status.row(
            {"name": p.project, "workdir": str(p.workdir), "program": p.program}, programs, now
        )
        state = programs.get(p.program, "unknown")
        if r["pid"] is None or state != "RUNNING":
            if state != "STOPPED":
                reasons.append(f"{p.project}: poller not running ({state})")
        elif r["job"]:
            reasons.append(f"{p.project}: running job {r['job']['id']}")
        elif r["idle_for"] is None:
            reasons.append(f"{p.project}: {r['state'] or 'starting'}, queue not found empty")
        elif r["idle_for"] < seconds:
            reasons.append(f"{p.project}: idle for {r['idle_for']:.0f}s of {seconds:g}s")
    return reasons


def drain(pollers: list[Poller], opts: Options) -> None:
    """Drain every poller; at the bound, stop (and so requeue) what still runs."""
    for program, state in _states(pollers).items():
        if state == "RUNNING":
            log.info("retire: draining %s (SIGUSR1)", program)
            supervisor.ctl("signal", "USR1", program)
        elif state in ("STARTING", "BACKOFF"):
            # Not serving yet: stopped outright, so Supervisor starts it no more.
            log.info("retire: stopping %s (%s)", program, state)
            supervisor.ctl("stop", program, timeout=opts.timeout + 120)
    deadline = time.monotonic() + opts.timeout
    while True:
        busy = [prog for prog, state in _states(pollers).items() if state in BUSY]
        if not busy:
            log.info("retire: every poller has ended")
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(min(opts.poll, max(0.0, deadline - time.monotonic())))
    for program in busy:
        log.warning(
            "retire: %s still busy after %gs: stopping it (its job is handed back with requeue)",
            program,
            opts.timeout,
        )
        done = supervisor.ctl("stop", program, timeout=600)
        if done is None or done.returncode != 0:
            raise RetireError(
                f"supervisorctl stop {program} failed: "
                f"{(done.stdout + done.stderr).strip() if done else 'no answer'}"
            )
    still = [prog for prog, state in _states(pollers).items() if state in BUSY]
    if still:
        raise RetireError(f"still running after stop: {', '.join(still)}; nothing final done")


def summary(pollers: list[Poller]) -> int:
    """Log each poller's last outcome; the number of reports not delivered."""
    undelivered = 0
    for p in pollers:
        last = State(p.workdir / ".leampoll").load_status().last
        pending = p.pending_reports()
        undelivered += pending
        log.info(
            "retire: %s: last job %s %s%s",
            p.project,
            last.id if last else "-",
            last.outcome if last else "-",
            f"; {pending} report(s) NOT delivered, kept in {p.workdir}/.leampoll/outbox"
            if pending
            else "",
        )
    return undelivered


def act(action: list[str]) -> int:
    if not action:
        log.info("retire: no final action")
        return 0
    log.info("retire: final action: %s", shlex.join(action))
    try:
        return subprocess.run(action, stdin=subprocess.DEVNULL, check=False).returncode
    except OSError as exc:
        log.error("retire: final action failed: %s", exc)
        return 1


def retire(opts: Options) -> int:
    pollers = deployed()
    if not pollers:
        log.warning("retire: no poller listed in %s", cmd_status.PROJECTS_FILE)
    if opts.when_idle is not None:
        said: list[str] = []
        while reasons := idle_report(pollers, opts.when_idle, time.time()):
            # Once per change of the reasons (the idle time grows every look).
            if [r.split(" for ")[0] for r in reasons] != said:
                log.info("retire: not idle: %s", "; ".join(reasons))
                said = [r.split(" for ")[0] for r in reasons]
            if opts.watch is None:
                return 0
            time.sleep(opts.watch)
        log.info("retire: every poller idle for %gs", opts.when_idle)
    try:
        if pollers:
            drain(pollers, opts)
    except RetireError as exc:
        log.error("retire: %s", exc)
        return 1
    if summary(pollers):
        log.error(
            "retire: reports are not delivered; no final action (run the pollers "
            "again to deliver them, or run retire again)"
        )
        return 1
    return act(opts.action)


def parse(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="leampoll retire",
        description="Drain every poller of this host, wait for their jobs to be ended and "
        "reported (requeue what outlasts --timeout), then run the final action.",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600,
        metavar="SECONDS",
        help="bound on the wait for running jobs (default 3600)",
    )
    parser.add_argument(
        "--action",
        default=DEFAULT_ACTION,
        metavar="COMMAND",
        help=f"final command, split like a shell would, run without one "
        f"(default {DEFAULT_ACTION!r}; '' for none)",
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=2,
        metavar="SECONDS",
        help="interval of the looks at the pollers (default 2)",
    )
    parser.add_argument(
        "--when-idle",
        type=float,
        metavar="SECONDS",
        help="only when every running poller found its queue empty this long",
    )
    parser.add_argument(
        "--watch",
        type=float,
        metavar="SECONDS",
        help="with --when-idle: look again every SECONDS until idle",
    )
    args = parser.parse_args(argv)
    if args.watch is not None and args.when_idle is None:
        parser.error("--watch needs --when-idle")
    for name in ("timeout", "poll", "when_idle", "watch"):
        value = getattr(args, name)
        if value is not None and (value < 0 or (name in ("poll", "watch") and value == 0)):
            parser.error(f"--{name.replace('_', '-')} must be positive, not {value:g}")
    return Options(args.timeout, shlex.split(args.action), args.poll, args.when_idle, args.watch)


def main(argv: Sequence[str]) -> int:
    return retire(parse(argv))

"""The poller's one lifecycle: recover, then guard -> pop -> run -> report, until stopped.

The loop decides; the portal client, the guards, the executor and the state
folder each do one thing for it. A popped job always ends in a report or a
requeue: the report goes to the on-disk outbox first, and the outbox is
emptied before the next pop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from leampoll import __version__, cgroups, guards
from leampoll.answers import Empty, Refused
from leampoll.auth import CHECK_PATH, AuthResult, AuthWatch, Verdict, classify
from leampoll.backoff import Backoff, idle_wait
from leampoll.config import Config
from leampoll.credentials import PasswordFileError, read_password_file
from leampoll.delivery import Deliverer, EndpointMemory
from leampoll.executor import Executor, Outcome, usage_line
from leampoll.guards import Guards
from leampoll.jobs import Job, Report
from leampoll.lifecycle import COLD, WARM, Lifecycle
from leampoll.portal import PortalClient
from leampoll.portal_health import PortalHealth
from leampoll.state import AuthHold, Current, Guard, Last, State, Status
from leampoll.usage import append_history, history_path

if TYPE_CHECKING:  # imported only with --metrics-file, see run()
    from leampoll.metrics import Metrics

log = logging.getLogger("leampoll")

OUTCOMES = ("success", "error", "requeued")
# Seconds status.json may lag behind figures that change every cycle (guard
# readings, time of the last poll); any other change is written at once.
# Rewriting it every idle cycle was the largest part of the idle cost.
STATUS_REFRESH = 10.0
# Seconds between refreshes of status and metrics while a job runs, so the
# metrics file of a busy poller does not look stale.
JOB_REFRESH = 60.0
# Seconds between updates of the running job's usage in the host's ledger.
LEDGER_REFRESH = 2.0


class Worker:
    """One poller for one portal and one workdir."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.life = Lifecycle()
        self.portal = PortalClient(
            config.site,
            config.pop_url,
            config.user,
            config.password,
            config.connect_timeout,
            config.read_timeout,
            config.trusted,
            config.ca_file,
            config.allow_insecure_http,
        )
        self.state = State(config.state_dir)
        self.mode = cgroups.detect(config.job_cgroups)
        self.deliverer = Deliverer(
            self.portal,
            EndpointMemory(self.state.endpoints_path, config.site),
            config.keep_failed_running,
        )
        self.auth = AuthWatch(
            config.user,
            config.site,
            config.auth_check_interval,
            Backoff(base=max(config.speed, 1.0), cap=config.max_backoff),
            self._ask_credentials,
        )
        self.guards = Guards(config)
        self._usage_at = float("-inf")
        self.executor = Executor(
            config.workdir,
            self.life,
            config.grace,
            config.checkout_timeout,
            config.job_timeout,
            on_wake=self._during_job,
            wake_every=JOB_REFRESH,
            mode=self.mode,
            limits=cgroups.Limits(
                config.memory_max, config.tasks_max or None, config.cpu_weight or None
            ),
            project=config.project,
        )
        self.backoff = Backoff(base=max(config.speed, 1.0), cap=config.max_backoff)
        self.report_backoff = Backoff(base=max(config.speed, 1.0), cap=config.max_backoff)
        self.empties = 0
        self.holding: list[str] = []
        self.exit_code = 0
        self.metrics: Metrics | None = None
        self.status = self._initial_status()
        self.health = PortalHealth(self.status.portal_errors_total)
        self.status.portal_errors_total = self.health.totals  # one dict, always current
        self._published: tuple[object, ...] = ()
        self._published_at = float("-inf")

    # -- lifecycle -----------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; the exit code for the process."""
        self.config.workdir.mkdir(parents=True, exist_ok=True)
        self.state.ensure()
        if self.config.metrics_file:
            from leampoll.metrics import Metrics  # only then: the idle poller stays small

            self.metrics = Metrics(self.config, self.status)
        self.life.install()
        log.info(
            "leampoll %s polling %s every %gs, workdir %s; %s",
            __version__,
            self.config.pop_url,
            self.config.speed,
            self.config.workdir,
            self.mode.describe(),
        )
        try:
            self.recover()
            while self.life.stop is None:
                self.cycle()
                if self.config.once:
                    break
        finally:
            self.guards.release()
            self.life.uninstall()
            self.portal.close()
            self.status.state, self.status.pid, self.status.current = "stopped", None, None
            self.publish()
        log.info("leampoll stopped (%s)", self.life.stop or "done")
        return self.exit_code

    def cycle(self) -> None:
        """One round, one call per outcome: deliver reports, check guards, pop,
        then the answer is empty, refused, or a job to run."""
        idle_since = self.status.idle_since
        self.status.idle_since = None  # unless this cycle finds the queue empty
        if self.life.reload:
            self.reload_credentials()
        if not self.flush_reports():
            self.reports_stuck()
            return
        self.report_backoff.reset()
        if self.guards_hold():
            self.held()
            return
        answer = self.portal.pop()
        if not isinstance(answer, Job):
            self.guards.release()  # nothing popped: the reservation is not needed
        if isinstance(answer, Empty):
            self.empty(idle_since)
        elif isinstance(answer, Refused):
            self.refused(answer)
        else:
            self.popped(answer)

    def reports_stuck(self) -> None:
        """The outbox could not be emptied: nothing is popped until it is."""
        once = self.config.once
        self.exit_code = 1 if once else 0
        self.wait(0 if once else self.report_backoff.next(), "backoff")

    def held(self) -> None:
        """A guard holds popping: wait a poll interval and look again."""
        once = self.config.once
        if once and "auth" in self.holding:
            self.exit_code = 1
        self.wait(0 if once else self.config.speed, "holding")

    def empty(self, idle_since: float | None) -> None:
        """Nothing queued: count it, exit after --idle of them, else wait a poll interval."""
        self.answered()
        # For `leampoll retire --when-idle`: since when the queue is found empty.
        self.status.idle_since = idle_since or time.time()
        self.empties += 1
        log.debug("queue empty (%d in a row)", self.empties)
        if self.config.idle and self.empties >= self.config.idle:
            log.info("%d empty polls in a row: exiting (--idle)", self.empties)
            self.life.stop = "idle"
        else:
            self.wait(0 if self.config.once else idle_wait(self.config.speed), "idle")

    def refused(self, answer: Refused) -> None:
        """Not a job and not empty: counted, logged, then a growing wait."""
        once = self.config.once
        self.health.failed(answer.kind, answer.reason)
        self.status.portal_error = self.health.snapshot()
        if answer.login_redirect:
            self.auth.suspect()  # the credentials are checked before the next pop
        wait = self.backoff.next(answer.retry_after)
        log.warning("portal: %s; next try in %.1fs", answer.reason, wait)
        self.exit_code = 1 if once else 0
        self.wait(0 if once else wait, "backoff")

    def popped(self, job: Job) -> None:
        """A job: run it, then straight back to the queue (a backlog drains at once)."""
        self.answered()
        self.empties = 0
        self.handle(job)

    def answered(self) -> None:
        """The portal answered a pop (empty or a job): errors over, the backoff starts again."""
        self.status.last_poll = time.time()
        self.backoff.reset()
        ended = self.health.answered()
        if ended and ended.count > 1:
            log.info(
                "portal answers pops again, after %d failed since %s (last: %s)",
                ended.count,
                time.strftime("%H:%M:%S", time.localtime(ended.since)),
                ended.last,
            )
        self.status.portal_error = None

    def wait(self, seconds: float, why: str) -> None:
        self.status.state = why
        self.publish()
        self.life.sleep(seconds)

    def reload_credentials(self) -> None:
        """SIGHUP: the password file again, for later requests and later jobs.

        Called between cycles only, so no request is half-way. A file that
        cannot be used leaves the current password in use, loudly.
        """
        self.life.reload = False
        path = self.config.password_file
        if path is None:
            log.warning(
                "SIGHUP: no password file configured (--password-file, "
                "PORTAL_PASSWORD_FILE); credentials unchanged"
            )
            return
        try:
            password = read_password_file(path)
        except PasswordFileError as exc:
            log.error("SIGHUP: %s; the current password stays in use", exc)
            return
        if password == self.config.password:
            log.info("SIGHUP: password file %s re-read; password unchanged", path)
            return
        self.config = dataclasses.replace(self.config, password=password)
        self.portal.set_credentials(self.config.user, password)
        log.info("SIGHUP: password file %s re-read; the new password is in use", path)

    def _during_job(self) -> None:
        if self.life.stop == WARM and self.status.state == "running":
            self.status.state = "draining"
        sampler = self.executor.sampler
        if sampler is not None:
            self._usage_now(
                {
                    "disk": sampler.peak_disk,
                    "memory": sampler.memory_now,
                    "inodes": sampler.peak_inodes,
                }
            )
            self.status.usage = {
                "memory_bytes": sampler.memory_now,
                "peak_memory_bytes": sampler.peak_memory,
                "peak_disk_bytes": sampler.peak_disk,
                "peak_inodes": sampler.peak_inodes,
                "cpu_seconds": round(sampler.cpu_seconds, 1),
            }
        self.publish()

    # -- guards ----------------------------------------------------------------

    def guards_hold(self) -> bool:
        """The local guards (reserving the job's needs in the host's ledger), then the
        credentials (a hold of its own, logged by AuthWatch)."""
        decision = self.guards.decide()
        held = decision.holding
        names = [f.resource for f in held]
        was = [n for n in self.holding if n != "auth"]
        if names and names != was:
            log.warning("guard hold, not popping: %s", "; ".join(guards.describe(f) for f in held))
        elif not names and was:
            log.info("guard hold ended: %s", "; ".join(guards.describe(f) for f in decision.fits))
        if not names:
            self.state.keep_reserve()  # given up when a job filled the disk
        if self.auth.holding():
            names.append("auth")
            self.guards.release()  # no pop: the reservation would only keep others waiting
        self.status.guard = Guard(
            names,
            {f.resource: [f.free, f.total, f.need] for f in decision.fits},
            {
                f.resource: {
                    "need": f.need,
                    "source": decision.needs[f.resource].source,
                    "why": decision.needs[f.resource].describe(),
                    "free": f.free,
                    "reserved": f.reserved,
                    "available": f.available,
                }
                for f in decision.fits
                if f.resource in decision.needs
            },
            decision.ledger_error,
        )
        rejected = self.auth.rejected
        self.status.auth = (
            AuthHold(self.config.user, self.auth.since, rejected.detail) if rejected else None
        )
        self.holding = names
        return bool(names)

    def _ask_credentials(self) -> AuthResult:
        try:
            return classify(self.portal.probe(self.config.site + CHECK_PATH))
        except (requests.RequestException, ValueError) as exc:
            return AuthResult(
                Verdict.UNKNOWN, f"no answer: {exc.__class__.__name__}", transient=True
            )

    # -- one job ---------------------------------------------------------------

    def handle(self, job: Job) -> None:
        if job.problem:
            log.error("job %s: popped but cannot run: %s", job.id or "?", job.problem)
            self.enqueue(job, "error", f"leampoll cannot run this job: {job.problem}")
            self.flush_reports()
            return
        rundir, logpath = self.executor.paths(job)
        log.info("job %s: starting in %s (log %s)", job.id, rundir, logpath)
        record = self.state.begin(job, rundir, self.executor.unit_for(job))
        self.status.state = "running"
        self.guards.running(job.id)
        self.status.current = Current(job.id, job.title, time.time(), str(rundir), str(logpath))
        self.publish()
        env = {
            "PORTAL_USER": self.config.user,
            "PORTAL_PASSWORD": self.config.password,
            "LEAM_JOB_ID": job.id,
            "LEAM_JOB_URL": job.url,
            "LEAM_PORTAL_URL": self.config.site,
        }
        outcome = self.executor.execute(
            job, env, lambda stage, pgid: self.state.add_group(record, stage, pgid)
        )
        self.finish(job, outcome, rundir)

    def finish(self, job: Job, outcome: Outcome, rundir: Path) -> None:
        if outcome.interrupted:
            log.warning("job %s: stopped after %.1fs; handing it back", job.id, outcome.duration)
            message = "leampoll was stopped during this job; requeued"
            if outcome.usage is not None:
                message += "\n" + usage_line(outcome.usage)
            self.enqueue(job, "requeue", message)
        elif outcome.ok:
            log.info("job %s: %s", job.id, outcome.describe())
            self.enqueue(job, "success", f"job {job.id} {outcome.describe()}")
        else:
            log.error("job %s: %s", job.id, outcome.describe().splitlines()[0])
            self.enqueue(job, "error", f"job {job.id} {outcome.describe()}")
        self.state.finish()  # at once: a report in the outbox and a current job = ended twice
        self.state.forget_orphan(job.url or job.id)
        # After the report and the state's finish: those come first on a full
        # disk (the reserve is theirs), and nothing may widen the window
        # between them in which a killed poller would hand the job back too.
        self.record_usage(outcome)
        self.guards.release()
        self.status.current = None
        self.status.usage = None
        if self.metrics:
            self.metrics.job_done(outcome)
        self.flush_reports()
        self.retain(rundir, outcome.ok and not outcome.interrupted)

    def record_usage(self, outcome: Outcome) -> None:
        """Append what the job used to the project's history (the guards learn from it).

        After its report is in the outbox and the job is no longer current: a
        history that cannot be written (a full disk) costs a record, never the
        report, and a kill meanwhile never ends the job twice. A run that filled
        the disk is the record that matters most: it may use the state folder's
        reserve.
        """
        usage = outcome.usage
        if usage is None:
            return
        log.info("job %s: %s", usage.job_id, usage_line(usage))
        try:
            path = history_path(self.config.state_dir)
            self.state.with_reserve(path.name, lambda: append_history(path, usage))
        except OSError as exc:
            log.warning("job %s: usage not recorded in the history: %s", usage.job_id, exc)
        if self.metrics:
            self.metrics.job_usage(usage)
        self.guards.learned()

    def _usage_now(self, now: dict[str, int]) -> None:
        """The running job's usage, for the ledger: the rest of its reservation stays promised."""
        if time.monotonic() - self._usage_at >= LEDGER_REFRESH:
            self._usage_at = time.monotonic()
            self.guards.used(now)

    def enqueue(self, job: Job, kind: str, message: str) -> None:
        """Put a report in the outbox (it survives a crash) and count the outcome."""
        outcome = "requeued" if kind == "requeue" else kind
        counts, session = self.status.counts, self.status.session
        counts[outcome] = counts.get(outcome, 0) + 1
        session[outcome] = session.get(outcome, 0) + 1
        self.status.last = Last(job.id, outcome, time.time(), message.splitlines()[0][:200])
        url = {"success": job.on_success, "error": job.on_error, "requeue": job.requeue_url}[kind]
        if not url and not job.url:
            log.error(
                "job %s: no URL to report %s to (the portal gave none); outcome: %s",
                job.id or "?",
                kind,
                message.splitlines()[0],
            )
            return
        fallback = job.on_error if kind == "requeue" else ""
        self.state.put(Report(kind, url, message, job.id, fallback, job_url=job.url))

    def flush_reports(self) -> bool:
        """Deliver the outbox in order; False if something is still pending."""
        for path, report in self.state.pending():
            result = self.deliverer.deliver(report)
            if result.state == "retry":
                self.status.reports_pending = self.state.pending_count()
                return False
            if result.state == "undeliverable":
                # The portal will never take it: set it aside, loudly, and go on.
                path.rename(path.with_suffix(".undeliverable"))
                self.health.count("report_undeliverable")
                log.error(
                    "job %s: %s report set aside as undeliverable in %s: %s; outcome: %s",
                    report.job_id,
                    report.kind,
                    path.parent,
                    result.detail,
                    report.message.splitlines()[0][:200],
                )
            elif result.state == "left_running":
                path.unlink()
                log.warning(
                    "job %s: failed; left running in the portal for a person to look "
                    "at (--keep-failed-running; %s)",
                    report.job_id,
                    result.detail,
                )
            else:
                path.unlink()
                log.info(
                    "job %s: reported %s (%s, %s)",
                    report.job_id,
                    report.kind,
                    result.endpoint,
                    result.detail,
                )
            last = self.status.last
            if last and last.id == report.job_id:  # replaced: publish() compares by value
                self.status.last = dataclasses.replace(
                    last, portal=result.endpoint if result.state == "delivered" else result.state
                )
        self.status.reports_pending = 0
        return True

    # -- recovery and retention --------------------------------------------------

    def recover(self) -> None:
        """Hand back the job a killed poller left behind, before any pop."""
        record = self.state.orphan()
        if record is None:
            self.stop_leftover_units()
            return
        job = Job.from_dict(record["job"])
        stopped = self.executor.stop_orphan(record)
        if stopped:
            log.warning(
                "job %s: stopped %d leftover process(es) of an orphaned run", job.id, len(stopped)
            )
        if self.state.count_orphaned(job.url or job.id) >= 2:
            log.error("job %s: orphaned twice; reporting an error instead of requeueing", job.id)
            self.enqueue(
                job,
                "error",
                "the poller died twice while running this job "
                "(the job may be killing it); not requeued again",
            )
        else:
            log.warning("job %s: found orphaned by a killed poller; handing it back", job.id)
            self.enqueue(job, "requeue", "leampoll restarted during this job; requeued")
        self.state.finish()
        self.stop_leftover_units()

    def stop_leftover_units(self) -> None:
        for unit, found in self.executor.stop_leftover_units().items():
            log.warning("stopped leftover job unit %s (%d process(es))", unit, found)

    def retain(self, rundir: Path, ok: bool) -> None:
        """Successful run directories go unless --preserve; failed ones are kept, bounded."""
        if ok:
            if not self.config.preserve:
                shutil.rmtree(rundir, ignore_errors=True)
            return
        self.state.keep_failed(rundir, self.config.keep_failed)
        self._prune_logs()

    def _prune_logs(self) -> None:
        logs = [
            e
            for e in os.scandir(self.config.workdir)
            if e.name.endswith(".log") and e.is_file(follow_symlinks=False)
        ]
        if len(logs) <= self.config.keep_logs:
            return
        logs.sort(key=lambda e: e.stat().st_mtime)
        for entry in logs[: len(logs) - self.config.keep_logs]:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)

    # -- status ----------------------------------------------------------------

    def _initial_status(self) -> Status:
        """A fresh status; totals and the last outcome carried over from the previous run."""
        previous = self.state.load_status()
        return Status(
            project=self.config.project,
            version=__version__,
            jobs=self.mode.describe(),
            pid=os.getpid(),
            site=self.config.site,
            workdir=str(self.config.workdir),
            started_at=time.time(),
            state="starting",
            last=previous.last,
            counts={k: int(previous.counts.get(k, 0)) for k in OUTCOMES},
            session=dict.fromkeys(OUTCOMES, 0),
            last_poll=previous.last_poll,
            portal_errors_total={
                k: int(v) for k, v in previous.portal_errors_total.items() if isinstance(v, int)
            },
        )

    def _status_key(self) -> tuple[object, ...]:
        """What a reader must see at once; the rest may wait STATUS_REFRESH."""
        s = self.status
        return (
            s.state,
            s.pid,
            s.current,
            s.last,
            tuple(s.counts.values()),
            tuple(s.guard.holding),
            s.reports_pending,
            s.last_poll is None,
            s.auth is None,
            s.portal_error.reason if s.portal_error else None,
            s.idle_since is None,
        )

    def publish(self) -> None:
        """Write status.json (and metrics) for readers; never fatal."""
        if self.life.stop == COLD and self.status.state not in ("stopped",):
            self.status.state = "stopping"
        try:
            key, now = self._status_key(), time.monotonic()
            if key != self._published or now - self._published_at >= STATUS_REFRESH:
                self.state.save_status(self.status)
                self._published, self._published_at = key, now
            if self.metrics:
                self.metrics.write(self.status)
        except OSError as exc:
            log.debug("status not written: %s", exc)

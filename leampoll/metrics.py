"""Prometheus metrics in the text format, for node_exporter's textfile collector.

Imported only with --metrics-file, so an idle poller without it never loads
prometheus_client. The file is replaced atomically after every cycle by
`write_to_textfile`. Job counters start from the totals kept in status.json,
so they survive a restart of the poller.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, write_to_textfile

from leampoll import __version__
from leampoll.answers import REFUSED_KINDS
from leampoll.config import Config
from leampoll.executor import Outcome
from leampoll.state import Status
from leampoll.usage import JobUsage

GUARDS = ("disk", "inodes", "memory", "auth")
RESOURCES = ("disk", "inodes", "memory")
# Why pops failed (portal.REFUSED_KINDS) and reports set aside: a fixed set of labels.
PORTAL_ERRORS = (*REFUSED_KINDS, "report_undeliverable")
# The worker's states (status.json "state"); leampoll_state has one series per
# state, the current one 1, so alert rules can tell a drained or stopped poller.
STATES = ("starting", "idle", "holding", "backoff", "running", "draining", "stopping", "stopped")
# Model runs last from seconds to a day.
BUCKETS = (1, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, float("inf"))
# A job's peak memory or disk: 16 MiB to 256 GiB, a factor of 4 apart.
BYTE_BUCKETS = (*(16 * 1024**2 * 4**i for i in range(8)), float("inf"))


class Metrics:
    """The poller's series, each labelled with its project."""

    def __init__(self, config: Config, status: Status) -> None:
        self.path = str(config.metrics_file)
        p = config.project
        reg = self.registry = CollectorRegistry()
        self.jobs = Counter(
            "leampoll_jobs", "Jobs by outcome", ["project", "outcome"], registry=reg
        )
        self.duration = Histogram(
            "leampoll_job_duration_seconds",
            "Job run time",
            ["project"],
            buckets=BUCKETS,
            registry=reg,
        ).labels(p)
        self.peak_memory = Histogram(
            "leampoll_job_peak_memory_bytes",
            "Peak memory of a job (its cgroup's, page cache included; sampled without one)",
            ["project"],
            buckets=BYTE_BUCKETS,
            registry=reg,
        ).labels(p)
        self.peak_disk = Histogram(
            "leampoll_job_peak_disk_bytes",
            "Peak disk space used in a job's run directory (sampled)",
            ["project"],
            buckets=BYTE_BUCKETS,
            registry=reg,
        ).labels(p)
        self.cpu = Histogram(
            "leampoll_job_cpu_seconds",
            "CPU time of a job, all its processes",
            ["project"],
            buckets=BUCKETS,
            registry=reg,
        ).labels(p)
        self.running = Gauge(
            "leampoll_job_running", "1 while a job runs", ["project"], registry=reg
        ).labels(p)
        self.started = Gauge(
            "leampoll_job_start_timestamp_seconds",
            "Start of the running job (0: none)",
            ["project"],
            registry=reg,
        ).labels(p)
        self.last_poll = Gauge(
            "leampoll_last_poll_timestamp_seconds",
            "Last answer from the portal",
            ["project"],
            registry=reg,
        ).labels(p)
        self.guard = Gauge(
            "leampoll_guard_hold",
            "1 while a guard holds popping",
            ["project", "guard"],
            registry=reg,
        )
        self.need = Gauge(
            "leampoll_guard_need_bytes",
            "What the project's next job needs (bytes; inodes for resource=inodes)",
            ["project", "resource"],
            registry=reg,
        )
        self.reserved = Gauge(
            "leampoll_guard_reserved_bytes",
            "Reserved by the host's other jobs and not yet used, as this poller last saw it",
            ["project", "resource"],
            registry=reg,
        )
        self.pending = Gauge(
            "leampoll_reports_pending", "Reports waiting in the outbox", ["project"], registry=reg
        ).labels(p)
        self.state = Gauge(
            "leampoll_state", "1 for the poller's current state", ["project", "state"], registry=reg
        )
        Gauge(
            "leampoll_build_info", "The poller's version", ["project", "version"], registry=reg
        ).labels(p, __version__).set(1)
        self.portal_errors = Counter(
            "leampoll_portal_errors",
            "Failed pops and reports set aside, by reason",
            ["project", "reason"],
            registry=reg,
        )
        self._errors_counted = dict.fromkeys(PORTAL_ERRORS, 0)
        for reason in PORTAL_ERRORS:
            self.portal_errors.labels(p, reason)
        self.project = p
        self._counted: dict[str, int] = {}
        for outcome in ("success", "error", "requeued"):
            self.jobs.labels(p, outcome)
            self._counted[outcome] = 0
        for guard in GUARDS:
            self.guard.labels(p, guard)
        for resource in RESOURCES:
            self.need.labels(p, resource)
            self.reserved.labels(p, resource)
        for state in STATES:
            self.state.labels(p, state)
        self._sync_counts(status)

    def job_done(self, outcome: Outcome) -> None:
        self.duration.observe(outcome.duration)

    def job_usage(self, usage: JobUsage) -> None:
        self.peak_memory.observe(usage.peak_memory_bytes)
        self.peak_disk.observe(usage.peak_disk_bytes)
        self.cpu.observe(usage.cpu_seconds)

    def _sync_counts(self, status: Status) -> None:
        for outcome, total in status.counts.items():
            delta = int(total) - self._counted.get(outcome, 0)
            if delta > 0:
                self.jobs.labels(self.project, outcome).inc(delta)
                self._counted[outcome] = int(total)

    def _sync_errors(self, status: Status) -> None:
        for reason, total in status.portal_errors_total.items():
            delta = int(total) - self._errors_counted.get(reason, 0)
            if reason in self._errors_counted and delta > 0:
                self.portal_errors.labels(self.project, reason).inc(delta)
                self._errors_counted[reason] = int(total)

    def write(self, status: Status) -> None:
        self._sync_counts(status)
        self._sync_errors(status)
        current = status.current
        self.running.set(1 if current else 0)
        self.started.set(current.started_at if current else 0)
        self.last_poll.set(status.last_poll or 0)
        holding = set(status.guard.holding)
        for guard in GUARDS:
            self.guard.labels(self.project, guard).set(1 if guard in holding else 0)
        for resource, figures in status.guard.needs.items():
            if resource in RESOURCES:
                self.need.labels(self.project, resource).set(figures.get("need", 0))
                self.reserved.labels(self.project, resource).set(figures.get("reserved", 0))
        self.pending.set(status.reports_pending)
        for state in STATES:
            self.state.labels(self.project, state).set(1 if state == status.state else 0)
        write_to_textfile(self.path, self.registry)

"""The poller's settings: their shape and their defaults, the one place of both.

The command line (leampoll.options) takes its defaults from here, and
leampoll.loading fills a Config from flags, the environment (LEAMPOLL_<NAME>)
and a TOML file (--config), see leampoll.sources. Credentials come from
PORTAL_USER and PORTAL_PASSWORD or PORTAL_PASSWORD_FILE; -U/-X still work but
put the password where `ps` shows it, so they are discouraged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from leampoll.origins import TrustedOrigins
from leampoll.units import Size

# The guards' defaults; a Size is frozen, so one instance serves every Config.
MIN_FREE_DISK = Size(5 * 1024**3)
MIN_FREE_MEM = Size(1024**3)
MIN_FREE_INODES = Size(10_000)
# The host-wide reservation ledger the pollers of a host share (leampoll.ledger).
LEDGER = Path("/run/leampoll/ledger.json")


class ConfigError(Exception):
    """A configuration the poller cannot start with; the message is for the user."""


@dataclass(frozen=True)
class Config:
    """The poller's settings after validation."""

    site: str
    user: str
    password: str = field(repr=False)
    workdir: Path
    popq: str = "/pop_queue"
    speed: float = 20.0
    idle: int = 0
    preserve: bool = False
    debug: bool = False
    min_free_disk: Size = MIN_FREE_DISK
    min_free_mem: Size = MIN_FREE_MEM
    min_free_inodes: Size = MIN_FREE_INODES
    job_timeout: float = 0.0
    checkout_timeout: float = 900.0
    max_backoff: float = 600.0
    grace: float = 10.0
    keep_failed: int = 20
    keep_logs: int = 200
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    once: bool = False
    check: bool = False
    metrics_file: Path | None = None
    project: str = ""
    auth_check_interval: float = 600.0
    keep_failed_running: bool = False
    trusted_origins: tuple[str, ...] = ()
    password_file: Path | None = None  # re-read on SIGHUP
    allow_insecure_http: bool = False
    ca_file: Path | None = None
    memory_max: int | None = None  # bytes a job may use (its cgroup's MemoryMax)
    tasks_max: int = 0  # processes and threads of a job (0: the slice's bound only)
    cpu_weight: int = 0  # the job's share of CPU under contention (0: systemd's 100)
    job_cgroups: bool = True  # a cgroup per job where systemd allows it ("auto")
    guard_mode: str = "learned"  # static: the min_free_* thresholds only
    learn_runs: int = 10
    learn_margin: float = 1.2
    need_disk: Size | None = None  # fixed needs: for projects whose runs vary
    need_memory: Size | None = None
    need_inodes: Size | None = None
    ledger: Path | None = LEDGER  # None: guard alone

    @property
    def pop_url(self) -> str:
        return self.site.rstrip("/") + "/" + self.popq.lstrip("/")

    @property
    def trusted(self) -> TrustedOrigins:
        """The origins that may receive credentials: the site's and --trusted-origin's."""
        return TrustedOrigins.build(self.site, self.trusted_origins)

    @property
    def state_dir(self) -> Path:
        """Per-workdir state: current job, pending reports, status, counters."""
        return self.workdir / ".leampoll"

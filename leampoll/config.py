"""Command line and configuration: everything the poller is told, checked once.

The old poller's flags keep their names and meanings; new ones are long-only.
Every option may also come from the environment (LEAMPOLL_<NAME>) or a TOML
file (--config), see leampoll.sources. Credentials come from PORTAL_USER and
PORTAL_PASSWORD or PORTAL_PASSWORD_FILE; -U/-X still work but put the
password where `ps` shows it, so they are discouraged.
"""

from __future__ import annotations

import argparse
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from leampoll import __version__, security, sources
from leampoll.credentials import PasswordFileError, read_password_file
from leampoll.origins import TrustedOrigins

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


class ConfigError(Exception):
    """A configuration the poller cannot start with; the message is for the user."""


@dataclass(frozen=True)
class Size:
    """A threshold: an absolute byte (or inode) count, or a share of the total."""

    value: float
    percent: bool = False

    def bytes_of(self, total: int) -> int:
        """The absolute threshold for a resource of `total` units."""
        return int(total * self.value / 100) if self.percent else int(self.value)

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else human(self.value)


def parse_size(text: str, units: bool = True) -> Size:
    """Parse '5G', '512M', '1.5T', '100' or '15%' (suffixes are powers of 1024)."""
    match = _PERCENT.match(text)
    if match:
        value = float(match.group(1))
        if value > 100:
            raise ValueError(f"{text!r}: a percentage cannot exceed 100%")
        return Size(value, percent=True)
    match = _SIZE.match(text)
    if not match or (match.group(2) and not units):
        raise ValueError(f"{text!r} is not a size (a number with K/M/G/T, or a percentage)")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if value >= 2**63:
        raise ValueError(f"{text!r} is too large")
    return Size(value)


def human(n: float) -> str:
    """Bytes as a short figure with a 1024-based unit, e.g. 5.0G."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


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
    min_free_disk: Size = Size(5 * 1024**3)
    min_free_mem: Size = Size(1024**3)
    min_free_inodes: Size = Size(10_000)
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
    guard_mode: str = "learned"  # static: the min_free_* thresholds only
    learn_runs: int = 10
    learn_margin: float = 1.2
    need_disk: Size | None = None  # fixed needs: for projects whose runs vary
    need_memory: Size | None = None
    need_inodes: Size | None = None
    ledger: Path | None = Path("/run/leampoll/ledger.json")  # None: guard alone

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


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number >= 0")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 0")
    return value


def _runs(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 1")
    return value


def _margin(text: str) -> float:
    value = float(text)
    if not 1.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number from 1 to 100")
    return value


def _ledger(text: str) -> Path | None:
    return None if text.strip().lower() in ("off", "none", "") else Path(text)


def _size(text: str) -> Size:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _inodes(text: str) -> Size:
    try:
        return parse_size(text, units=False)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


EPILOG = """\
subcommands:
  leampoll status [--json] [WORKDIR ...]
      what the pollers of this host are doing; see leampoll status --help

configuration:
  Every option may also be set in the environment as LEAMPOLL_<NAME> (--min-free-disk:
  LEAMPOLL_MIN_FREE_DISK, SITE_URL: LEAMPOLL_SITE) or in a TOML file given by --config
  (LEAMPOLL_CONFIG) as <name> = value (min_free_disk = "10G"). Flags win over the
  environment, the environment over the file, the file over the defaults. Switches take
  true/false; repeatable options a TOML array, or one value per line (or comma-separated)
  in a variable. A variable or key that names no option is an error (exit 2).

credentials:
  PORTAL_USER, and PORTAL_PASSWORD or PORTAL_PASSWORD_FILE (a file with the password on
  its first line, readable by its owner only: one readable by everybody is refused, one
  readable by its group is warned of). A config file may name password_file but never
  hold the password.

signals:
  TERM, INT  stop: a running job gets TERM, KILL after --grace, and is handed back
             to the portal (requeue); exit 0
  USR1       drain: the running job finishes and is reported, nothing more is popped;
             exit 0
  HUP        re-read the password file between two portal requests (never during one);
             later requests and later jobs get the new password, no job is stopped

exit status:
  0  stopped by a signal, drained, --idle reached, or --once/--check succeeded
  1  configuration unusable (missing URL or credentials, bad password file), --check
     failed, or --once could not reach the portal or deliver a report
  2  usage error: bad option or value, in flags, environment or config file
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="leampoll",
        description="Poll a LEAM Planning Portal for queued jobs, run them and report back.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("site", nargs="?", metavar="SITE_URL", help="the portal's root URL")
    p.add_argument(
        "-s",
        "--speed",
        type=_seconds,
        default=20.0,
        metavar="SECONDS",
        help="poll interval while the queue is empty (default 20)",
    )
    p.add_argument(
        "-i",
        "--idle",
        type=_count,
        default=0,
        metavar="N",
        help="exit 0 after N consecutive empty polls; 0 = never",
    )
    p.add_argument(
        "-q",
        "--popq",
        default="/pop_queue",
        metavar="PATH",
        help="path of the pop view below the site (default /pop_queue)",
    )
    p.add_argument(
        "-p", "--preserve", action="store_true", help="keep the run directories of successful jobs"
    )
    p.add_argument("-U", "--user", help="portal user (prefer PORTAL_USER)")
    p.add_argument(
        "-X", "--password", help="portal password (discouraged: visible in ps; use PORTAL_PASSWORD)"
    )
    p.add_argument(
        "--password-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="read the portal password from FILE, again on SIGHUP (or PORTAL_PASSWORD_FILE)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="read settings from this TOML file (flags and LEAMPOLL_* win)",
    )
    p.add_argument("-u", "--userdata", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-d", "--debug", action="store_true", help="log debug lines")
    p.add_argument("-v", "--version", action="version", version=f"leampoll {__version__}")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where run directories are made (default: current directory)",
    )
    p.add_argument(
        "--min-free-disk",
        type=_size,
        default=Size(5 * 1024**3),
        metavar="SIZE",
        help="hold popping below this free space on the workdir (default 5G)",
    )
    p.add_argument(
        "--min-free-mem",
        type=_size,
        default=Size(1024**3),
        metavar="SIZE",
        help="hold popping below this available memory (default 1G)",
    )
    p.add_argument(
        "--min-free-inodes",
        type=_inodes,
        default=Size(10_000),
        metavar="N",
        help="hold popping below this many free inodes (default 10000, or N%%)",
    )
    p.add_argument(
        "--job-timeout",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="kill a job after this long; 0 = never (default)",
    )
    p.add_argument(
        "--checkout-timeout",
        type=_seconds,
        default=900.0,
        metavar="SECONDS",
        help="give up a checkout after this long (default 900)",
    )
    p.add_argument(
        "--max-backoff",
        type=_seconds,
        default=600.0,
        metavar="SECONDS",
        help="cap of the wait after portal errors (default 600)",
    )
    p.add_argument(
        "--grace",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="time a job gets between TERM and KILL when stopped (default 10)",
    )
    p.add_argument(
        "--keep-failed",
        type=_count,
        default=20,
        metavar="N",
        help="keep at most N run directories of failed jobs (default 20)",
    )
    p.add_argument(
        "--keep-logs",
        type=_count,
        default=200,
        metavar="N",
        help="keep at most N job logs (default 200)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="read timeout of portal requests (default 60)",
    )
    p.add_argument("--project", default="", help="name of the project (default: workdir name)")
    p.add_argument(
        "--metrics-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="write Prometheus metrics to PATH after every cycle",
    )
    p.add_argument(
        "--auth-check-interval",
        type=_seconds,
        default=600.0,
        metavar="SECONDS",
        help="ask the portal whether it accepts the credentials this often "
        "(default 600; also before the first pop and after a login redirect)",
    )
    p.add_argument(
        "--keep-failed-running",
        action="store_true",
        help="on a portal without an error endpoint, leave failed jobs 'running' "
        "for a person to look at instead of ending them with end_run",
    )
    p.add_argument(
        "--trusted-origin",
        action="append",
        default=[],
        metavar="URL",
        help="another origin (scheme://host[:port]) of this portal that may receive "
        "reports and credentials, e.g. its public name; repeatable",
    )
    p.add_argument(
        security.INSECURE_OPTION,
        action="store_true",
        help="allow plain http:// to a portal that is not on loopback "
        "(the password then crosses the network unencrypted)",
    )
    p.add_argument(
        security.CA_OPTION,
        type=Path,
        default=None,
        metavar="PATH",
        help="CA certificate(s) (PEM) to verify the portal's TLS certificate with",
    )
    p.add_argument(
        "--guard-mode",
        choices=("static", "learned"),
        default="learned",
        help="learned (default): each resource's need is max(--min-free-*, margin x the "
        "peak of the project's last runs); static: the --min-free-* thresholds only",
    )
    p.add_argument(
        "--learn-runs",
        type=_runs,
        default=10,
        metavar="N",
        help="learn needs from the project's last N runs (default 10)",
    )
    p.add_argument(
        "--learn-margin",
        type=_margin,
        default=1.2,
        metavar="FACTOR",
        help="a learned need is this many times the peak (default 1.2)",
    )
    p.add_argument(
        "--need-disk",
        type=_size,
        default=None,
        metavar="SIZE",
        help="a fixed disk need for every job, instead of a learned one",
    )
    p.add_argument(
        "--need-memory",
        type=_size,
        default=None,
        metavar="SIZE",
        help="a fixed memory need for every job, instead of a learned one",
    )
    p.add_argument(
        "--need-inodes",
        type=_inodes,
        default=None,
        metavar="N",
        help="a fixed inode need for every job, instead of a learned one",
    )
    p.add_argument(
        "--ledger",
        type=_ledger,
        default=Path("/run/leampoll/ledger.json"),
        metavar="PATH",
        help="the host-wide reservation ledger the pollers of this host share "
        "(default /run/leampoll/ledger.json; off: guard alone)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--once", action="store_true", help="at most one guard/pop/run/report cycle, then exit"
    )
    mode.add_argument(
        "--check",
        action="store_true",
        help="check configuration, workdir, guards and portal; pop nothing",
    )
    return p


def config_sources(environ: Mapping[str, str]) -> sources.Sources:
    """Where settings come from besides flags: the environment of the process, and a file."""
    return sources.Sources(
        environ=environ,
        # The names the old poller and Supervisor's program files use.
        aliases={
            "PORTAL_USER": "user",
            "PORTAL_PASSWORD": "password",
            "PORTAL_PASSWORD_FILE": "password_file",
        },
        env_ignore=frozenset({"LEAMPOLL_PROJECTS_FILE"}),  # leampoll status reads it
        # A config file is copied, mailed and checked in more easily than an
        # environment: the password itself is never taken from one.
        file_refused={
            "password": "a config file may not hold the password; "
            "use password_file, or PORTAL_PASSWORD in the environment"
        },
    )


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Parse and validate; raise ConfigError with one clear line when unusable."""
    env = os.environ if environ is None else environ
    args = sources.parse(build_parser(), argv, config_sources(env))
    if not args.site:
        raise ConfigError("no portal URL given (leampoll [options] SITE_URL)")
    parts = urllib.parse.urlsplit(args.site)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"portal URL must be http(s)://host/...: {args.site!r}")
    if parts.username or parts.password:
        raise ConfigError("put credentials in PORTAL_USER/PORTAL_PASSWORD, not in the URL")
    insecure = security.insecure_http(args.site, args.allow_insecure_http)
    if insecure:
        raise ConfigError(f"portal URL {args.site}: {insecure}")
    if args.ca_file is not None and not (
        args.ca_file.is_file() and os.access(args.ca_file, os.R_OK)
    ):
        raise ConfigError(f"{security.CA_OPTION} {args.ca_file}: not a readable file")
    user = args.user or ""
    password = args.password or ""
    if password and args.password_file:
        raise ConfigError(
            "both a password and a password file are given; "
            "set PORTAL_PASSWORD or PORTAL_PASSWORD_FILE, not both"
        )
    if args.password_file:
        try:
            password = read_password_file(args.password_file)
        except PasswordFileError as exc:
            raise ConfigError(str(exc)) from None
    if not user or not password:
        raise ConfigError(
            "portal credentials missing: set PORTAL_USER and PORTAL_PASSWORD "
            "(or PORTAL_PASSWORD_FILE)"
        )
    workdir = (args.workdir or Path.cwd()).absolute()
    if args.speed <= 0 and not args.once:
        raise ConfigError("--speed must be greater than 0")
    try:
        TrustedOrigins.build(args.site, args.trusted_origin)
    except ValueError as exc:
        raise ConfigError(f"--trusted-origin: {exc}") from None
    for origin in args.trusted_origin:
        # A trusted origin receives the password too: the same http rule as the site.
        insecure = security.insecure_http(origin.strip(), args.allow_insecure_http)
        if insecure:
            raise ConfigError(f"--trusted-origin {origin}: {insecure}")
    return Config(
        site=args.site.rstrip("/"),
        user=user,
        password=password,
        workdir=workdir,
        popq=args.popq,
        speed=args.speed,
        idle=args.idle,
        preserve=args.preserve,
        debug=args.debug,
        min_free_disk=args.min_free_disk,
        min_free_mem=args.min_free_mem,
        min_free_inodes=args.min_free_inodes,
        job_timeout=args.job_timeout,
        checkout_timeout=args.checkout_timeout,
        max_backoff=max(args.max_backoff, 0.1),
        grace=args.grace,
        keep_failed=args.keep_failed,
        keep_logs=args.keep_logs,
        read_timeout=args.timeout,
        once=args.once,
        check=args.check,
        metrics_file=args.metrics_file,
        project=args.project or workdir.name,
        auth_check_interval=args.auth_check_interval,
        keep_failed_running=args.keep_failed_running,
        trusted_origins=tuple(args.trusted_origin),
        password_file=args.password_file.absolute() if args.password_file else None,
        allow_insecure_http=args.allow_insecure_http,
        ca_file=args.ca_file.absolute() if args.ca_file else None,
        guard_mode=args.guard_mode,
        learn_runs=args.learn_runs,
        learn_margin=args.learn_margin,
        need_disk=args.need_disk,
        need_memory=args.need_memory,
        need_inodes=args.need_inodes,
        ledger=args.ledger.absolute() if args.ledger else None,
    )

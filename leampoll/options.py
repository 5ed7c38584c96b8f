"""The poller's command line: its options, their help and their checks of one value.

The defaults are Config's (leampoll.config), so the dataclass, the parser and
the help text name one figure. Loading, the checks across options and the
other sources of settings are leampoll.loading's.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from leampoll import __version__, security, sources, units
from leampoll.config import LEDGER, Config
from leampoll.units import Size, parse_size

DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Config) if f.default is not MISSING}


def _shown(size: Size) -> str:
    """A default size as it is typed: 5G, 10000."""
    value = int(size.value)
    for unit, power in (("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        if value and value % 1024**power == 0:
            return f"{value // 1024**power}{unit}"
    return str(value)


def _seconds(text: str) -> float:
    value = float(text)
    # Not inf either: a wait of inf seconds is an OverflowError in time.sleep.
    if not (math.isfinite(value) and value >= 0):
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


def _memory_max(text: str) -> int:
    try:
        return units.parse_memory_max(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cpu_weight(text: str) -> int:
    try:
        return units.check_cpu_weight(_count(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tasks_max(text: str) -> int:
    try:
        return units.check_tasks_max(_count(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _inodes(text: str) -> Size:
    try:
        return parse_size(text, units=False)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_SIZE_TEXT = "a size such as 5G (K/M/G/T, powers of 1024) or a percentage up to 100%"
# What each conversion takes, in words: the roles' validation (plugins/filter/
# validation.py) says it of a project key or leampoll_<option> that fails it.
KINDS: dict[Callable[[str], Any], str] = {
    _seconds: "a number of seconds (0 or more)",
    _count: "a whole number (0 or more)",
    _runs: "a whole number, at least 1",
    _margin: "a factor from 1 to 100",
    _size: _SIZE_TEXT,
    _memory_max: "a size such as 4G (K/M/G/T, powers of 1024; at least 1M)",
    _cpu_weight: f"a whole number within {units.CPU_WEIGHT_MIN}..{units.CPU_WEIGHT_MAX}",
    _tasks_max: f"a whole number of processes and threads within 0..{units.TASKS_MAX_MAX}",
    _inodes: "a number of inodes, or a percentage up to 100%",
}


def convert(parser: sources.Parser, dest: str, value: Any) -> Any:
    """`value` (text, or a number as YAML gives it) as the option `dest` converts it.

    The conversion a flag's value, LEAMPOLL_<DEST> and the file's key go
    through; raises ValueError when it refuses the value. Neither a boolean
    nor None is a value of an option that converts its text.
    """
    convert = parser.options[dest].action.type
    if not callable(convert):
        return value
    if isinstance(value, bool) or value is None or not isinstance(value, (str, int, float)):
        raise ValueError(f"{value!r} is not a value of {dest}")
    try:
        return convert(str(value))
    except (TypeError, argparse.ArgumentTypeError) as exc:
        raise ValueError(str(exc)) from None


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


def build_parser() -> sources.Parser:
    p = sources.Parser(
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
        default=DEFAULTS["speed"],
        metavar="SECONDS",
        help=f"poll interval while the queue is empty (default {DEFAULTS['speed']:g})",
    )
    p.add_argument(
        "-i",
        "--idle",
        type=_count,
        default=DEFAULTS["idle"],
        metavar="N",
        help="exit 0 after N consecutive empty polls; 0 = never",
    )
    p.add_argument(
        "-q",
        "--popq",
        default=DEFAULTS["popq"],
        metavar="PATH",
        help=f"path of the pop view below the site (default {DEFAULTS['popq']})",
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
        default=DEFAULTS["min_free_disk"],
        metavar="SIZE",
        help="hold popping below this free space on the workdir "
        f"(default {_shown(DEFAULTS['min_free_disk'])})",
    )
    p.add_argument(
        "--min-free-mem",
        type=_size,
        default=DEFAULTS["min_free_mem"],
        metavar="SIZE",
        help="hold popping below this available memory "
        f"(default {_shown(DEFAULTS['min_free_mem'])})",
    )
    p.add_argument(
        "--min-free-inodes",
        type=_inodes,
        default=DEFAULTS["min_free_inodes"],
        metavar="N",
        help="hold popping below this many free inodes "
        f"(default {_shown(DEFAULTS['min_free_inodes'])}, or N%%)",
    )
    p.add_argument(
        "--job-timeout",
        type=_seconds,
        default=DEFAULTS["job_timeout"],
        metavar="SECONDS",
        help="kill a job after this long; 0 = never (default)",
    )
    p.add_argument(
        "--checkout-timeout",
        type=_seconds,
        default=DEFAULTS["checkout_timeout"],
        metavar="SECONDS",
        help=f"give up a checkout after this long (default {DEFAULTS['checkout_timeout']:g})",
    )
    p.add_argument(
        "--max-backoff",
        type=_seconds,
        default=DEFAULTS["max_backoff"],
        metavar="SECONDS",
        help=f"cap of the wait after portal errors (default {DEFAULTS['max_backoff']:g})",
    )
    p.add_argument(
        "--grace",
        type=_seconds,
        default=DEFAULTS["grace"],
        metavar="SECONDS",
        help=f"time a job gets between TERM and KILL when stopped (default {DEFAULTS['grace']:g})",
    )
    p.add_argument(
        "--keep-failed",
        type=_count,
        default=DEFAULTS["keep_failed"],
        metavar="N",
        help=f"keep at most N run directories of failed jobs (default {DEFAULTS['keep_failed']})",
    )
    p.add_argument(
        "--keep-logs",
        type=_count,
        default=DEFAULTS["keep_logs"],
        metavar="N",
        help=f"keep at most N job logs (default {DEFAULTS['keep_logs']})",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULTS["read_timeout"],
        metavar="SECONDS",
        help=f"read timeout of portal requests (default {DEFAULTS['read_timeout']:g})",
    )
    p.add_argument(
        "--memory-max",
        type=_memory_max,
        default=DEFAULTS["memory_max"],
        metavar="SIZE",
        help="memory a job may use, page cache included; beyond it the OOM killer ends "
        "the job (cgroup mode; default: only the host's leam-jobs.slice bound)",
    )
    p.add_argument(
        "--tasks-max",
        type=_tasks_max,
        default=DEFAULTS["tasks_max"],
        metavar="N",
        help="processes and threads a job may have (cgroup mode; 0 = the slice's bound)",
    )
    p.add_argument(
        "--cpu-weight",
        type=_cpu_weight,
        default=DEFAULTS["cpu_weight"],
        metavar="N",
        help="a job's CPU share under contention, 1..10000 (cgroup mode; default systemd's 100)",
    )
    p.add_argument(
        "--job-cgroups",
        choices=("auto", "off"),
        default="auto",
        help="auto: each job in a systemd scope of its own where the host allows it, "
        "else a process group; off: always a process group (default auto)",
    )
    p.add_argument(
        "--project", default=DEFAULTS["project"], help="name of the project (default: workdir name)"
    )
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
        default=DEFAULTS["auth_check_interval"],
        metavar="SECONDS",
        help="ask the portal whether it accepts the credentials this often "
        f"(default {DEFAULTS['auth_check_interval']:g}; also before the first pop "
        "and after a login redirect)",
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
        default=DEFAULTS["learn_runs"],
        metavar="N",
        help=f"learn needs from the project's last N runs (default {DEFAULTS['learn_runs']})",
    )
    p.add_argument(
        "--learn-margin",
        type=_margin,
        default=DEFAULTS["learn_margin"],
        metavar="FACTOR",
        help=f"a learned need is this many times the peak (default {DEFAULTS['learn_margin']:g})",
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
        default=LEDGER,
        metavar="PATH",
        help=f"the host-wide reservation ledger the pollers of this host share "
        f"(default {LEDGER}; off: guard alone)",
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

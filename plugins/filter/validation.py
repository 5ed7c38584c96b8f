"""The roles' checks that an argument spec cannot make: formats, bounds, cross-field rules.

Types, choices and required keys are the argument specs' (meta/argument_specs.yml,
checked by Ansible when a role starts). What is left is here, as plain Python that
tests/test_validation.py covers case by case, and each format rule the poller also
applies is the poller's own function (sizes: leampoll.units.parse_size; URLs and
loopback: leampoll.origins and leampoll.security; credential options: the poller's
parser), so the role cannot accept what the poller would refuse, or the reverse.

Each filter takes the variables of one host and returns a list of problems, each
naming the host, the project where there is one, and the key; never a value of a
secret. An empty list: the variables are fine.

A project key or leampoll_<name> that is also an option of the poller
(speed, min_free_disk, tasks_max, learn_runs...) is checked by that option's
own conversion (leampoll.options.convert, described by options.KINDS), found
in the poller's parser: a key added to the argument specs, the template and
the poller needs no rule here.

Filters (by their full name, leam.jobserver.<name>):
  leam_problems(variables, host)           leam_user, leam_jobdir_*, project names
  jobdir_problems(variables, host)         jobdir_mode
  leampoll_problems(variables, host)       leampoll_*, the projects' portal keys
  leampoll_jobs_problems(variables, host)  leampoll_jobs_*
  supervisor_problems(variables, host)     supervisor_*, the stop timeout across them
  supervisor_stop_timeout(stopwaitsecs, margin)  supervisor.service's TimeoutStopSec
  node_exporter_problems(variables, host)  node_exporter_*
"""

from __future__ import annotations

import functools
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

try:
    import leampoll  # noqa: F401  (a checkout's venv has it installed)
except ImportError:  # the installed collection carries the poller's source at its root
    sys.path.append(str(Path(__file__).resolve().parents[2]))
from leampoll import loading, options, origins, security, units
from leampoll.config import ConfigError
from leampoll.paths import PLAIN_PATH_TEXT
from leampoll.paths import is_plain_path as is_path
from leampoll.sources import truth  # Ansible's bool: the poller's own words, y and t

# Project names become directory, program and file names.
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
USER = re.compile(r"^[a-z_][a-z0-9_-]*$")
# Never made the job tree root (it is chowned to leam_user).
_TOP = "bin boot dev etc home lib lib64 media mnt opt proc root run sbin srv sys tmp usr var"
SYSTEM_DIRS = frozenset(f"/{name}" for name in _TOP.split())
# A Supervisor byte size (stderr_logfile_maxbytes).
SUPERVISOR_BYTES = re.compile(r"^[0-9]+(KB|MB|GB)?$")
# [host]:port of a listening socket: an IPv6 address in brackets, a name or
# IPv4 address, or nothing (every address).
LISTEN = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*):[0-9]{1,5}$")
# Text a Supervisor program file cannot carry: a line break; white space
# before ; or # (an inline comment to Supervisor's parser); %(here)s, which
# Supervisor replaces before anything else, %% or not.
SUPERVISOR_UNSAFE = re.compile(r"[\r\n]|\s[;#]|%\(here\)s")
# An environment= value is quoted with ' (or " when it holds a '), and
# Supervisor strips every quote from both ends of it: on top of the above, no
# value with both quote characters or with a quote at either end.
ENV_UNSAFE = re.compile(r"""[\r\n]|\s[;#]|%\(here\)s|^['"]|['"]$|'.*"|".*'""")
# What a shell word of node_exporter's ARGS= line cannot hold.
WORD_UNSAFE = re.compile(r"""[\s"'\\$`]""")
SUPERVISOR_TEXT = "(no line break, no white space before ; or #, no %(here)s)"
ENV_TEXT = (
    "that a Supervisor environment= can carry (no line break, no white space before ; or #, "
    "not both ' and \", no quote at either end, no %(here)s)"
)
# A file mode as the roles write it: quoted, four octal digits.
MODE = re.compile(r"^0[0-7]{3}$")
# systemd's DefaultTimeoutStopSec on Debian: supervisor.service never gets less.
SUPERVISOR_STOP_TIMEOUT_MIN = 90


@functools.lru_cache(maxsize=1)
def _parser() -> Any:
    return options.build_parser()


def credential_options() -> list[str]:
    """The poller's options that take a user or password: never on its command line."""
    return sorted(
        flag
        for dest, option in _parser().options.items()
        if dest in ("user", "password")
        for flag in option.action.option_strings
    )


@functools.lru_cache(maxsize=1)
def option_kinds() -> dict[str, str]:
    """dest -> what it takes, of each poller option whose conversion checks a value.

    A path (type Path) takes any text: the roles' own path rule checks those
    keys (ca_file). Choices are the argument specs'.
    """
    return {
        dest: options.KINDS.get(
            option.action.type, f"a value of the poller's {option.action.option_strings[-1]}"
        )
        for dest, option in _parser().options.items()
        if callable(option.action.type) and option.action.type is not Path
    }


# The poller's checks across its options, for a poller as the roles run it
# (never --once): dest -> (the check of the converted value, what it takes).
def _speed(value: float) -> None:
    loading.check_speed(value, once=False)


ACROSS: dict[str, tuple[Callable[[Any], None], str]] = {
    "speed": (_speed, "a number of seconds greater than 0"),
}


def option_problem(dest: str, value: Any) -> str | None:
    """What `value` must be as the poller's option `dest`; None when the poller takes it."""
    across = ACROSS.get(dest)
    try:
        converted = options.convert(_parser(), dest, value)
        if across:
            across[0](converted)
    except (ValueError, ConfigError):
        return across[1] if across else option_kinds()[dest]
    return None


# -- the rules, each a predicate on one value ---------------------------------------


def is_size(value: Any) -> bool:
    try:
        units.parse_size(str(value))
    except ValueError:
        return False
    return True


def number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def whole(value: Any) -> int | None:
    result = number(value)
    return int(result) if result is not None and result == int(result) else None


def at_least(low: float, kind: Callable[[Any], float | None] = number) -> Callable[[Any], bool]:
    """The bound of a number (or whole number, kind=whole); not a number fails."""
    return lambda value: (n := kind(value)) is not None and n >= low


def above(low: float, kind: Callable[[Any], float | None] = number) -> Callable[[Any], bool]:
    return lambda value: (n := kind(value)) is not None and n > low


def is_url(value: Any) -> bool:
    """http(s) with a host and no credentials (the poller's rule), no white space."""
    return (
        isinstance(value, str)
        and not any(c.isspace() for c in value)
        and origins.origin_of(value) is not None
    )


def strings(value: Any) -> list[str] | None:
    if isinstance(value, (str, Mapping)) or not isinstance(value, Iterable):
        return None
    items = list(value)
    return items if all(isinstance(v, str) for v in items) else None


def supervisor_safe(value: Any) -> bool:
    return not SUPERVISOR_UNSAFE.search(str(value))


def env_safe(value: Any) -> bool:
    return (
        isinstance(value, (str, int, float))
        and not isinstance(value, bool)
        and str(value) != ""
        and not ENV_UNSAFE.search(str(value))
    )


# -- the problems of one host -------------------------------------------------------


class Problems:
    """The list of problems of one host, each line naming it."""

    def __init__(self, host: str, variables: Mapping[str, Any]):
        self.host = host
        self.variables = variables
        self.lines: list[str] = []

    def check(self, keys: str | Iterable[str], ok: Callable[[Any], bool], message: str) -> None:
        """Each of `keys` present in the variables must pass `ok`; one line for them all."""
        names = [keys] if isinstance(keys, str) else list(keys)
        present = [k for k in names if k in self.variables]
        if any(not ok(self.variables[k]) for k in present):
            self.add(f"{self._join(present)} must be {message}")

    def add(self, text: str) -> None:
        self.lines.append(f"{self.host}: {text}")

    @staticmethod
    def _join(names: list[str]) -> str:
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _projects(variables: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(how a message names it, project) of each project that is a mapping."""
    result = []
    for i, project in enumerate(variables.get("leam_projects") or []):
        if isinstance(project, Mapping):
            name = project.get("name")
            label = f"leam_projects[{i}]" + (f" (project {name})" if isinstance(name, str) else "")
            result.append((label, project))
    return result


def leam_problems(variables: Mapping[str, Any], host: str) -> list[str]:
    """The shared variables: the account, the job tree, the projects' names."""
    out = Problems(host, variables)
    out.check(
        "leam_user",
        lambda v: isinstance(v, str) and bool(USER.match(v)) and v != "root",
        "a user name ([a-z_][a-z0-9_-]*) other than root",
    )
    out.check(
        "leam_jobdir_root",
        lambda v: is_path(v) and v not in SYSTEM_DIRS,
        "an absolute path of letters, digits and ._+- (no trailing slash, no . or .. components), "
        f"not a system directory ({' '.join(sorted(SYSTEM_DIRS))})",
    )
    out.check(
        "leam_jobdir_min_free",
        is_size,
        "a size such as 10G (K/M/G/T, powers of 1024) or a percentage up to 100%",
    )
    for label, project in _projects(variables):
        name = project.get("name")
        if not (isinstance(name, str) and NAME.match(name)):
            out.add(f"{label}.name must match {NAME.pattern}")
    names = Counter(p.get("name") for _, p in _projects(variables))
    repeated = sorted(str(n) for n, count in names.items() if count > 1)
    if repeated:
        out.add(
            f"leam_projects has duplicate names ({', '.join(repeated)}); each project needs its own"
        )
    return out.lines


def leampoll_problems(variables: Mapping[str, Any], host: str) -> list[str]:
    """The poller settings and each project's portal keys."""
    out = Problems(host, variables)
    # leampoll_<option>: the host's value of a poller option (its projects may override it).
    for dest in option_kinds():
        key = f"leampoll_{dest}"
        if key in variables and (what := option_problem(dest, variables[key])):
            out.add(f"{key} must be {what}")
    out.check("leampoll_stop_margin", at_least(0, whole), "a whole number of seconds")
    out.check(
        [
            "leampoll_drain_timeout",
            "leampoll_drain_poll",
            "leampoll_idle_shutdown_after",
            "leampoll_idle_shutdown_check",
            "leampoll_retire_timeout",
        ],
        above(0, whole),
        "whole numbers of seconds greater than 0",
    )
    out.check(
        "leampoll_log_maxbytes",
        lambda v: bool(SUPERVISOR_BYTES.match(str(v))),
        "a Supervisor byte size such as 50MB",
    )
    out.check("leampoll_log_backups", at_least(0, whole), "a whole number")
    out.check(
        [
            "leampoll_password_dir",
            "leampoll_prefix",
            "leampoll_bin_link",
            "leampoll_python",
            "leampoll_conf_dir",
            "leampoll_log_dir",
            "leampoll_metrics_dir",
        ],
        is_path,
        "absolute paths of letters, digits and ._+- without . or .. components",
    )
    out.check(
        "leampoll_ca_file",
        lambda v: v == "" or is_path(v),
        '"" or an absolute path of letters, digits and ._+-',
    )
    banned = credential_options()
    out.check(
        "leampoll_extra_args",
        lambda v: (
            strings(v) is not None
            and all(supervisor_safe(a) and a.split("=", 1)[0] not in banned for a in v)
        ),
        f"a list of strings {SUPERVISOR_TEXT}, without credentials ({' '.join(banned)}: use "
        "portal_user and portal_password)",
    )
    out.check(
        "leampoll_retire_action",
        lambda v: strings(v) is not None and all(supervisor_safe(a) for a in v),
        f"a list of words (the command's argv) {SUPERVISOR_TEXT}",
    )
    for label, project in _projects(variables):
        _project_problems(out, label, project)
    return out.lines


def _project_problems(out: Problems, label: str, project: Mapping[str, Any]) -> None:
    serving = project.get("state", "present") != "absent"
    insecure_ok = truth(project.get("allow_insecure_http", False))
    url = project.get("portal_url")
    if serving and not (is_url(url) and supervisor_safe(url)):
        out.add(
            f"{label}.portal_url must be set to an http:// or https:// URL without white space "
            "and without credentials in it"
        )
    elif serving and security.insecure_http(url, insecure_ok):
        out.add(
            f"{label}: portal_url is plain http:// to a host that is not loopback, so the portal "
            "password would cross the network unencrypted; use https://, or set "
            "allow_insecure_http: true in this project"
        )
    if "ca_file" in project and not is_path(project["ca_file"]):
        out.add(
            f"{label}.ca_file must be an absolute path (on the host) of letters, digits and ._+-"
        )
    for key in ("portal_user", "portal_password"):
        if serving and not env_safe(project.get(key)):
            vault = " (is its vault variable defined?)" if key == "portal_password" else ""
            out.add(f"{label}.{key} must be set{vault} to a non-empty string {ENV_TEXT}")
    # A key named as a poller option is that option for this project's poller.
    for dest in option_kinds():
        if dest in project and (what := option_problem(dest, project[dest])):
            out.add(f"{label}.{dest} must be {what}")
    trusted = project.get("trusted_origins", [])
    listed = strings(trusted)
    if listed is None or not all(is_url(o) and supervisor_safe(o) for o in listed):
        out.add(
            f"{label}.trusted_origins must be a list of http:// or https:// URLs "
            "(scheme://host[:port]) without credentials or white space"
        )
    elif any(security.insecure_http(o, insecure_ok) for o in listed):
        out.add(
            f"{label}: trusted_origins has a plain http:// origin on a host that is not loopback, "
            "which would receive the portal password unencrypted; use https://, or set "
            "allow_insecure_http: true in this project"
        )


def node_exporter_problems(variables: Mapping[str, Any], host: str) -> list[str]:
    """node_exporter's listen address and arguments (its ARGS= line)."""
    out = Problems(host, variables)
    out.check(
        "node_exporter_listen_address",
        lambda v: isinstance(v, str) and bool(LISTEN.match(v)),
        "[host]:port, e.g. 127.0.0.2:9100 or :9100 "
        "(it defaults to leampoll_node_exporter_listen_address)",
    )
    out.check(
        "node_exporter_extra_args",
        lambda v: strings(v) is not None and not any(WORD_UNSAFE.search(a) for a in v),
        "a list of words without white space, quotes, backslashes, $ or `",
    )
    out.check("node_exporter_textfile_dir", is_path, "an absolute path of letters, digits and ._+-")
    return out.lines


def leampoll_jobs_problems(variables: Mapping[str, Any], host: str) -> list[str]:
    """The jobs' slice: its MemoryMax= is a size or a share of the host's memory."""
    out = Problems(host, variables)
    out.check(
        "leampoll_jobs_memory_max",
        is_size,
        "a size such as 12G (K/M/G/T, powers of 1024) or a percentage up to 100%",
    )
    return out.lines


def jobdir_problems(variables: Mapping[str, Any], host: str) -> list[str]:
    """The job tree's mode."""
    out = Problems(host, variables)
    out.check(
        "jobdir_mode",
        lambda v: isinstance(v, str) and bool(MODE.match(v)),
        'a quoted octal mode such as "0755"',
    )
    return out.lines


def supervisor_stop_timeout(stopwaitsecs: Iterable[Any], margin: Any) -> int:
    """supervisor.service's TimeoutStopSec: supervisord stops its programs one after
    another, each within its stopwaitsecs, so their sum plus the margin; at least 90 s."""
    return max(sum(int(s) for s in stopwaitsecs) + int(margin), SUPERVISOR_STOP_TIMEOUT_MIN)


def supervisor_problems(variables: Mapping[str, Any], host: str) -> list[str]:
    """Supervisor's packages and files, and its stop timeout against the reboot's."""
    out = Problems(host, variables)
    v = variables
    if not (
        len(v.get("supervisor_packages") or []) > 0
        and is_path(v.get("supervisor_conf"))
        and is_path(v.get("supervisor_conf_dir"))
        and len(v.get("supervisor_include_files") or "") > 0
    ):
        out.add(
            "supervisor_packages must not be empty, and supervisor_conf, supervisor_conf_dir "
            "and supervisor_include_files must be set (supervisor_conf and supervisor_conf_dir: "
            f"{PLAIN_PATH_TEXT}s)"
        )
    waits = v.get("supervisor_programs_stopwaitsecs") or []
    margin = v.get("supervisor_stop_margin", 0)
    limit = v.get("supervisor_stop_timeout_max")
    if limit is None or not isinstance(waits, list):
        return out.lines  # the argument spec's to say
    try:
        timeout = supervisor_stop_timeout(waits, margin)
        too_long = timeout > int(limit)
    except (TypeError, ValueError):
        return out.lines  # not whole numbers: the argument spec's to say
    if too_long:
        out.add(
            f"Supervisor would need up to {timeout} s to stop: it stops its {len(waits)} "
            "programs one after another, each within its stopwaitsecs "
            f"({' + '.join(str(w) for w in waits)} s), plus supervisor_stop_margin ({margin} s). "
            f"That exceeds supervisor_stop_timeout_max ({limit} s): systemd forces a reboot or "
            "poweroff 30 min after it began (reboot.target JobTimeoutSec), so a job stopped last "
            "would be killed before its poller hands it back. Lower leampoll_grace or "
            "leampoll_stop_margin, or serve fewer projects on this host"
        )
    return out.lines


class FilterModule:
    """The roles' validation filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "leam_problems": leam_problems,
            "jobdir_problems": jobdir_problems,
            "supervisor_problems": supervisor_problems,
            "supervisor_stop_timeout": supervisor_stop_timeout,
            "leampoll_problems": leampoll_problems,
            "leampoll_jobs_problems": leampoll_jobs_problems,
            "node_exporter_problems": node_exporter_problems,
        }

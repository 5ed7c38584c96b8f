"""The leampoll role's plan: which pollers to drain, remove, write, add, start and signal.

A deploy must never kill a job: a poller about to be removed, stopped,
reconfigured or upgraded is drained first (it finishes its job and exits),
and one still busy when the wait ends is left alone until a later run. That
choice, made from what the host has and what the inventory wants, lives here
as plain Python so that every case is unit tested (tests/test_deploy_plan.py);
the role's tasks only read the host, call these filters and apply the result.

Filters (use them by their full name, leam.jobserver.<name>):
  leampoll_plan(host, wanted, action='deploy')  the plan, as a dict of lists
  leampoll_states(text)        `supervisorctl status` -> {project: STATE}
  leampoll_settling(text)      projects whose poller is STARTING or BACKOFF
  leampoll_busy(text or registered result)  projects whose poller has not exited
  leampoll_not_ready(projects, status_json, version)  pollers not back after an upgrade
  leampoll_pip_argv(build, venv, prefix, install_mode, extra_args)  pip's install command
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:
    import leampoll  # noqa: F401  (a checkout's venv has it installed)
except ImportError:  # the installed collection carries the poller's source at its root
    sys.path.append(str(Path(__file__).resolve().parents[2]))
from leampoll.sources import truth as _truth  # a switch as Ansible's bool reads it

# Supervisor states of a poller that has not exited.
BUSY_STATES = frozenset({"RUNNING", "STARTING", "BACKOFF", "STOPPING"})
# A poller starting or backing off will be RUNNING or FATAL within seconds;
# it cannot be drained before.
SETTLING_STATES = frozenset({"STARTING", "BACKOFF"})
# A line of `supervisorctl status`: "leampoll-<name>   <STATE>   <details>".
STATUS_LINE = re.compile(r"^leampoll-(\S+)\s+(\S+)", re.M)
PROGRAM_FILE = re.compile(r"(?:^|/)leampoll-([^/]+)\.conf$")
PASSWORD_FILE = re.compile(r"(?:^|/)([^/]+)\.password$")
IDLE_FILE = re.compile(r"(?:^|/)leam-idle-shutdown\.conf$")
ACTIONS = ("deploy", "drain", "resume")


@dataclass(frozen=True)
class ProgramFile:
    """A poller's program file as the host has it (ansible.builtin.find)."""

    checksum: str
    mode: str = "0600"
    owner: str = "root"
    group: str = "root"

    def is_as_wanted(self, checksum: str) -> bool:
        # Root only: the file holds the portal password, or its file's name.
        return (self.checksum, self.mode, self.owner, self.group) == (
            checksum,
            "0600",
            "root",
            "root",
        )


@dataclass(frozen=True)
class Build:
    """The wheel built on the controller (files/build_wheel.py) and its extras."""

    wheel: str
    sha256: str
    dir: str = ""
    extras: str = ""

    @property
    def wheel_name(self) -> str:
        return self.wheel.rsplit("/", 1)[-1]

    @property
    def version(self) -> str:
        return self.wheel_name.split("-")[1]

    @property
    def marker(self) -> str:
        """What the host records of its installed build; another text is an upgrade."""
        return f"{self.wheel_name}{self.extras} sha256:{self.sha256}\n"


@dataclass(frozen=True)
class Project:
    """A project of leam_projects: only its name and state matter to the plan."""

    name: str
    state: str = "present"


@dataclass
class Host:
    """What the host has, as the role's reads found it."""

    # Supervisor state of every leampoll-* program, by project name.
    states: dict[str, str] = field(default_factory=dict)
    # The program files in the Supervisor configuration folder, by project.
    files: dict[str, ProgramFile] = field(default_factory=dict)
    # sha1 of the installed build's marker file; None: no build installed.
    installed: str | None = None
    # Pollers drained but still running a job when the wait ended.
    busy: list[str] = field(default_factory=list)
    # Supervisor answers (not so in check mode on a bare host): programs can
    # be applied.
    supervisor: bool = True
    # sha1 of each project's password file (file mode), by project.
    passwords: dict[str, str] = field(default_factory=dict)
    # sha1 of the idle shut-down's program file; None: the host has none.
    idle: str | None = None

    @property
    def running(self) -> list[str]:
        return [name for name, state in self.states.items() if state == "RUNNING"]


@dataclass
class Layout:
    """Where the role keeps each project's files on the host (tasks/plan.yml)."""

    conf_dir: str
    idle_conf: str
    password_dir: str
    # env mode: no poller reads a password file, so the role's folder goes.
    password_file_mode: bool
    # "" without metrics: no metrics files to clean up.
    metrics_dir: str = ""


@dataclass
class Wanted:
    """What the inventory (or an ops playbook) wants of the host."""

    projects: list[Project] = field(default_factory=list)
    # sha1 of each present or drained project's program file as rendered.
    files: dict[str, str] = field(default_factory=dict)
    build: Build | None = None
    # The projects an ops playbook names; None: all of them.
    chosen: list[str] | None = None
    # Wait for the drained pollers' jobs to end, up to timeout seconds each,
    # asking every poll seconds.
    wait: bool = True
    timeout: int = 3600
    poll: int = 10
    check_mode: bool = False
    # leampoll_install_mode wheelhouse: the controller collects the
    # dependencies for a host that installs a build.
    wheelhouse: bool = False
    # sha1 of each project's password file as written (file mode only).
    passwords: dict[str, str] = field(default_factory=dict)
    # sha1 of the idle shut-down's program file as rendered; None: unwanted.
    idle: str | None = None
    # Where the role keeps its files on the host: to name those to delete.
    layout: Layout | None = None

    def named(self, state: str) -> list[str]:
        return [p.name for p in self.projects if p.state == state]

    @property
    def present(self) -> list[str]:
        # Any state but drained or absent serves (validation refuses others).
        return [p.name for p in self.projects if p.state not in ("drained", "absent")]

    def is_chosen(self, name: str) -> bool:
        return self.chosen is None or name in self.chosen


@dataclass
class Plan:
    """What to do on the host, in the order the tasks do it."""

    # deploy, drain or resume: what the plan was made for.
    action: str = "deploy"
    present: list[str] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    # Present or drained projects whose program file is missing or differs.
    changed: list[str] = field(default_factory=list)
    # The build to install differs from the installed one.
    upgrade: bool = False
    # Running pollers to drain (SIGUSR1), and those whose jobs to wait for.
    drain: list[str] = field(default_factory=list)
    wait: list[str] = field(default_factory=list)
    wait_retries: int = 0
    wait_delay: int = 0
    wait_timeout: int = 0
    # Drained pollers still running a job after the wait: left alone.
    busy: list[str] = field(default_factory=list)
    # Install the build now (from a wheelhouse); link the command into the PATH.
    install: bool = False
    wheelhouse: bool = False
    link: bool = False
    # Program files to delete, programs to take out of Supervisor, program
    # files to write, programs to add (adding starts them unless drained),
    # pollers to start.
    remove_files: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    write: list[str] = field(default_factory=list)
    add: list[str] = field(default_factory=list)
    start: list[str] = field(default_factory=list)
    # Running pollers left running: a new password reaches them by SIGHUP.
    left_running: list[str] = field(default_factory=list)
    # Those of them whose password file changes: they re-read it on SIGHUP.
    signal: list[str] = field(default_factory=list)
    # The idle shut-down program: taken out of Supervisor (changed or
    # unwanted) and added again (changed; adding starts it).
    idle_remove: bool = False
    idle_add: bool = False
    # The Supervisor programs to take out, by their full names: the pollers' of
    # remove, then the idle shut-down's.
    remove_programs: list[str] = field(default_factory=list)
    # The files to write: the pollers' program files of write (root only: they
    # hold the password or its file's name), then the idle shut-down's when
    # wanted. name: the project, "" for the idle shut-down.
    write_files: list[dict[str, str]] = field(default_factory=list)
    # Supervisor programs to bring to a state, in order: the pollers of add
    # and the idle shut-down when changed (present: adding starts a program
    # unless its file says autostart=false), then the pollers of start.
    supervise: list[dict[str, str]] = field(default_factory=list)
    # Paths to delete: the files of absent projects (program files only where
    # Supervisor answers and the poller is not busy), the idle shut-down's
    # program file when unwanted, the password folder in env mode.
    delete: list[str] = field(default_factory=list)
    # The build, for the install tasks (empty without one).
    build: dict[str, str] = field(default_factory=dict)
    # Why the play fails on the host: pollers still busy ("" when none).
    failure: str = ""

    def explain(self) -> None:
        """Say which pollers outlasted the wait, and what was left undone for them."""
        if not self.busy:
            self.failure = ""
            return
        names = ", ".join(f"leampoll-{name}" for name in self.busy)
        if self.action == "drain":
            after = "It is draining: it pops no new job and stops once its job ends."
        else:
            postponed = (
                f", and the upgrade to {self.build['version']} postponed" if self.upgrade else ""
            )
            after = (
                f"left as it is{postponed}. It is draining: it pops no new job and stays "
                "stopped once its job ends. Run the play again to finish the change."
            )
        joiner = ". " if self.action == "drain" else "; "
        self.failure = f"{names} still running a job after {self.wait_timeout} s{joiner}{after}"


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _waiting(host: Host, wanted: Wanted, drain: list[str], plan: Plan) -> None:
    """Fill in what to wait for after the drain, and who is still busy then."""
    plan.drain = drain
    plan.wait = drain if wanted.wait and not wanted.check_mode else []
    plan.wait_timeout = wanted.timeout
    plan.wait_delay = wanted.poll
    plan.wait_retries = math.ceil(wanted.timeout / wanted.poll)
    plan.busy = [name for name in plan.wait if name in host.busy]


def deploy(host: Host, wanted: Wanted) -> Plan:
    """The plan of a deploy (site.yml, upgrade.yml).

    Called once before the drain (host.busy empty) and once after, with the
    pollers still busy: those are left as they are, and the upgrade waits.
    """
    plan = Plan(
        present=wanted.present, drained=wanted.named("drained"), absent=wanted.named("absent")
    )
    serving = plan.present + plan.drained
    plan.changed = [
        name
        for name in serving
        if not (
            name in host.files
            and name in wanted.files
            and host.files[name].is_as_wanted(wanted.files[name])
        )
    ]
    # Inventory order.
    plan.changed = [p.name for p in wanted.projects if p.name in plan.changed]
    if wanted.build is not None:
        plan.build = {
            "wheel": wanted.build.wheel,
            "wheel_name": wanted.build.wheel_name,
            "version": wanted.build.version,
            "marker": wanted.build.marker,
            "dir": wanted.build.dir,
            "extras": wanted.build.extras,
        }
        plan.upgrade = host.installed != sha1(wanted.build.marker)
    touched = set(
        plan.absent + plan.drained + plan.changed + (plan.present if plan.upgrade else [])
    )
    running = host.running
    _waiting(
        host,
        wanted,
        [p.name for p in wanted.projects if p.name in touched and p.name in running],
        plan,
    )
    busy = set(plan.busy)
    plan.install = plan.upgrade and not busy
    plan.wheelhouse = plan.install and wanted.wheelhouse
    plan.link = host.installed is not None or (plan.install and not wanted.check_mode)
    plan.left_running = [name for name in running if name not in plan.drain]
    plan.signal = [
        name
        for name in plan.left_running
        if name in wanted.passwords and host.passwords.get(name) != wanted.passwords[name]
    ]
    plan.delete = _stale_paths(plan, wanted)
    if wanted.layout is not None and wanted.idle is not None:
        plan.write_files = [{"path": wanted.layout.idle_conf, "name": "", "mode": "0644"}]
    if not host.supervisor:
        return plan
    idle_changed = wanted.idle is not None and host.idle != wanted.idle
    plan.idle_remove = idle_changed or (wanted.idle is None and host.idle is not None)
    plan.idle_add = idle_changed
    plan.remove_files = [name for name in plan.absent if name not in busy]
    plan.remove = [
        name for name in host.states if name in plan.absent + plan.changed and name not in busy
    ]
    plan.write = [name for name in plan.changed if name not in busy]
    plan.add = [
        name
        for name in serving
        if (name in plan.changed or name not in host.states) and name not in busy
    ]
    plan.start = [
        name
        for name in plan.present
        if name in host.states and name not in busy and name not in plan.left_running
    ]
    if wanted.layout is not None:
        conf = wanted.layout.conf_dir
        plan.delete = [f"{conf}/leampoll-{name}.conf" for name in plan.remove_files] + plan.delete
        plan.write_files = [
            {"path": f"{conf}/leampoll-{name}.conf", "name": name, "mode": "0600"}
            for name in plan.write
        ] + plan.write_files
    idle = ["leam-idle-shutdown"]
    plan.remove_programs = [f"leampoll-{n}" for n in plan.remove] + (
        idle if plan.idle_remove else []
    )
    plan.supervise = [
        {"name": name, "state": "present"}
        for name in [f"leampoll-{n}" for n in plan.add] + (idle if plan.idle_add else [])
    ] + [{"name": f"leampoll-{n}", "state": "started"} for n in plan.start]
    return plan


def _stale_paths(plan: Plan, wanted: Wanted) -> list[str]:
    """The files no poller needs any more, apart from program files (Supervisor's)."""
    layout = wanted.layout
    if layout is None:
        return []
    paths = [layout.idle_conf] if wanted.idle is None else []
    if layout.password_file_mode:
        paths += [f"{layout.password_dir}/{name}.password" for name in plan.absent]
    else:
        paths.append(layout.password_dir)
    if layout.metrics_dir:
        paths += [f"{layout.metrics_dir}/leampoll-{name}.prom" for name in plan.absent]
    return paths


def pip_argv(
    build: Mapping, venv: str, prefix: str, install_mode: str, extra_args: Iterable[str] = ()
) -> list[str]:
    """pip's command line installing the plan's build (copied to prefix/dist) with its
    extras; in wheelhouse mode the dependencies come from the unpacked wheelhouse only."""
    offline = ["--no-index", "--find-links", f"{prefix}/wheelhouse"]
    return [
        f"{venv}/bin/python",
        *("-m", "pip", "install", "--disable-pip-version-check", "--no-input"),
        "--force-reinstall",
        *(offline if install_mode == "wheelhouse" else []),
        *(str(arg) for arg in extra_args),
        f"{prefix}/dist/{build['wheel_name']}{build['extras']}",
    ]


def drain(host: Host, wanted: Wanted) -> Plan:
    """playbooks/drain.yml: every chosen running poller, in the inventory or not."""
    plan = Plan(action="drain")
    _waiting(host, wanted, [n for n in host.running if wanted.is_chosen(n)], plan)
    return plan


def resume(host: Host, wanted: Wanted) -> Plan:
    """playbooks/resume.yml: start the exited pollers of chosen present projects."""
    present = wanted.present
    return Plan(
        action="resume",
        present=present,
        start=[
            name
            for name, state in host.states.items()
            if state not in BUSY_STATES and name in present and wanted.is_chosen(name)
        ],
    )


# -- from what Ansible hands over ------------------------------------------------------


def _number(value: Any, name: str) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise ValueError(f"leampoll_plan: {name} must be a number, not {value!r}") from None


def states(text: str | None) -> dict[str, str]:
    """`supervisorctl status` output -> Supervisor state by project (leampoll-* only)."""
    return dict(STATUS_LINE.findall(text or ""))


def settling(text: str | None) -> list[str]:
    return [name for name, state in states(text).items() if state in SETTLING_STATES]


def _outputs(value: Any) -> str:
    """The stdout of a command result, of every result of a loop, or a text."""
    if isinstance(value, Mapping):
        if "results" in value:
            return "\n".join(_outputs(r) for r in value["results"])
        return str(value.get("stdout") or "")
    return str(value or "")


def busy(value: Any) -> list[str]:
    return [name for name, state in states(_outputs(value)).items() if state in BUSY_STATES]


def projects(items: Iterable[Mapping]) -> list[Project]:
    if isinstance(items, (str, Mapping)) or not all(
        isinstance(p, Mapping) and "name" in p for p in items
    ):
        # Never the value: a project holds its portal password.
        raise ValueError(
            "leampoll_plan: leam_projects must be a list of projects, each with "
            f"a name (got a {type(items).__name__})"
        )
    return [Project(str(p["name"]), str(p.get("state") or "present")) for p in items]


def host_from(data: Mapping) -> Host:
    """Host from the role's reads (see tasks/main.yml)."""
    files = {}
    idle = None
    for found in data.get("files") or []:
        match = PROGRAM_FILE.search(found["path"])
        if IDLE_FILE.search(found["path"]):
            idle = str(found.get("checksum", ""))
        elif match:
            files[match.group(1)] = ProgramFile(
                str(found.get("checksum", "")),
                str(found.get("mode", "")),
                str(found.get("pw_name", "")),
                str(found.get("gr_name", "")),
            )
    installed = data.get("installed") or {}
    raw = data.get("states")
    return Host(
        states=states(raw) if isinstance(raw, str) else dict(raw or {}),
        files=files,
        installed=installed.get("checksum") if installed.get("exists") else None,
        busy=busy(data.get("busy")),
        supervisor=bool(data.get("supervisor", True)),
        passwords={
            match.group(1): str(found.get("checksum", ""))
            # One find reads both folders: the names tell the files apart.
            for found in data.get("password_files") or data.get("files") or []
            if (match := PASSWORD_FILE.search(found["path"]))
        },
        idle=idle,
    )


def wanted_from(data: Mapping) -> Wanted:
    """Wanted from the role's data; programs, passwords and idle are the files' texts
    (rendered once, in tasks/plan.yml), of which only the sha1 is kept."""
    build = data.get("build")
    chosen = data.get("chosen", "all")
    idle = data.get("idle")
    layout = data.get("layout")
    return Wanted(
        projects=projects(data.get("projects") or []),
        files={
            **dict(data.get("files") or {}),
            **{name: sha1(text) for name, text in (data.get("programs") or {}).items()},
        },
        passwords={name: sha1(text) for name, text in (data.get("passwords") or {}).items()},
        idle=sha1(idle) if idle else None,
        build=(
            Build(
                str(build["wheel"]),
                str(build["sha256"]),
                str(build.get("dir", "")),
                str(data.get("extras") or ""),
            )
            if build
            else None
        ),
        chosen=_names(chosen),
        wait=_truth(data.get("wait", True)),
        timeout=_number(data.get("timeout", 3600), "timeout"),
        poll=max(1, _number(data.get("poll", 10), "poll")),
        check_mode=_truth(data.get("check_mode", False)),
        wheelhouse=data.get("install_mode") == "wheelhouse",
        layout=(
            Layout(
                conf_dir=str(layout["conf_dir"]),
                idle_conf=str(layout["idle_conf"]),
                password_dir=str(layout["password_dir"]),
                password_file_mode=layout["password_mode"] == "file",
                metrics_dir=str(layout["metrics_dir"]) if _truth(layout["metrics"]) else "",
            )
            if layout
            else None
        ),
    )


def _names(value: Any) -> list[str] | None:
    """leam_ops_projects: "all" (None here), a list of names, or names with commas."""
    if value is None or value == "all":
        return None
    if isinstance(value, str):
        return [n.strip() for n in value.split(",") if n.strip()]
    return [str(n) for n in value]


def leampoll_plan(host: Mapping, wanted: Mapping, action: str = "deploy") -> dict[str, Any]:
    """The plan as Ansible reads it: a dict of lists (and a few flags)."""
    if action not in ACTIONS:
        raise ValueError(
            f"leampoll_plan: action must be one of {', '.join(ACTIONS)}, not {action!r}"
        )
    make = {"deploy": deploy, "drain": drain, "resume": resume}[action]
    plan = make(host_from(host), wanted_from(wanted))
    plan.explain()
    return asdict(plan)


def not_ready(items: Iterable[Mapping], status_json: str | None, version: str) -> list[str]:
    """Present projects whose poller is not RUNNING `version` or has not polled since
    it started, from `leampoll status --json` (an unreadable answer: none is ready)."""
    try:
        rows = json.loads(status_json or "[]")
    except ValueError:
        rows = []
    found = {r.get("project"): r for r in rows if isinstance(r, Mapping)}
    wanted = (version or "").split()[-1:] or [""]

    def ready(row: Mapping) -> bool:
        ago, uptime = row.get("last_poll_ago"), row.get("uptime")
        numbers = all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in (ago, uptime)
        )
        return (
            row.get("supervisor") == "RUNNING"
            and row.get("version") == wanted[0]
            and numbers
            and ago <= uptime
        )

    return [name for name in Wanted(projects(items)).present if not ready(found.get(name, {}))]


class FilterModule:
    """The leampoll role's planning filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "leampoll_plan": leampoll_plan,
            "leampoll_states": states,
            "leampoll_settling": settling,
            "leampoll_busy": busy,
            "leampoll_not_ready": not_ready,
            "leampoll_pip_argv": pip_argv,
        }

"""The fleet a converging test, the demo and the benchmarks stand on: one builder.

`stand` starts sandbox hosts and a portal stand-in per project in the order
the tests need (leftovers of an interrupted run first gone, the portals up
before any host polls) and ends all of it, hosts before the portals they
poll, whatever the test did. `Inventory` is what is played against them: the
projects of each host, host and group variables over the settings every
sandbox fleet shares, written as one YAML inventory and converged with the
real `site.yml`. `leam_project` is one `leam_projects` item as tests write it.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from testing import playbook
from testing.portal_standin import PortalStandin
from testing.sandbox import Host, Sandbox
from testing.sandbox.inventory import write_inventory

GROUP = "leam_jobservers"
# A free-space floor a small job filesystem meets: every sandbox host's, one
# that provisions itself (cloud-init) too.
SANDBOX_MIN_FREE: dict[str, object] = {"leam_jobdir_min_free": "20M"}
# What every sandbox fleet converged from the controller shares: the floor and
# the wheelhouse (a sandbox host's pip may not reach an index).
SANDBOX_GROUP_VARS: dict[str, object] = {
    "leampoll_install_mode": "wheelhouse",
    **SANDBOX_MIN_FREE,
}


def leam_project(
    name: str, url: str, password: str, user: str = "poller", **settings: object
) -> dict:
    """One `leam_projects` item: a poller polling every second, with guard thresholds a
    sandbox host meets; `settings` add keys or override these."""
    return {
        "name": name,
        "portal_url": url,
        "portal_user": user,
        "portal_password": password,
        "speed": 1,
        "min_free_disk": "10M",
        "min_free_mem": "10M",
        **settings,
    }


@dataclass
class Inventory:
    """An inventory of a sandbox's hosts for the playbooks, and playing it.

    `projects` are the `leam_projects` of each host, `host_vars` its other
    variables, `group_vars` what `leam_jobservers` gets over `shared_vars`
    (`SANDBOX_GROUP_VARS`; a host that installs itself, by cloud-init, keeps
    only `SANDBOX_MIN_FREE`). `unreachable` adds hosts the sandbox has not, by
    name and an address nothing answers at, connected to as its hosts are: how
    a playbook meets a host that is down. Change them (or `dataclasses.replace`
    for a variant beside this one), then `write` (or `converge`); each
    playbook's output is kept in `log_dir`.
    """

    sandbox: Sandbox
    path: Path
    projects: dict[str, list[dict]] = field(default_factory=dict)
    host_vars: dict[str, dict] = field(default_factory=dict)
    group_vars: dict[str, object] = field(default_factory=dict)
    log_dir: Path | None = None
    shared_vars: Mapping[str, object] = field(default_factory=lambda: dict(SANDBOX_GROUP_VARS))
    unreachable: dict[str, str] = field(default_factory=dict)

    def write(self) -> Path:
        hosts = {*self.projects, *self.host_vars}
        host_vars: Mapping[str, Mapping[str, object]] = {
            h: {**self.host_vars.get(h, {}), "leam_projects": self.projects.get(h, [])}
            for h in sorted(hosts)
        }
        group_vars = {GROUP: {**self.shared_vars, **self.group_vars}}
        # Never booted: only their connection variables are read.
        absent = [
            Host(name, address, Path("/nonexistent"), self.sandbox.key_file, index=-1)
            for name, address in self.unreachable.items()
        ]
        return write_inventory(
            [*self.sandbox.hosts(), *absent], self.path, host_vars=host_vars, group_vars=group_vars
        )

    def play(
        self,
        *args: str,
        playbook_name: str = "site.yml",
        extra: dict | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """`ansible-playbook` of the inventory as last written; `extra` as `-e @file`."""
        if extra is not None:
            extra_file = self.path.with_name(f"{self.path.stem}-extra.json")
            extra_file.write_text(json.dumps(extra))
            args = (*args, "-e", f"@{extra_file}")
        return playbook.run(self.path, playbook_name, *args, env=env, log_dir=self.log_dir)

    def converge(self, *args: str, **options) -> subprocess.CompletedProcess:
        """Write the inventory and run site.yml; a failed run fails the caller."""
        self.write()
        out = self.play(*args, **options)
        assert out.returncode == 0, out.stdout[-4000:]
        return out


@dataclass
class Stand:
    """The sandbox, the hosts brought up so far and the portals, by project."""

    sandbox: Sandbox
    user: str
    password: str
    stack: contextlib.ExitStack
    portals: dict[str, PortalStandin] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)

    def portal(self, project: str) -> PortalStandin:
        """A started stand-in at /PROJECT, stopped with the stand."""
        self.portals[project] = PortalStandin(
            self.user, self.password, base_path=f"/{project}"
        ).start()
        return self.portals[project]

    def up(self, names: list[str], **options) -> list[Host]:
        """`Sandbox.hosts_up(names, **options)`, torn down with the stand."""
        hosts = self.stack.enter_context(self.sandbox.hosts_up(names, **options))
        self.hosts.update((h.name, h) for h in hosts)
        return hosts


@contextlib.contextmanager
def stand(
    state_dir: Path, projects: Iterable[str], password: str, user: str = "poller"
) -> Iterator[Stand]:
    """A fresh sandbox on state_dir and a portal per project; everything ended afterwards
    (hosts from `Stand.up` and any the test started itself with `sandbox.up`)."""
    sandbox = Sandbox(state_dir)
    sandbox.down_all()  # leftovers of an interrupted earlier run
    with contextlib.ExitStack() as stack:
        s = Stand(sandbox, user, password, stack)
        stack.callback(lambda: [p.stop() for p in s.portals.values()])
        stack.callback(sandbox.down_all)
        for project in projects:
            s.portal(project)
        yield s

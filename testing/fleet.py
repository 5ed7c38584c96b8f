"""Sandbox hosts with a portal stand-in per project: the fleet a converging test stands on.

One place that starts them in the order the tests need (leftovers of an
interrupted run first gone, the portals up before any host polls) and ends
all of it, hosts before the portals they poll, whatever the test did.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from testing.portal_standin import PortalStandin
from testing.sandbox import Host, Sandbox


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

"""The leampoll role's file mode on a real sandbox host: the password in a 0400 file of
the poller account, none in Supervisor's program file, and a rotated password taken by
the running poller on SIGHUP, without a restart and without stopping its job.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.fleet import Inventory, leam_project
from testing.marks import sandbox_hosts
from testing.playbook import recap
from testing.portal_standin import PortalStandin
from testing.sandbox import TEST_STATE_DIR, Host, Sandbox

pytestmark = sandbox_hosts(1500)

OLD, NEW = 'old p@ss "w%rd\\ 1', "n3w 'pa%ss w0rd"
PROJECT = "quincy"
PASSWORD_FILE = f"/etc/leampoll/passwords/{PROJECT}.password"
CONF = f"/etc/supervisor/conf.d/leampoll-{PROJECT}.conf"


class Site:
    """One host, one portal, and the inventory naming the portal's password."""

    def __init__(self, sandbox: Sandbox, host: Host, portal: PortalStandin, workdir: Path):
        self.sandbox, self.host, self.portal, self.dir = sandbox, host, portal, workdir
        self.inventory = workdir / "inventory.yml"

    def play(self, password: str, *args: str):
        inventory = Inventory(
            self.sandbox,
            self.inventory,
            projects={
                self.host.name: [leam_project(PROJECT, self.portal.url, password, speed=0.5)]
            },
            group_vars={"leampoll_password_mode": "file"},
            log_dir=self.dir,
        )
        inventory.write()
        return inventory.play(*args)

    def pid(self) -> int:
        out = self.host.ssh(f"supervisorctl status leampoll-{PROJECT}").stdout
        assert " RUNNING " in out, out
        return int(out.split("pid ")[1].split(",")[0])


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    sandbox = Sandbox(TEST_STATE_DIR)
    portal = PortalStandin("poller", OLD, base_path=f"/{PROJECT}").start()
    try:
        with sandbox.hosts_up(["pwfile"]) as hosts:
            yield Site(sandbox, hosts[0], portal, tmp_path_factory.mktemp("pwfile"))
    finally:
        portal.stop()


def test_file_mode_keeps_the_password_in_a_0400_file_and_rotates_it_on_sighup(site):
    out = site.play(OLD)
    assert out.returncode == 0, out.stdout[-4000:]
    host = site.host
    assert host.ssh(f"stat -c '%a %U %G' {PASSWORD_FILE}").stdout.split() == ["400", "leam", "leam"]
    assert host.ssh("stat -c '%a %U' /etc/leampoll/passwords").stdout.split() == ["700", "leam"]
    conf = host.ssh(f"cat {CONF}").stdout
    assert f"PORTAL_PASSWORD_FILE='{PASSWORD_FILE}'" in conf
    assert "PORTAL_PASSWORD=" not in conf and "p@ss" not in conf
    pid = site.pid()
    environ = host.ssh(f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout.splitlines()
    assert not [e for e in environ if e.startswith("PORTAL_PASSWORD=")]
    man = host.ssh("stat -c '%a %U' /usr/local/share/man/man1/leampoll.1").stdout.split()
    assert man == ["644", "root"]
    portal = site.portal
    portal.wait_for(lambda p: [r for r in p.requests_of("pop") if r.user == "poller"], 60)

    # A job runs while the password is rotated (the portal first, then the inventory),
    # until the test lets it end (bounded: 120 s).
    portal.queue(
        "during-rotation",
        "sh -c 'for i in $(seq 1200); do [ -e /tmp/rotated ] && exit 0; sleep 0.1; done; exit 1'",
    )
    portal.wait_for(lambda p: p.status.get("during-rotation") == "running", 60)
    with portal.lock:
        portal.password = NEW
    rotated_at = time.time()
    out = site.play(NEW, "--diff")
    assert out.returncode == 0, out.stdout[-4000:]
    assert recap(out.stdout)[host.name]["changed"] >= 2  # the file, and the HUP
    assert "n3w" not in out.stdout and "p@ss" not in out.stdout
    assert host.ssh(f"cat {PASSWORD_FILE}").stdout == NEW + "\n"
    assert site.pid() == pid  # not restarted
    assert portal.status["during-rotation"] == "running"
    host.ssh("touch /tmp/rotated")
    portal.wait_for(lambda p: p.status.get("during-rotation") == "complete", 60)
    portal.wait_for(
        lambda p: [r for r in p.requests_of("pop") if r.at > rotated_at and r.user == "poller"], 60
    )
    assert site.pid() == pid
    assert not portal.reports("requeue")
    log = host.ssh(f"cat /var/log/supervisor/leampoll-{PROJECT}.log").stdout
    assert "the new password is in use" in log and "n3w" not in log and "p@ss" not in log

    again = site.play(NEW)
    assert again.returncode == 0 and recap(again.stdout)[host.name]["changed"] == 0

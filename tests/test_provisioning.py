"""`ansible-playbook site.yml` over real SSH to real sandbox hosts, with real pollers.

Three systemd hosts: `alpha` (bookworm, two projects) and `beta` (trixie, one
project) converge; `tiny`
has a 40 MB job filesystem and must fail the free-space check without
stopping the others. Each project has its own portal stand-in on 127.0.0.1,
which the hosts reach because they share the machine's network.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testing import playbook
from testing.fleet import Inventory, leam_project, stand
from testing.marks import sandbox_hosts
from testing.playbook import recap
from testing.portal_standin import PortalStandin
from testing.sandbox import TEST_STATE_DIR, Host, Sandbox
from testing.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = TEST_STATE_DIR
PASSWORD = 'p@ss "w%rd\\ 1'  # supervisor specials: quotes, %, backslash, space

pytestmark = sandbox_hosts(1500)

PROJECTS = {"alpha": ["chicago", "peoria"], "beta": ["stlouis"]}


class Fleet:
    """The sandbox hosts, their portals and the inventory that ties them together."""

    def __init__(
        self,
        sandbox: Sandbox,
        hosts: dict[str, Host],
        portals: dict[str, PortalStandin],
        workdir: Path,
    ) -> None:
        self.sandbox = sandbox
        self.hosts = hosts
        self.portals = portals
        self.dir = workdir
        self.deployed = Inventory(
            sandbox,
            workdir / "inventory.yml",
            host_vars={"tiny": {"leam_jobdir_min_free": "1G"}},
            group_vars={"leampoll_drain_timeout": 300},
            log_dir=workdir,
        )
        self.overrides: dict[str, dict[str, dict]] = {}
        self.upgraded = False  # a build other than the checkout's is installed

    @property
    def inventory(self) -> Path:
        """The inventory played: the deployed one, or one a test wrote for itself."""
        return self.deployed.path

    def ensure(self, project: str, state: str) -> None:
        """Bring an alpha project to `present` or `absent` unless it is so already.

        Tests that need one or the other ask for it, so each runs alone or in
        any order; in file order this converges nothing (the absent test
        itself makes peoria absent for the ones after it).
        """
        settings = self.overrides.get(project, {})
        if settings.get("state", "present") == state:
            return
        settings = {k: v for k, v in settings.items() if k != "state"}
        self.overrides[project] = settings if state == "present" else {**settings, "state": state}
        self.write()
        out = self.play("--limit", "alpha")
        assert out.returncode == 0, out.stdout[-4000:]

    def as_checkout(self) -> None:
        """The checkout's build on alpha and beta again, after an upgrade test."""
        if self.upgraded:
            out = self.play("--limit", "alpha,beta")
            assert out.returncode == 0, out.stdout[-4000:]
            self.upgraded = False

    def project(self, name: str, **settings) -> dict:
        return leam_project(
            name,
            self.portals[name].url,
            PASSWORD,
            job_timeout=0,
            **{**self.overrides.get(name, {}), **settings},
        )

    def write(self) -> None:
        self.deployed.projects = {
            h: [self.project(p) for p in projects] for h, projects in PROJECTS.items()
        }
        self.deployed.projects["tiny"] = [self.project("tinyproj")]
        self.deployed.write()

    def play(self, *args: str, extra: dict | None = None) -> subprocess.CompletedProcess:
        return self.deployed.play(*args, extra=extra)

    def program(self, host: str, project: str) -> tuple[str, int | None]:
        """Supervisor state and pid of a project's poller."""
        out = self.hosts[host].ssh(f"supervisorctl status leampoll-{project}").stdout
        fields = out.split()
        pid = re.search(r"pid (\d+)", out)
        return (fields[1] if len(fields) > 1 else "MISSING"), int(pid.group(1)) if pid else None


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    names = [*PROJECTS["alpha"], *PROJECTS["beta"], "tinyproj"]
    with stand(STATE_DIR, names, PASSWORD) as s:
        # systemd hosts, beta on Debian 13 beside the bookworm ones
        s.up(["alpha", "beta", "tiny"], jobdir_size={"tiny": "40M"}, suites={"beta": "trixie"})
        f = Fleet(s.sandbox, s.hosts, s.portals, tmp_path_factory.mktemp("fleet"))
        f.write()
        f.first = f.play()
        yield f


@pytest.fixture
def peoria_present(fleet) -> None:
    fleet.ensure("peoria", "present")


@pytest.fixture
def peoria_absent(fleet) -> None:
    fleet.ensure("peoria", "absent")


@pytest.fixture
def own_inventory(fleet) -> Iterator[Fleet]:
    """For a test that plays an inventory of its own (as `fleet.deployed`): the one the
    other tests write and play is back afterwards, and the hosts converged to it."""
    deployed = fleet.deployed
    yield fleet
    if fleet.deployed is not deployed:
        fleet.deployed = deployed
        out = fleet.play("--limit", "alpha,beta")
        assert out.returncode == 0, out.stdout[-4000:]


@pytest.fixture
def checkout_build(fleet) -> None:
    fleet.as_checkout()


@pytest.mark.usefixtures("peoria_present")
def test_converges_bare_hosts_and_pollers_run_jobs(fleet):
    out = fleet.first.stdout
    rc = recap(out)
    assert rc["alpha"]["failed"] == 0 and rc["beta"]["failed"] == 0, out[-4000:]
    assert rc["alpha"]["changed"] > 0
    for host, projects in PROJECTS.items():
        for project in projects:
            state, pid = fleet.program(host, project)
            assert state == "RUNNING", (host, project, state)
            user = fleet.hosts[host].ssh(f"ps -o user= -p {pid}").stdout.strip()
            assert user == "leam"
            portal = fleet.portals[project]
            portal.queue(f"{project}-first", "sh -c 'test \"$(id -un)\" = leam'")
    for project in [*PROJECTS["alpha"], *PROJECTS["beta"]]:
        fleet.portals[project].wait_for(
            lambda p, j=f"{project}-first": p.status.get(j) == "complete", timeout=60
        )
        assert fleet.portals[project].outcome(f"{project}-first") == "success"
    assert PASSWORD not in out


def test_a_bare_subversion_url_is_checked_out_on_a_host(fleet):
    # The role installed subversion: a repository on the host, given as a bare URL.
    fleet.hosts["alpha"].ssh(
        "svnadmin create /srv/model && mkdir -p /tmp/model"
        " && echo 'echo ran > out.txt' > /tmp/model/startup.sh"
        " && svn import -q -m m /tmp/model file:///srv/model/trunk",
        check=True,
    )
    portal = fleet.portals["chicago"]
    portal.queue("svn-job", "sh startup.sh", repository="file:///srv/model/trunk")
    portal.wait_for(lambda p: p.status.get("svn-job") == "complete", timeout=60)
    assert portal.outcome("svn-job") == "success", portal.ending("svn-job")


def test_program_file_keeps_secrets_off_the_command_line(fleet):
    alpha = fleet.hosts["alpha"]
    conf = "/etc/supervisor/conf.d/leampoll-chicago.conf"
    mode = alpha.ssh(f"stat -c '%a %U' {conf}").stdout.split()
    assert mode == ["600", "root"]
    _, pid = fleet.program("alpha", "chicago")
    cmdline = alpha.ssh(f"tr '\\0' ' ' < /proc/{pid}/cmdline").stdout
    assert "p@ss" not in cmdline and "--workdir /mnt/jobdir/chicago" in cmdline
    environ = alpha.ssh(f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout.splitlines()
    assert f"PORTAL_PASSWORD={PASSWORD}" in environ  # survives supervisor's quoting
    link = alpha.ssh("stat -L -c '%a %U %G' /usr/local/bin/leampoll").stdout.split()
    assert link == ["550", "root", "leam"]


def test_tiny_host_fails_free_space_check_with_one_clear_message(fleet):
    out = fleet.first.stdout
    assert recap(out)["tiny"]["failed"] == 1
    line = next(line for line in out.splitlines() if "leam_jobdir_min_free" in line)
    assert "tiny" in line and "/mnt/jobdir" in line
    state, _ = fleet.program("tiny", "tinyproj")
    assert state != "RUNNING"


@pytest.mark.usefixtures("checkout_build")
def test_second_run_changes_nothing_and_check_diff_is_clean(fleet):
    out = fleet.play("--limit", "alpha,beta")
    rc = recap(out.stdout)
    assert out.returncode == 0, out.stdout[-4000:]
    assert rc["alpha"]["changed"] == 0 and rc["beta"]["changed"] == 0, out.stdout[-4000:]
    check = fleet.play("--limit", "alpha,beta", "--check", "--diff")
    rc = recap(check.stdout)
    assert check.returncode == 0, check.stdout[-4000:]
    assert rc["alpha"]["changed"] == 0 and rc["alpha"]["failed"] == 0
    assert PASSWORD not in check.stdout and "p@ss" not in check.stdout


# The roles as a playbook of someone else's would use them: no validation play
# before them, so each role checks its variables itself.
ROLES_ALONE = """\
- name: The job server roles without site.yml's validation play
  hosts: leam_jobservers
  become: true
  gather_facts: true
  gather_subset: ["!all", "!min", "service_mgr"]
  roles:
    - role: jobdir
    - role: supervisor
      vars:
        supervisor_programs_stopwaitsecs: "{{ __leampoll_programs_stopwaitsecs }}"
    - role: leampoll
"""
ROLE_ALONE = """\
- name: The {role} role alone
  hosts: leam_jobservers
  become: true
  gather_facts: true
  gather_subset: ["!all", "!min", "service_mgr"]
  roles:
    - role: {role}
"""


def roles_play(fleet, text: str, *args: str) -> subprocess.CompletedProcess:
    path = fleet.dir / f"roles-{len(list(fleet.dir.glob('roles-*.yml')))}.yml"
    path.write_text(text)
    return playbook.run(fleet.inventory, str(path), *args, log_dir=fleet.dir)


@pytest.mark.usefixtures("checkout_build")
def test_roles_alone_check_their_own_variables_and_change_nothing(fleet):
    out = roles_play(fleet, ROLES_ALONE, "--limit", "alpha,beta")
    assert out.returncode == 0, out.stdout[-4000:]
    for role in ("jobdir", "supervisor", "leampoll"):
        # Ansible names the hosts in the order they finished the task before.
        included = re.search(rf"roles/{role}/tasks/validate.yml for (.+)", out.stdout)
        assert included and sorted(included[1].split(", ")) == ["alpha", "beta"], role
    rc = recap(out.stdout)
    assert rc["alpha"]["changed"] == 0 and rc["beta"]["changed"] == 0, out.stdout[-4000:]
    assert PASSWORD not in out.stdout


ALONE_BAD = [
    ("jobdir", "leam_user=root", "alpha: leam_user must be a user name"),
    (
        "supervisor",
        "supervisor_conf=etc/supervisor/supervisord.conf",
        "alpha: supervisor_packages must not be empty, and supervisor_conf",
    ),
    ("leampoll", "leampoll_speed=0", "alpha: leampoll_speed must be a number of seconds"),
]


@pytest.mark.parametrize("role,extra,message", ALONE_BAD, ids=[b[0] for b in ALONE_BAD])
def test_a_role_alone_stops_a_bad_variable_before_any_change(fleet, role, extra, message):
    before = fleet.hosts["alpha"].ssh("md5sum /etc/supervisor/conf.d/*.conf").stdout
    out = roles_play(fleet, ROLE_ALONE.format(role=role), "--limit", "alpha", "-e", extra)
    assert out.returncode != 0
    assert f"roles/{role}/tasks/validate.yml for alpha" in out.stdout, out.stdout[-3000:]
    assert message in out.stdout, out.stdout[-3000:]
    rc = recap(out.stdout)["alpha"]
    assert rc["changed"] == 0 and rc["failed"] == 1, out.stdout[-3000:]
    assert fleet.hosts["alpha"].ssh("md5sum /etc/supervisor/conf.d/*.conf").stdout == before
    assert PASSWORD not in out.stdout


BAD = [
    ("missing portal_url", {"portal_url": None}, "portal_url"),
    ("unsafe name", {"name": "../etc"}, "name"),
    ("bad size", {"min_free_disk": "10Q"}, "min_free_disk"),
    ("bad state", {"state": "gone"}, "state"),
]


@pytest.mark.parametrize("label,change,variable", BAD, ids=[b[0] for b in BAD])
def test_bad_variable_fails_before_any_change(fleet, label, change, variable):
    project = {k: v for k, v in fleet.project("chicago").items()}
    for key, value in change.items():
        if value is None:
            project.pop(key)
        else:
            project[key] = value
    before = fleet.hosts["alpha"].ssh("md5sum /etc/supervisor/conf.d/*.conf").stdout
    out = fleet.play("--limit", "alpha", extra={"leam_projects": [project]})
    assert out.returncode != 0
    assert "leam_projects" in out.stdout and variable in out.stdout, out.stdout[-3000:]
    assert "alpha" in out.stdout
    assert recap(out.stdout)["alpha"]["changed"] == 0
    assert fleet.hosts["alpha"].ssh("md5sum /etc/supervisor/conf.d/*.conf").stdout == before
    assert PASSWORD not in out.stdout


def test_duplicate_project_name_and_bad_jobdir_size_fail(fleet):
    dup = [fleet.project("chicago"), fleet.project("chicago")]
    out = fleet.play("--limit", "alpha", extra={"leam_projects": dup})
    assert out.returncode != 0 and "duplicate" in out.stdout.lower()
    out = fleet.play("--limit", "alpha", extra={"leam_jobdir_min_free": "plenty"})
    assert out.returncode != 0 and "leam_jobdir_min_free" in out.stdout
    out = fleet.play(
        "--limit",
        "alpha",
        extra={"leampoll_metrics": True, "leampoll_node_exporter_listen_address": "9100"},
    )
    assert out.returncode != 0 and "leampoll_node_exporter_listen_address" in out.stdout
    assert recap(out.stdout)["alpha"]["changed"] == 0


@pytest.mark.usefixtures("peoria_present")
def test_settings_change_waits_for_running_job_and_spares_other_projects(fleet):
    portal = fleet.portals["chicago"]
    portal.queue("long-model", "sleep 8")
    portal.wait_for(lambda p: p.status.get("long-model") == "running", timeout=30)
    _, other_pid = fleet.program("alpha", "peoria")
    _, old_pid = fleet.program("alpha", "chicago")
    fleet.overrides["chicago"] = {"speed": 2}
    fleet.write()
    out = fleet.play("--limit", "alpha")
    assert out.returncode == 0, out.stdout[-4000:]
    # The job was not killed: it finished and was reported before the new poller started.
    assert portal.status["long-model"] == "complete"
    state, new_pid = fleet.program("alpha", "chicago")
    assert state == "RUNNING" and new_pid != old_pid
    cmdline = fleet.hosts["alpha"].ssh(f"tr '\\0' ' ' < /proc/{new_pid}/cmdline").stdout
    assert "--speed 2" in cmdline
    assert fleet.program("alpha", "peoria") == ("RUNNING", other_pid)
    assert [r.kind for r in portal.reports()].count("requeue") == 0


@pytest.mark.usefixtures("peoria_present")
def test_absent_drains_and_removes_program_keeps_job_tree(fleet):
    portal = fleet.portals["peoria"]
    portal.queue("last-job", "sleep 3")
    portal.wait_for(lambda p: p.status.get("last-job") == "running", timeout=30)
    fleet.overrides["peoria"] = {"state": "absent"}
    fleet.write()
    out = fleet.play("--limit", "alpha")
    assert out.returncode == 0, out.stdout[-4000:]
    assert portal.status["last-job"] == "complete"
    alpha = fleet.hosts["alpha"]
    assert fleet.program("alpha", "peoria")[0] != "RUNNING"
    assert "peoria" not in alpha.ssh("supervisorctl status").stdout
    assert alpha.ssh("test -e /etc/supervisor/conf.d/leampoll-peoria.conf").returncode != 0
    assert alpha.ssh("test -d /mnt/jobdir/peoria").returncode == 0
    wait_until(lambda: fleet.program("alpha", "chicago")[0] == "RUNNING", 10, "chicago runs")


def held_job(name: str) -> str:
    """A job that runs until the test releases it (`release`), at most 10 minutes."""
    return (
        f"sh -c 'for i in $(seq 1200); do test -e /var/tmp/release-{name} && exit 0; "
        f"sleep 0.5; done; exit 1'"
    )


def release(fleet, host: str, name: str) -> None:
    fleet.hosts[host].ssh(f"touch /var/tmp/release-{name}", check=True)


def ops_play(
    fleet,
    name: str,
    *args: str,
    inventory: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run one of playbooks/ against the fleet (or another inventory)."""
    return playbook.run(inventory or fleet.inventory, f"playbooks/{name}", *args, log_dir=fleet.dir)


def host_status(fleet, host: str) -> dict[str, dict]:
    """`leampoll status --json` on a host, by project."""
    out = fleet.hosts[host].ssh("/usr/local/bin/leampoll status --json")
    assert out.returncode == 0, out.stderr
    return {r["project"]: r for r in json.loads(out.stdout)}


def installed_version(fleet, host: str) -> str:
    return fleet.hosts[host].ssh("/usr/local/bin/leampoll --version").stdout.split()[-1]


# The status tables below list chicago and stlouis only: they ask for peoria absent.


@pytest.mark.usefixtures("peoria_absent")
def test_status_without_arguments_lists_the_deployed_projects(fleet):
    alpha = fleet.hosts["alpha"]
    listed = json.loads(alpha.ssh("cat /etc/leampoll/projects.json").stdout)
    assert listed == [
        {
            "name": "chicago",
            "workdir": "/mnt/jobdir/chicago",
            "program": "leampoll-chicago",
            "log": "/var/log/supervisor/leampoll-chicago.log",
        }
    ]
    mode = alpha.ssh("stat -c '%a %U' /etc/leampoll/projects.json").stdout.split()
    assert mode == ["644", "root"]
    version = installed_version(fleet, "alpha")
    rows = host_status(fleet, "alpha")
    assert list(rows) == ["chicago"]
    assert rows["chicago"]["supervisor"] == "RUNNING"
    assert rows["chicago"]["version"] == version
    assert rows["chicago"]["log"] == "/var/log/supervisor/leampoll-chicago.log"


def table_rows(output: str) -> list[list[str]]:
    """The rows the status playbook printed, split into columns."""
    return [
        line.strip().strip('",').split()
        for line in output.splitlines()
        if re.match(r'^\s*"(alpha|beta|tiny|ghost)\s', line)
    ]


@pytest.mark.usefixtures("peoria_absent")
def test_status_playbook_prints_one_table_even_with_an_unreachable_host(fleet):
    version = installed_version(fleet, "alpha")
    out = ops_play(fleet, "status.yml")
    assert out.returncode == 0, out.stdout[-4000:]
    rows = table_rows(out.stdout)
    assert [r[:4] for r in rows] == [
        ["alpha", "chicago", "RUNNING", version],
        ["beta", "stlouis", "RUNNING", version],
        ["tiny", "-", "not", "installed"],
    ], out.stdout
    assert "pollers running 2/2" in out.stdout and "failing 0" in out.stdout
    assert recap(out.stdout)["alpha"]["changed"] == 0
    assert PASSWORD not in out.stdout

    # beta's twin at an address nothing answers at
    with_ghost = dataclasses.replace(
        fleet.deployed,
        path=fleet.dir / "with-ghost.yml",
        projects={**fleet.deployed.projects, "ghost": fleet.deployed.projects["beta"]},
        unreachable={"ghost": "127.0.0.250"},
    )
    out = ops_play(fleet, "status.yml", "--limit", "alpha,ghost", inventory=with_ghost.write())
    assert out.returncode == 0, out.stdout[-4000:]
    rows = table_rows(out.stdout)
    assert [r[:3] for r in rows] == [
        ["alpha", "chicago", "RUNNING"],
        ["ghost", "-", "unreachable"],
    ], out.stdout
    assert "unreachable 1 (ghost)" in out.stdout


def test_status_shows_a_running_job_and_a_guard_hold(fleet):
    chicago = fleet.portals["chicago"]
    chicago.queue("status-long", held_job("status-long"))  # runs until released below
    chicago.wait_for(lambda p: p.status.get("status-long") == "running", timeout=30)
    fleet.overrides["stlouis"] = {"min_free_disk": "1000T"}  # more than any disk here
    fleet.write()
    try:
        assert fleet.play("--limit", "beta").returncode == 0
        wait_until(
            lambda: host_status(fleet, "beta")["stlouis"]["guard"]["holding"] == ["disk"],
            30,
            "stlouis holds on its disk guard",
        )
        out = ops_play(fleet, "status.yml", "--limit", "alpha,beta")
        assert out.returncode == 0, out.stdout[-4000:]
        rows = {(r[0], r[1]): " ".join(r) for r in table_rows(out.stdout)}
        assert re.search(r"RUNNING \S+ \S+ status-long \(\d+[smh]\)", rows["alpha", "chicago"])
        assert re.search(r" disk \S+<1000\.00TB ", rows["beta", "stlouis"]), rows
        assert "jobs running 1; guard holds 1 (beta:stlouis (disk))" in out.stdout

        # --json agrees with what the portal saw.
        row = host_status(fleet, "alpha")["chicago"]
        assert row["job"]["id"] == "status-long"
        assert row["totals"] == chicago.told()
        assert f"/jobs/{row['last']['id']}/" in chicago.reports()[-1].path
    finally:
        release(fleet, "alpha", "status-long")
        fleet.overrides.pop("stlouis")
        fleet.write()
        assert fleet.play("--limit", "beta").returncode == 0
    chicago.wait_for(lambda p: p.status.get("status-long") == "complete", timeout=60)


def test_drain_finishes_the_running_job_and_resume_pops_the_queued_one(fleet):
    portal = fleet.portals["chicago"]
    portal.queue("drain-long", held_job("drain-long"))
    portal.wait_for(lambda p: p.status.get("drain-long") == "running", timeout=30)
    portal.queue("drain-queued", "true")
    _, stlouis_pid = fleet.program("beta", "stlouis")

    def drains() -> int:  # the poller's log says so once per SIGUSR1
        log = fleet.hosts["alpha"].ssh("cat /var/log/supervisor/leampoll-chicago.log").stdout
        return log.count("SIGUSR1: draining")

    before = drains()
    with ThreadPoolExecutor(1) as pool:
        play = pool.submit(
            ops_play,
            fleet,
            "drain.yml",  # all hosts: tiny has nothing to drain
            "-e",
            '{"leam_ops_projects": ["chicago"]}',
            "-e",
            "leam_ops_wait_timeout=120",
        )
        # The job ends only once its poller is draining.
        wait_until(lambda: drains() > before or play.done(), 120, "chicago's poller draining")
        release(fleet, "alpha", "drain-long")
        out = play.result()
    assert out.returncode == 0, out.stdout[-4000:]
    assert recap(out.stdout)["tiny"]["failed"] == 0
    # The play returned after the job was done and reported, not killed.
    assert portal.status["drain-long"] == "complete"
    assert fleet.program("alpha", "chicago")[0] == "EXITED"
    assert fleet.program("beta", "stlouis") == ("RUNNING", stlouis_pid)  # not chosen
    # The poller has exited: the queued job can no longer be popped.
    assert portal.status["drain-queued"] == "queued"
    assert [r.kind for r in portal.reports()].count("requeue") == 0

    out = ops_play(fleet, "resume.yml")
    assert out.returncode == 0, out.stdout[-4000:]
    assert {h: c["changed"] for h, c in recap(out.stdout).items()} == {
        "alpha": 1,
        "beta": 0,
        "tiny": 0,
    }
    assert fleet.program("alpha", "chicago")[0] == "RUNNING"
    portal.wait_for(lambda p: p.status.get("drain-queued") == "complete", timeout=60)
    out = ops_play(fleet, "resume.yml", "--limit", "alpha")
    assert recap(out.stdout)["alpha"]["changed"] == 0


def newer_source(fleet, version: str) -> Path:
    """A copy of the poller's source tree whose version is `version`."""
    tree = fleet.dir / f"source-{version}"
    shutil.copytree(
        ROOT / "leampoll", tree / "leampoll", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    init = tree / "leampoll" / "__init__.py"
    text, n = re.subn(r'__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text())
    assert n == 1
    init.write_text(text)
    return tree


@pytest.mark.usefixtures("checkout_build")
def test_upgrade_leaves_a_host_whose_job_outlasts_the_bound(fleet):
    chicago = fleet.portals["chicago"]
    before = {h: installed_version(fleet, h) for h in ("alpha", "beta")}
    # Runs until the test releases it: the play may take long on a busy machine.
    chicago.queue("outlasts", "sh -c 'until [ -e release ]; do sleep 0.2; done'")
    chicago.wait_for(lambda p: p.status.get("outlasts") == "running", timeout=30)
    source = newer_source(fleet, "3.98.0")
    out = ops_play(
        fleet,
        "upgrade.yml",
        "--limit",
        "alpha,beta",
        "-e",
        f"leampoll_source={source}",
        "-e",
        "leam_ops_wait_timeout=1",
    )
    fleet.hosts["alpha"].ssh("touch /mnt/jobdir/chicago/outlasts/release", check=True)
    assert out.returncode != 0
    assert "leampoll-chicago still running a job" in out.stdout, out.stdout[-4000:]
    assert "upgrade to 3.98.0 postponed" in out.stdout
    assert "beta" not in recap(out.stdout)  # the rollout stopped before beta's turn
    assert {h: installed_version(fleet, h) for h in ("alpha", "beta")} == before
    # The job was left to run: it ends and is reported, never handed back.
    chicago.wait_for(lambda p: p.status.get("outlasts") == "complete", timeout=60)
    assert [r.kind for r in chicago.reports()].count("requeue") == 0
    out = ops_play(fleet, "resume.yml", "--limit", "alpha")
    assert out.returncode == 0 and fleet.program("alpha", "chicago")[0] == "RUNNING"


@pytest.mark.usefixtures("peoria_absent", "checkout_build")
def test_upgrade_rolls_host_by_host_and_kills_no_job(fleet):
    chicago, stlouis = fleet.portals["chicago"], fleet.portals["stlouis"]
    chicago.queue("upgrade-long", "sleep 8")
    chicago.wait_for(lambda p: p.status.get("upgrade-long") == "running", timeout=30)
    source = newer_source(fleet, "3.99.0")
    fleet.upgraded = True
    out = ops_play(
        fleet,
        "upgrade.yml",
        "--limit",
        "alpha,beta",
        "-e",
        f"leampoll_source={source}",
        "-e",
        "leam_ops_wait_timeout=120",
    )
    assert out.returncode == 0, out.stdout[-4000:]
    # The job ran to its end and was reported; nothing was handed back.
    assert chicago.status["upgrade-long"] == "complete"
    assert [r.kind for r in chicago.reports() + stlouis.reports()].count("requeue") == 0
    # One host at a time, alpha first: beta's poller was replaced only after
    # alpha's long job had been reported.
    batches = re.findall(r"^PLAY \[Upgrade the LEAM pollers\]", out.stdout, re.M)
    assert len(batches) == 2, out.stdout[-4000:]
    finished = chicago.ending("upgrade-long").at
    new_pops = [r.at for r in stlouis.reports("pop") if "leampoll/3.99.0" in r.agent]
    assert new_pops and min(new_pops) > finished
    # Both hosts show the new version, every poller runs and polls again.
    table = ops_play(fleet, "status.yml", "--limit", "alpha,beta")
    rows = table_rows(table.stdout)
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("alpha", "chicago", "RUNNING", "3.99.0"),
        ("beta", "stlouis", "RUNNING", "3.99.0"),
    ]
    chicago.queue("after-upgrade-a", "true")
    stlouis.queue("after-upgrade-b", "true")
    chicago.wait_for(lambda p: p.status.get("after-upgrade-a") == "complete", timeout=60)
    stlouis.wait_for(lambda p: p.status.get("after-upgrade-b") == "complete", timeout=60)
    # Nothing left to upgrade: a second rollout changes nothing.
    again = ops_play(
        fleet, "upgrade.yml", "--limit", "alpha,beta", "-e", f"leampoll_source={source}"
    )
    assert again.returncode == 0, again.stdout[-4000:]
    assert {h: c["changed"] for h, c in recap(again.stdout).items()} == {"alpha": 0, "beta": 0}


def scrape(address: str) -> dict[tuple[str, frozenset], float]:
    """node_exporter's /metrics at address, as {(name, labels): value}."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    series = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            series[(s.name, frozenset(s.labels.items()))] = s.value
    return series


def jobs_total(series: dict, project: str) -> dict[str, float]:
    return {
        dict(labels)["outcome"]: value
        for (name, labels), value in series.items()
        if name == "leampoll_jobs_total" and dict(labels).get("project") == project
    }


@pytest.mark.usefixtures("own_inventory")
def test_node_exporter_serves_the_pollers_series(fleet):
    addresses = {name: f"{fleet.hosts[name].address}:9100" for name in ("alpha", "beta")}
    deployed = fleet.deployed
    fleet.deployed = dataclasses.replace(
        deployed,
        path=fleet.dir / "with-metrics.yml",
        host_vars={
            **deployed.host_vars,
            **{
                name: {
                    **deployed.host_vars.get(name, {}),
                    "leampoll_node_exporter_listen_address": a,
                }
                for name, a in addresses.items()
            },
        },
        group_vars={**deployed.group_vars, "leampoll_metrics": True},
    )
    fleet.deployed.write()
    out = fleet.play("--limit", "alpha,beta")
    assert out.returncode == 0, out.stdout[-4000:]
    assert fleet.play("--limit", "alpha,beta").stdout.count("changed=0") == 2

    fleet.portals["chicago"].queue("metrics-ok", "true")
    fleet.portals["chicago"].queue("metrics-fail", "exit 3")
    fleet.portals["stlouis"].queue("metrics-ok-b", "true")
    fleet.portals["chicago"].wait_for(lambda p: p.outcome("metrics-fail") == "error", timeout=60)
    fleet.portals["stlouis"].wait_for(
        lambda p: p.status.get("metrics-ok-b") == "complete", timeout=60
    )
    for host, project in (("alpha", "chicago"), ("beta", "stlouis")):
        portal = fleet.portals[project]
        seen = portal.told()
        # Scraped over loopback from the host's own address; the poller
        # rewrites its file after every cycle.
        wait_until(
            lambda h=host, p=project, s=seen: jobs_total(scrape(addresses[h]), p) == s,
            30,
            f"{project}'s leampoll_jobs_total as the portal saw: {seen}",
        )
        series = scrape(addresses[host])
        names = {name for name, labels in series if ("project", project) in labels}
        assert {
            "leampoll_job_running",
            "leampoll_last_poll_timestamp_seconds",
            "leampoll_reports_pending",
            "leampoll_build_info",
            "leampoll_job_duration_seconds_count",
            "leampoll_guard_hold",
        } <= names
        assert series[("leampoll_job_running", frozenset({("project", project)}))] == 0
        assert ("node_load1", frozenset()) in series  # node_exporter's own series as well

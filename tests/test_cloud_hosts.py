"""A job server that provisions itself at boot, and leaves without killing a job.

One systemd sandbox host with Debian's cloud-init in its image boots with the
user data playbooks/userdata.yml renders as a NoCloud seed. No playbook runs
against it from here: cloud-init installs Ansible (from a wheelhouse in the
host's disk: pip cannot reach the index through this network's TLS proxy),
checks the toolkit out of a bare repository at the commit under test and runs
site.yml against the host itself. Then, in order, on that host:

1. its poller runs a queued job from the portal stand-in on 127.0.0.1;
2. a second boot changes nothing (cloud-init does not provision again) and
   the poller is back;
3. playbooks/retire.yml with a job running: the job finishes and is ended,
   nothing else is popped, then the host powers off (its namespace ends);
4. booted again, retire.yml with a job that outlasts the bound: the job is
   requeued, then power-off;
5. booted again (that job is popped again and waits), site.yml turns the
   idle shut-down on: the busy host stays up; once the job ends and the queue
   stays empty, the host powers itself off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testing import cloud_init, playbook
from testing.fleet import SANDBOX_MIN_FREE, Inventory, leam_project, stand
from testing.marks import sandbox_hosts
from testing.outcomes import job_state, report_kinds, wait_job_state
from testing.playbook import ROOT, recap
from testing.portal_standin import PortalStandin
from testing.sandbox import TEST_STATE_DIR, Host, Sandbox
from tests.conftest import wait_until

PASSWORD = "cl0ud p@ss%word"
VAULT_PASSWORD = "fleet-vault-password"
PROJECT = "cloudproj"
HOST = "cloud1"
JOBDIR = f"/mnt/jobdir/{PROJECT}"
IMAGE_PACKAGES = ["cloud-init", "python3-cffi-backend"]  # debootstrap needs the virtual one named
WHEELHOUSE = "/srv/wheelhouse"
PIP_ARGS = ["--no-index", "--find-links", WHEELHOUSE]
# The sandbox's own cloud-init settings (a cloud image's would differ): only
# the NoCloud seed (on one line: ds-identify reads no other form), never the
# machine's network, root's test key kept, the locale left alone (the minbase
# image generates none, so update-locale fails).
SANDBOX_CLOUD_CFG = """\
datasource_list: [ NoCloud ]
locale: false
network: {config: disabled}
disable_root: false
ssh_deletekeys: false
"""
PROVISION_TIMEOUT = 1200

pytestmark = sandbox_hosts(2400)


def wheelhouse(dest: Path) -> Path:
    """Ansible and the poller's dependencies, fetched here with this machine's pip setup."""
    requirements = (ROOT / "requirements-dev.txt").read_text()
    pins = [
        line.split("#")[0].strip()
        for line in requirements.splitlines()
        if line.split("==")[0].strip() in ("ansible", "setuptools")
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--dest",
            str(dest),
            *pins,
            "requests>=2.31,<3",
            "psutil>=5.9,<8",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return dest


def bare_repository(dest: Path) -> Path:
    """This checkout's HEAD in a bare repository: what a real fleet clones."""
    subprocess.run(["git", "init", "--quiet", "--bare", str(dest)], check=True)
    subprocess.run(
        ["git", "-C", str(dest), "fetch", "--quiet", str(ROOT), "HEAD:refs/heads/main"],
        check=True,
        timeout=120,
    )
    return dest


def exported_head(repository: Path, dest: Path) -> Path:
    """The same revision as a tree on the controller: site.yml run from here then builds
    the very wheel the host built (uncommitted edits of this checkout left out)."""
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(repository), "archive", "main"],
        check=True,
        capture_output=True,
        timeout=120,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=120)
    return dest


def render_user_data(tmp: Path, portal: PortalStandin) -> str:
    """playbooks/userdata.yml for HOST, from an inventory with the password vaulted."""
    inv = tmp / "render-inventory"
    (inv / "host_vars" / HOST).mkdir(parents=True)
    (inv / "hosts.yml").write_text(
        yaml.safe_dump({"all": {"children": {"leam_jobservers": {"hosts": {HOST: None}}}}})
    )
    (inv / "host_vars" / HOST / "main.yml").write_text(yaml.safe_dump(host_vars(portal)))
    vault_file = inv / "host_vars" / HOST / "vault.yml"
    vault_file.write_text(yaml.safe_dump({"vault_cloud_password": PASSWORD}))
    (tmp / "vault-pass").write_text(VAULT_PASSWORD + "\n")
    subprocess.run(
        [
            playbook.ANSIBLE_PLAYBOOK.with_name("ansible-vault"),
            "encrypt",
            "--vault-password-file",
            str(tmp / "vault-pass"),
            str(vault_file),
        ],
        check=True,
        capture_output=True,
    )
    settings = tmp / "userdata-settings.json"
    settings.write_text(
        json.dumps(
            {
                "target": HOST,
                "dest": str(tmp / "user-data"),
                "leam_userdata_repo": "file:///srv/leam.git",
                "leam_userdata_vault_password_file": str(tmp / "vault-pass"),
                "leam_userdata_pip_args": PIP_ARGS,
            }
        )
    )
    out = playbook.run(
        inv,
        "playbooks/userdata.yml",
        "--vault-password-file",
        str(tmp / "vault-pass"),
        "-e",
        f"@{settings}",
        log_dir=tmp,
    )
    assert out.returncode == 0, out.stdout[-3000:]
    return (tmp / "user-data").read_text()


# The host's variables beyond its project and the free-space floor, in its user data
# and in the controller's inventory alike: it installs with pip from its own wheelhouse.
HOST_VARS = {"leampoll_pip_extra_args": PIP_ARGS, "leampoll_drain_timeout": 300}


def host_vars(portal: PortalStandin) -> dict:
    """The host's variables in its user data: the password vaulted."""
    return {
        "leam_projects": [leam_project(PROJECT, portal.url, "{{ vault_cloud_password }}")],
        **SANDBOX_MIN_FREE,
        **HOST_VARS,
    }


class Cloud:
    """The self-provisioned host, its portal, and what the controller may run at it."""

    def __init__(
        self, sandbox: Sandbox, host: Host, portal: PortalStandin, tmp: Path, user_data: str
    ) -> None:
        self.sandbox, self.host, self.portal, self.dir = sandbox, host, portal, tmp
        self.user_data = user_data
        self.source = exported_head(tmp / "leam.git", tmp / "source")
        # The controller's: the host as its user data has it, the toolkit from the same
        # revision, no wheelhouse of the controller's (it has its own).
        self.deployed = Inventory(
            sandbox,
            tmp / "inventory.yml",
            projects={HOST: [leam_project(PROJECT, portal.url, PASSWORD)]},
            log_dir=tmp,
            shared_vars=SANDBOX_MIN_FREE,
        )
        self.inventory = self.deployed.path

    def write_inventory(self, **extra) -> None:
        self.deployed.host_vars = {
            HOST: {**HOST_VARS, "leampoll_source": str(self.source), **extra}
        }
        self.deployed.write()

    def ssh(self, command: str) -> str:
        return self.host.ssh(command, check=True, timeout=120).stdout

    def poller_state(self) -> str:
        out = self.host.ssh(f"supervisorctl status leampoll-{PROJECT}", timeout=60).stdout
        return out.split()[1] if len(out.split()) > 1 else "MISSING"

    def poller_log(self) -> str:
        return self.host.ssh(f"cat /var/log/supervisor/leampoll-{PROJECT}.log", timeout=60).stdout

    def fingerprint(self) -> str:
        """Checksums and times of what the provisioning wrote."""
        return self.ssh(
            "cd / && sha256sum etc/supervisor/conf.d/leampoll-*.conf etc/leampoll/projects.json "
            "opt/leampoll/venv/leampoll-wheel.txt && stat -c '%n %Y' "
            "etc/supervisor/conf.d/leampoll-*.conf opt/leampoll/venv/leampoll-wheel.txt "
            "opt/leam-ansible/venv/bin/ansible-playbook"
        )

    def boot(self) -> None:
        self.sandbox.boot(self.host)
        wait_until(lambda: self.poller_state() == "RUNNING", 120, "the poller RUNNING")

    def retire(self, *args: str) -> subprocess.CompletedProcess:
        return self.deployed.play(*args, playbook_name="playbooks/retire.yml")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cloud")
    with stand(Path(f"{TEST_STATE_DIR}-cloud"), [PROJECT], PASSWORD) as s:
        portal = s.portals[PROJECT]
        user_data = render_user_data(tmp, portal)
        seed = {
            "/var/lib/cloud/seed/nocloud/user-data": (user_data, 0o600),
            "/var/lib/cloud/seed/nocloud/meta-data": (
                f"instance-id: leam-{HOST}\nlocal-hostname: {HOST}\n",
                0o600,
            ),
            "/etc/cloud/cloud.cfg.d/99-leam-sandbox.cfg": (SANDBOX_CLOUD_CFG, 0o644),
            # Delivered out of band, as a cloud's secret store would.
            "/etc/leam/vault-password": (VAULT_PASSWORD + "\n", 0o600),
            WHEELHOUSE: (wheelhouse(tmp / "wheelhouse"), 0o755),
            "/srv/leam.git": (bare_repository(tmp / "leam.git"), 0o755),
        }
        host = s.sandbox.up(HOST, include=IMAGE_PACKAGES, files=seed, timeout=PROVISION_TIMEOUT)
        c = Cloud(s.sandbox, host, portal, tmp, user_data)
        c.write_inventory()
        yield c


def cloud_init_output(c: Cloud) -> str:
    return c.host.ssh("cat /var/log/cloud-init-output.log", timeout=60).stdout


def test_user_data_is_valid_and_holds_no_secret(cloud, tmp_path):
    assert PASSWORD not in cloud.user_data and VAULT_PASSWORD not in cloud.user_data
    path = tmp_path / "user-data"
    path.write_text(cloud.user_data)
    try:
        done = cloud_init.schema(path)
    except cloud_init.Unavailable as exc:
        pytest.skip(str(exc))
    assert done.returncode == 0, done.stdout + done.stderr


def test_host_provisions_itself_and_runs_a_job(cloud):
    status = cloud.ssh("cloud-init status --long || true")
    output = cloud_init_output(cloud)
    assert "status: done" in status, status + output[-4000:]
    assert output.count("leam-self-provision: done") == 1, output[-4000:]
    assert "failed=0" in output and PASSWORD not in output
    wait_until(lambda: cloud.poller_state() == "RUNNING", 60, "the poller RUNNING")
    cloud.portal.queue("first", "sh -c 'test \"$(id -un)\" = leam'")
    wait_job_state(cloud.portal, "first", "success", timeout=120)
    # The host's copy of its variables: root only, the password still vaulted.
    listing = cloud.ssh(
        "stat -c '%a %U %n' /etc/leam/inventory/host_vars/*.yml /etc/leam/vault-password"
    )
    assert all(line.startswith("600 root ") for line in listing.splitlines()), listing
    assert PASSWORD not in cloud.ssh("cat /etc/leam/inventory/host_vars/*.yml")


def test_second_boot_changes_nothing(cloud):
    before = cloud.fingerprint()
    cloud.sandbox.reboot(cloud.host)
    wait_until(lambda: cloud.poller_state() == "RUNNING", 120, "the poller RUNNING again")
    assert cloud.fingerprint() == before
    output = cloud_init_output(cloud)
    assert output.count("leam-self-provision: done") == 1  # not provisioned again
    assert output.count("leam-self-provision: making") == 1
    cloud.portal.queue("after-reboot", "true")
    wait_job_state(cloud.portal, "after-reboot", "success", timeout=120)


def test_retire_lets_the_job_finish_then_powers_off(cloud):
    release = f"{JOBDIR}/release-long"
    cloud.portal.queue(
        "long", f"sh -c 'touch started; while [ ! -e {release} ]; do sleep 0.2; done'"
    )
    cloud.portal.queue("next", "true")
    wait_job_state(cloud.portal, "long", "running", timeout=60)
    log = cloud.dir / "retire-long.log"
    with open(log, "w") as out:
        run = subprocess.Popen(
            [playbook.ANSIBLE_PLAYBOOK, "-i", str(cloud.inventory), "playbooks/retire.yml"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
        )
    try:
        wait_until(lambda: "SIGUSR1: draining" in cloud.poller_log(), 120, "the drain")
        assert cloud.host.alive and job_state(cloud.portal, "long") == "running"
        cloud.ssh(f"touch {release}")
        run.wait(600)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, log.read_text()[-4000:]
    assert cloud.sandbox.wait_down(cloud.host, 120) == "poweroff"
    assert job_state(cloud.portal, "long") == "success"
    assert job_state(cloud.portal, "next") == "queued"  # nothing new popped
    assert report_kinds(cloud.portal, "long") == ["success"]


def test_retire_requeues_a_job_that_outlasts_the_bound_then_powers_off(cloud):
    cloud.boot()
    wait_job_state(cloud.portal, "next", "success", timeout=120)  # popped once back
    cloud.portal.queue(
        "stuck", f"sh -c 'while [ ! -e {JOBDIR}/release-stuck ]; do sleep 0.2; done'"
    )
    wait_job_state(cloud.portal, "stuck", "running", timeout=60)
    out = cloud.retire("-e", "leam_ops_wait_timeout=3")
    assert out.returncode == 0, out.stdout[-4000:]
    assert recap(out.stdout)[HOST]["failed"] == 0
    assert cloud.sandbox.wait_down(cloud.host, 120) == "poweroff"
    assert job_state(cloud.portal, "stuck") == "queued"  # handed back
    assert report_kinds(cloud.portal, "stuck") == ["requeue"]


def test_idle_shutdown_spares_a_busy_host_then_powers_off_an_idle_one(cloud):
    cloud.boot()
    wait_job_state(cloud.portal, "stuck", "running", timeout=120)  # popped again
    drains = cloud.poller_log().count("SIGUSR1: draining")
    # A drain here would be a bug (the poller's program is unchanged): fail fast.
    cloud.write_inventory(
        leampoll_idle_shutdown=True,
        leampoll_idle_shutdown_after=5,
        leampoll_idle_shutdown_check=1,
        leampoll_drain_timeout=20,
    )
    out = cloud.deployed.play()
    assert out.returncode == 0 and recap(out.stdout)[HOST]["failed"] == 0, out.stdout[-4000:]
    assert cloud.poller_log().count("SIGUSR1: draining") == drains  # the job was left alone
    log = "/var/log/supervisor/leam-idle-shutdown.log"
    wait_until(
        lambda: "not idle: cloudproj: running job stuck" in cloud.ssh(f"cat {log}"),
        60,
        "the idle shut-down to see the busy poller",
    )
    assert cloud.host.alive and job_state(cloud.portal, "stuck") == "running"
    cloud.ssh(f"touch {JOBDIR}/release-stuck")
    wait_job_state(cloud.portal, "stuck", "success", timeout=60)
    assert cloud.sandbox.wait_down(cloud.host, 180) == "poweroff"
    assert job_state(cloud.portal, "stuck") == "success"

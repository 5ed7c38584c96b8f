"""The sandbox test hosts behave like separate servers and leave nothing behind.

These start real hosts (namespaces, systemd or sshd as PID 1, SSH on
127.0.0.N), so they need root, ``debootstrap``/``unshare`` and, the first
time, a minute or two per root filesystem variant. One pair of systemd hosts
is shared by most of the module to keep it fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.marks import sandbox_hosts
from testing.sandbox import (
    CGROUP_ROOT,
    SYSTEMD_MASKED,
    TEST_STATE_DIR,
    Host,
    Sandbox,
    mounts_under,
)
from testing.sandbox.system import proc_start_time

pytestmark = sandbox_hosts()

ANSIBLE = Path(sys.executable).with_name("ansible")
JOBDIR_SIZE = "40M"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(TEST_STATE_DIR, log=lambda msg: print(msg, file=sys.stderr))
    sb.down_all()  # leftovers of an interrupted earlier run
    yield sb
    sb.down_all()


@pytest.fixture(scope="module")
def pair(sandbox: Sandbox) -> Iterator[tuple[Host, Host]]:
    """A bookworm and a trixie host, both booted with systemd."""
    with sandbox.hosts_up(
        ["sbx-a", "sbx-b"], jobdir_size={"sbx-b": JOBDIR_SIZE}, suites={"sbx-b": "trixie"}
    ) as hosts:
        yield hosts[0], hosts[1]


def _ps(host: Host) -> list[list[str]]:
    res = host.ssh(["ps", "-e", "-o", "pid=,comm="], check=True)
    return [line.split(None, 1) for line in res.stdout.strip().splitlines()]


def test_each_host_has_its_own_hostname_and_address(pair: tuple[Host, Host]) -> None:
    a, b = pair
    assert a.address != b.address
    for host in pair:
        assert host.address.startswith("127.0.0.")
        assert int(host.address.rsplit(".", 1)[1]) >= 10
        res = host.ssh("hostname; cat /etc/hostname", check=True)
        assert res.stdout.split() == [host.name, host.name]


def test_systemd_is_pid_1_and_the_system_is_running(pair: tuple[Host, Host]) -> None:
    a, b = pair
    for host in pair:
        procs = _ps(host)
        assert procs[0] == ["1", "systemd"]
        assert host.ssh("systemctl is-system-running").stdout.strip() == "running"
        # only the host's own processes, none of the machine's
        assert len(procs) < 20, procs
        # the units that would touch the machine's network or kernel are masked
        masked = host.ssh(["systemctl", "is-enabled", *SYSTEMD_MASKED]).stdout.split()
        assert masked == ["masked"] * len(SYSTEMD_MASKED)
    assert a.ssh("cat /etc/debian_version").stdout.startswith("12.")
    assert b.ssh("cat /etc/debian_version").stdout.startswith("13.")
    # each host makes its own machine id
    ids = {h.ssh("cat /etc/machine-id", check=True).stdout.strip() for h in pair}
    assert len(ids) == 2 and "" not in ids


def test_each_host_has_its_own_cgroup(sandbox: Sandbox, pair: tuple[Host, Host]) -> None:
    for host in pair:
        cgroup = Path(host.state["cgroup"])
        assert cgroup.parent == CGROUP_ROOT and sandbox.tag in cgroup.name
        # Inside, its systemd sees its own cgroup as the root of the hierarchy.
        inside = host.ssh("cat /proc/1/cgroup", check=True).stdout
        assert "name=systemd:/init.scope" in inside
        # Outside, its processes are below the host's own cgroup in every
        # hierarchy: none of its slices is at the root of the machine's.
        for pid, _, _ in host.processes():
            try:
                lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
            except OSError:
                continue  # ended meanwhile (an SSH session)
            if proc_start_time(pid) is None:
                continue  # a zombie: out of every cgroup already
            assert all(line.split(":", 2)[2].startswith(f"/{cgroup.name}") for line in lines), lines
        outside = Path(f"/proc/{host.pid1}/cgroup").read_text()
        assert f"name=systemd:/{cgroup.name}/init.scope" in outside
    # the machine's own settings are read-only for the hosts
    assert pair[0].ssh("touch /proc/sys/kernel/hostname").returncode != 0


def test_hosts_are_isolated_from_each_other(pair: tuple[Host, Host]) -> None:
    a, b = pair
    a.ssh("echo from-a > /root/marker", check=True)
    assert b.ssh("test -e /root/marker").returncode == 1
    assert (a.root / "root/marker").read_text() == "from-a\n"


def test_jobdir_option_gives_a_small_filesystem(pair: tuple[Host, Host]) -> None:
    a, b = pair
    res = b.ssh("df -k --output=fstype,size /mnt/jobdir | tail -n 1", check=True)
    fstype, size_kb = res.stdout.split()
    assert fstype == "tmpfs"
    assert int(size_kb) == 40 * 1024
    # the other host has no such mount: its free space is the machine's disk
    assert a.ssh("mountpoint -q /mnt/jobdir").returncode != 0


@pytest.mark.skipif(not ANSIBLE.exists(), reason="ansible is not installed in this venv")
def test_ansible_ping_through_written_inventory(
    sandbox: Sandbox, pair: tuple[Host, Host], tmp_path: Path
) -> None:
    inventory = sandbox.write_inventory(tmp_path / "inventory.yml")
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_NOCOLOR": "1"}
    res = subprocess.run(
        [str(ANSIBLE), "leam_jobservers", "-i", str(inventory), "-m", "ansible.builtin.ping"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    for host in pair:
        assert f"{host.name} | SUCCESS" in res.stdout


def test_reboot_boots_the_same_disk_and_leaves_no_process(
    sandbox: Sandbox, pair: tuple[Host, Host]
) -> None:
    a, _ = pair
    a.ssh("echo kept > /root/disk-marker; nohup sleep 600 >/dev/null 2>&1 &", check=True)
    before = a.processes()
    old_boot = a.boot_id
    assert any("sleep 600" in cmd for _, _, cmd in before)
    sandbox.reboot(a)
    assert a.alive and a.boot_id != old_boot
    assert a.read_boot_id() == a.boot_id  # SSH reaches the new boot
    assert a.ssh("cat /root/disk-marker").stdout == "kept\n"
    assert a.ssh("systemctl is-system-running").stdout.strip() == "running"
    survivors = {(pid, start) for pid, start, _ in before} & {
        (pid, start) for pid, start, _ in a.processes()
    }
    assert not survivors
    assert a.state["boots"] == 2


def test_power_cut_kills_every_process_at_once_and_keeps_the_disk(
    sandbox: Sandbox, pair: tuple[Host, Host]
) -> None:
    _, b = pair
    b.ssh("echo kept > /root/disk-marker; sync; nohup sleep 600 >/dev/null 2>&1 &", check=True)
    before = b.processes()
    sandbox.power_cut(b)
    assert not b.alive
    assert all(proc_start_time(pid) != start for pid, start, _ in before)
    assert not (Path(b.state["cgroup"]) / "init.scope").exists() or not any(
        p.read_text().strip() for p in Path(b.state["cgroup"]).rglob("cgroup.procs")
    )
    sandbox.boot(b)
    assert b.alive and b.read_boot_id() == b.boot_id
    assert b.ssh("cat /root/disk-marker").stdout == "kept\n"
    assert b.ssh("cat /etc/debian_version").stdout.startswith("13.")


def test_init_less_host_has_sshd_as_pid_1(sandbox: Sandbox) -> None:
    with sandbox.hosts_up(["sbx-plain"], init="none") as (host,):
        procs = _ps(host)
        assert procs[0] == ["1", "sshd"]
        assert len(procs) < 10, procs
        assert host.init == "none" and host.state["cgroup"] is None


@pytest.mark.parametrize("init", ["systemd", "none"])
def test_teardown_leaves_nothing(sandbox: Sandbox, init: str) -> None:
    # A host of its own, so the shared pair stays up for the other tests.
    host = sandbox.up("sbx-gone", jobdir_size="8M", init=init)
    host.ssh("nohup sleep 300 >/dev/null 2>&1 &", check=True)  # a stray process inside
    root = host.root
    inside = [(pid, start) for pid, start, _ in host.processes()]
    assert host.state["pid1"] in [pid for pid, _ in inside]
    assert len(inside) >= 2  # PID 1 and the sleep
    pids = [*inside, (host.state["unshare_pid"], host.state["unshare_start"])]
    assert mounts_under(root)
    cgroup = host.state["cgroup"]

    assert sandbox.down("sbx-gone") is True
    for pid, start in pids:
        assert proc_start_time(pid) != start, f"pid {pid} still alive"
    assert mounts_under(root) == []
    assert cgroup is None or not Path(cgroup).exists()
    assert not sandbox.host_dir("sbx-gone").exists()
    assert "sbx-gone" not in [h.name for h in sandbox.hosts()]
    # idempotent
    assert sandbox.down("sbx-gone") is False


def test_down_of_a_host_that_never_started_is_safe(sandbox: Sandbox) -> None:
    hdir = sandbox.host_dir("sbx-half")
    (hdir / "root").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(hdir / "root")], check=True)
    assert sandbox.down("sbx-half") is True
    assert mounts_under(hdir) == []
    assert not hdir.exists()

"""The sandbox test hosts behave like separate servers and leave nothing behind.

These start real hosts (namespaces + sshd on 127.0.0.N), so they need root,
``debootstrap``/``unshare`` and, the first time, a minute to build the cached
root filesystem. One pair of hosts is shared by the whole module to keep it fast.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sandbox import Host, Sandbox, _proc_start_time, mounts_under

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("debootstrap"),
        reason="sandbox hosts need root, unshare and debootstrap",
    ),
]

# A state directory of its own, so a demo sandbox on the default one is untouched.
STATE_DIR = Path(os.environ.get("LEAM_SANDBOX_TEST_STATE", "/run/leam-sandbox-pytest"))
ANSIBLE = Path(sys.executable).with_name("ansible")
JOBDIR_SIZE = "40M"


def _pids_in_namespace_of(pid1: int) -> list[tuple[int, int | None]]:
    """Processes on the machine in the PID namespace of ``pid1``: all of a host's."""
    ns = os.readlink(f"/proc/{pid1}/ns/pid")
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                    found.append((int(entry), _proc_start_time(int(entry))))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(STATE_DIR, log=lambda msg: print(msg, file=sys.stderr))
    sb.down_all()  # leftovers of an interrupted earlier run
    yield sb
    sb.down_all()


@pytest.fixture(scope="module")
def pair(sandbox: Sandbox) -> Iterator[tuple[Host, Host]]:
    with sandbox.hosts_up(["sbx-a", "sbx-b"], jobdir_size={"sbx-b": JOBDIR_SIZE}) as hosts:
        yield hosts[0], hosts[1]


def test_each_host_has_its_own_hostname_and_address(pair: tuple[Host, Host]) -> None:
    a, b = pair
    assert a.address != b.address
    for host in pair:
        assert host.address.startswith("127.0.0.")
        assert int(host.address.rsplit(".", 1)[1]) >= 10
        res = host.ssh("hostname; cat /etc/hostname", check=True)
        assert res.stdout.split() == [host.name, host.name]


def test_each_host_sees_only_its_own_processes(pair: tuple[Host, Host]) -> None:
    for host in pair:
        res = host.ssh(["ps", "-e", "-o", "pid=,comm="], check=True)
        procs = [line.split(None, 1) for line in res.stdout.strip().splitlines()]
        # sshd (PID 1), the session's sshd, the shell/ps: a handful, not the machine's
        assert len(procs) < 10, res.stdout
        assert procs[0] == ["1", "sshd"]
        assert not any(comm.strip() == "process_api" for _, comm in procs)


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


def test_teardown_leaves_nothing(sandbox: Sandbox) -> None:
    # A host of its own, so the shared pair stays up for the other tests.
    host = sandbox.up("sbx-gone", jobdir_size="8M")
    host.ssh("nohup sleep 300 >/dev/null 2>&1 &", check=True)  # a stray process inside
    root = host.root
    inside = _pids_in_namespace_of(host.state["pid1"])
    assert host.state["pid1"] in [pid for pid, _ in inside]
    assert len(inside) >= 2  # sshd and the sleep
    pids = [*inside, (host.state["unshare_pid"], host.state["unshare_start"])]
    assert mounts_under(root)

    assert sandbox.down("sbx-gone") is True
    for pid, start in pids:
        assert _proc_start_time(pid) != start, f"pid {pid} still alive"
    assert mounts_under(root) == []
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

"""Sandbox test hosts: real Debian machines-in-a-directory reachable over SSH.

The development and CI machines have no Docker and no systemd as PID 1, so the
provisioning roles are tested against "hosts" made of plain kernel features:

* a Debian root filesystem (bookworm or trixie) built once with
  ``debootstrap`` and kept in a cache outside the checkout
  (``/var/cache/leam-sandbox`` by default), one variant per init and package set;
* a copy-on-write root per host (overlayfs over the cache, ``cp -a`` if overlay
  cannot be mounted): the overlay's upper directory is the host's disk;
* two flavours of host, each listening on its own loopback address
  ``127.0.0.N`` (N >= 10):

  - ``init="systemd"`` (the default, like a real server): systemd boots as
    PID 1 of its own PID, mount, UTS, IPC and cgroup namespaces, in a cgroup
    of its own in each of the machine's hierarchies
    (``/sys/fs/cgroup/systemd/leam-sandbox-<state dir tag>-<name>``), with
    the units masked that would touch the machine's network or kernel.
    It can be rebooted (``systemctl reboot`` inside ends the namespace; the
    same disk is booted again) and power-cut (SIGKILL to its systemd from
    outside), and its disk survives both;
  - ``init="none"`` (the container case): ``sshd`` is PID 1 of its own UTS,
    PID and mount namespaces.

Ansible reaches such a host like any server, with a key made per sandbox.
Killing the namespace's PID 1 ends every process of the host; teardown then
unmounts what was mounted for it, removes its cgroups and its disk.

Command line (run from the repository root, as root)::

    python -m testing.sandbox build [--suite trixie] [--init none] [--include pkg,pkg]
    python -m testing.sandbox up web1 web2 --jobdir-size web2=40M [--suite trixie]
    python -m testing.sandbox status
    python -m testing.sandbox reboot web1        # systemctl reboot, boot again
    python -m testing.sandbox power-cut web1     # then: python -m testing.sandbox boot web1
    python -m testing.sandbox inventory /tmp/inventory.yml
    python -m testing.sandbox ssh web1 -- ps -e
    python -m testing.sandbox down --all

Python::

    sb = Sandbox("/tmp/state")
    with sb.hosts_up(["a", "b"], jobdir_size={"b": "40M"}, suites={"b": "trixie"}) as (a, b):
        sb.write_inventory("/tmp/state/inventory.yml")
        print(a.ssh("hostname").stdout)
        sb.reboot(a)              # a.boot_id changes; a.read_boot_id() agrees
        sb.power_cut(b); sb.boot(b)
    # more packages: a cached root filesystem variant of their own (debootstrap does
    # not resolve virtual packages: name them, e.g. python3-cffi-backend for cloud-init)
    sb.up("c", include=["cloud-init", "python3-cffi-backend"])

Modules, along the seams of a host's life: ``settings`` (suites, packages,
directories), ``system`` (what the hosts need of the machine: commands, mounts,
processes, cgroups), ``rootfs`` (the debootstrap cache), ``host`` (a host as
the controller sees it: SSH, nsenter, its processes), ``disk`` (the host's
files: state, disk, console log), ``power`` (boot and power: PID 1 started,
rebooted, power-cut, stopped), ``inventory`` (what Ansible reads), ``hosts``
(``Sandbox``, the one entry point that ties them together) and ``cli``.
"""

from testing.sandbox.hosts import Host, Sandbox
from testing.sandbox.rootfs import RootfsSpec, apt_mirror, ensure_rootfs, rootfs_path
from testing.sandbox.settings import (
    BOOT_TIMEOUT,
    CGROUP_ROOT,
    DEFAULT_CACHE_DIR,
    DEFAULT_STATE_DIR,
    INIT_NONE,
    INIT_SYSTEMD,
    SUITE,
    SUITES,
    SYSTEMD_MASKED,
    TEST_STATE_DIR,
)
from testing.sandbox.system import SandboxError, mounts_under, unmount_all_under

__all__ = [
    "BOOT_TIMEOUT",
    "CGROUP_ROOT",
    "DEFAULT_CACHE_DIR",
    "DEFAULT_STATE_DIR",
    "INIT_NONE",
    "INIT_SYSTEMD",
    "SUITE",
    "SUITES",
    "SYSTEMD_MASKED",
    "TEST_STATE_DIR",
    "Host",
    "RootfsSpec",
    "Sandbox",
    "SandboxError",
    "apt_mirror",
    "ensure_rootfs",
    "mounts_under",
    "rootfs_path",
    "unmount_all_under",
]

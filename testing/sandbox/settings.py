"""What the sandbox hosts are made of and where they live: suites, packages,
masked units, directories, addresses. Every other module of the package reads them here."""

from __future__ import annotations

import os
import re
from pathlib import Path

SUITE = "bookworm"
SUITES = ("bookworm", "trixie")
INIT_NONE = "none"  # sshd is PID 1 of the host (the container case)
INIT_SYSTEMD = "systemd"  # systemd is PID 1 (a real server)
INITS = (INIT_NONE, INIT_SYSTEMD)
# Bump when the recipe below changes so old caches are not reused.
ROOTFS_VERSION = "v1"
SYSTEMD_ROOTFS_VERSION = "v1"
INCLUDE_PACKAGES = (
    "python3",
    "openssh-server",
    "sudo",
    "ca-certificates",
    "python3-venv",
    "procps",
    "iproute2",
)
SYSTEMD_PACKAGES = ("systemd-sysv", "dbus")
# Units a systemd host must not run: the hosts share the machine's network
# and kernel (no interface, resolver, clock or sysctl of the machine may be
# touched), have no consoles, and logind fails there (a reboot then waits
# for it twice 25 s).
SYSTEMD_MASKED = (
    "systemd-networkd.service",
    "systemd-networkd.socket",
    "systemd-networkd-wait-online.service",
    "systemd-resolved.service",
    "systemd-timesyncd.service",
    "systemd-sysctl.service",
    "systemd-modules-load.service",
    "systemd-logind.service",
    "getty@tty1.service",
    "serial-getty@ttyS0.service",
    "console-getty.service",
    "e2scrub_reap.service",
)
# systemd reads these from its own command line in a container: track
# processes in the cgroup v1 name=systemd hierarchy, as the machine offers
# it (Debian 13's systemd 257 does that only when forced to).
SYSTEMD_ARGS = (
    "systemd.unified_cgroup_hierarchy=0 systemd.legacy_systemd_cgroup_controller=1"
    " SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1"
)
CGROUP_ROOT = Path("/sys/fs/cgroup/systemd")  # the machine's name=systemd hierarchy
BOOT_TIMEOUT = 120.0  # seconds from start to SSH and "running"; about 6 s seen
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
DEFAULT_CACHE_DIR = Path(os.environ.get("LEAM_SANDBOX_CACHE", "/var/cache/leam-sandbox"))
DEFAULT_STATE_DIR = Path(os.environ.get("LEAM_SANDBOX_STATE", "/run/leam-sandbox"))
# Tests keep their hosts apart from a sandbox (or demo) on the default state dir,
# and each pytest-xdist worker (`make test` runs two) from the other's.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
TEST_STATE_DIR = Path(
    (os.environ.get("LEAM_SANDBOX_TEST_STATE") or f"{DEFAULT_STATE_DIR}-pytest")
    + (f"-{_WORKER}" if _WORKER else "")
)
DEFAULT_JOBDIR = "/mnt/jobdir"
FIRST_OCTET = 10  # 127.0.0.1-9 are left to the machine itself
SSH_OPTIONS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
# A minimal, predictable environment for everything run inside a host root.
CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "HOME": "/root",
}
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

"""The VM disk image: the sandbox's cached systemd root filesystem plus Debian's own
kernel, turned into an ext4 image without mounting anything (``mkfs.ext4 -d``).

Cached under the sandbox cache directory, keyed by everything that goes into it
(root filesystem variant, files written into the guest, disk size, recipe version),
so a change to any of them builds a new image instead of reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from testing.sandbox.rootfs import (
    RootfsSpec,
    _run_build_step,
    _terminate_raises,
    ensure_rootfs,
    remove_tree,
)
from testing.sandbox.settings import DEFAULT_CACHE_DIR, INIT_SYSTEMD, SUITE
from testing.sandbox.system import SandboxError, default_log, flock, require_root

# Bump when the recipe changes in a way the key below does not see.
IMAGE_VERSION = "v1"
# Beside the sandbox's systemd root: Debian's own kernel and what boots it.
KERNEL_PACKAGES = ("linux-image-amd64", "initramfs-tools", "kmod", "udev", "e2fsprogs")
DISK_SIZE = "4G"
DISK_LABEL = "leam-root"
HOSTNAME = "leam-vm"
# QEMU user-mode networking: the guest's fixed address, gateway and resolver.
GUEST_ADDRESS = "10.0.2.15/24"
GUEST_GATEWAY = "10.0.2.2"
GUEST_DNS = "10.0.2.3"
# The key of a boot arrives on the kernel command line (one image, a key per VM).
KEY_ARG = "leam.authorized_key"

_KEY_SCRIPT = f"""#!/bin/sh
# Installs root's SSH key from the kernel command line ({KEY_ARG}=BASE64), so one
# cached image serves every VM, each with a key made for its own run.
set -eu
key=
for arg in $(cat /proc/cmdline); do
    case "$arg" in {KEY_ARG}=*) key=${{arg#{KEY_ARG}=}} ;; esac
done
[ -n "$key" ] || exit 0
install -d -m 0700 /root/.ssh
umask 077
printf '%s' "$key" | base64 -d > /root/.ssh/authorized_keys
"""

_KEY_UNIT = """[Unit]
Description=root's SSH key from the kernel command line
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/leam-vm-authorized-key

[Install]
WantedBy=ssh.service
"""

_NETWORK_UNIT = f"""[Unit]
Description=the VM's user-mode network (addresses fixed by QEMU)
Before=network.target ssh.service
Wants=network.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/ip link set eth0 up
ExecStart=/usr/sbin/ip address add {GUEST_ADDRESS} dev eth0
ExecStart=/usr/sbin/ip route add default via {GUEST_GATEWAY}

[Install]
WantedBy=multi-user.target
"""

# Files written into the guest (path relative to its root -> content).
GUEST_FILES: dict[str, str] = {
    "etc/fstab": "/dev/vda / ext4 defaults,errors=remount-ro 0 1\n",
    "etc/hostname": f"{HOSTNAME}\n",
    "etc/hosts": f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n",
    "etc/resolv.conf": f"nameserver {GUEST_DNS}\n",
    # A fixed address set by ip(8): no DHCP round trip, and no systemd-networkd (seen
    # taking minutes to start under emulation on a loaded machine).
    "etc/systemd/system/leam-vm-network.service": _NETWORK_UNIT,
    # Emulation on a busy machine is slow (units seen taking minutes to start):
    # a unit that is merely slow must not fail the boot.
    "etc/systemd/system.conf.d/leam-vm.conf": (
        "[Manager]\nDefaultTimeoutStartSec=15min\nDefaultTimeoutStopSec=2min\n"
    ),
    "etc/ssh/sshd_config.d/leam-vm.conf": "UseDNS no\nPasswordAuthentication no\n",
    # Only what boots a virtio disk: a small initrd that TCG unpacks quickly. It loads
    # virtio_net too, so eth0 is there before udev's coldplug (seen taking minutes).
    "etc/initramfs-tools/conf.d/leam-vm.conf": "MODULES=list\nCOMPRESS=gzip\n",
    "etc/initramfs-tools/modules": "virtio_pci\nvirtio_blk\nvirtio_net\ncrc32c_generic\next4\n",
    "usr/local/sbin/leam-vm-authorized-key": _KEY_SCRIPT,
    "etc/systemd/system/leam-vm-authorized-key.service": _KEY_UNIT,
}
_EXECUTABLE = ("usr/local/sbin/leam-vm-authorized-key",)
# Symlinks in the guest: enabled units, and masked timers that would only spend
# emulated CPU during a test.
GUEST_LINKS: dict[str, str] = {
    "etc/systemd/system/ssh.service.wants/leam-vm-authorized-key.service": (
        "/etc/systemd/system/leam-vm-authorized-key.service"
    ),
    "etc/systemd/system/multi-user.target.wants/leam-vm-network.service": (
        "/etc/systemd/system/leam-vm-network.service"
    ),
    "etc/systemd/system/apt-daily.timer": "/dev/null",
    "etc/systemd/system/apt-daily-upgrade.timer": "/dev/null",
    "etc/systemd/system/dpkg-db-backup.timer": "/dev/null",
    "etc/systemd/system/e2scrub_reap.service": "/dev/null",
    # The serial port is the kernel's console only; their device units wait on udev.
    "etc/systemd/system/serial-getty@ttyS0.service": "/dev/null",
    "etc/systemd/system/getty@tty1.service": "/dev/null",
}


@dataclass(frozen=True)
class ImageSpec:
    """Which VM image to boot; each distinct spec is its own cache entry."""

    suite: str = SUITE
    disk_size: str = DISK_SIZE
    files: dict[str, str] = field(default_factory=lambda: dict(GUEST_FILES))
    links: dict[str, str] = field(default_factory=lambda: dict(GUEST_LINKS))

    @property
    def rootfs(self) -> RootfsSpec:
        return RootfsSpec(suite=self.suite, init=INIT_SYSTEMD, include=KERNEL_PACKAGES)

    @property
    def key(self) -> str:
        """Digest of every input of the image."""
        inputs = {
            "version": IMAGE_VERSION,
            "rootfs": self.rootfs.name,
            "disk_size": self.disk_size,
            "files": self.files,
            "links": self.links,
        }
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def name(self) -> str:
        return f"vm-{self.suite}-{self.key}"


@dataclass(frozen=True)
class Image:
    """A built image: its ext4 disk and the kernel and initrd taken from its /boot."""

    path: Path

    @property
    def disk(self) -> Path:
        return self.path / "disk.raw"

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"

    @property
    def meta(self) -> dict[str, object]:
        return json.loads((self.path / "image.json").read_text())


def image_path(
    spec: ImageSpec | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    return Path(cache_dir or DEFAULT_CACHE_DIR) / (spec or ImageSpec()).name


def ensure_image(
    spec: ImageSpec | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] = default_log,
) -> Image:
    """Return the cached image, building it (and its root filesystem) if missing.

    Built in a temporary directory renamed into place when complete, under a lock,
    like the root filesystems: an interrupted build never leaves a half image.
    """
    spec = spec or ImageSpec()
    final = image_path(spec, cache_dir)
    if (final / "image.json").is_file():
        return Image(final)
    require_root()
    for tool in ("mkfs.ext4", "cp"):
        if not shutil.which(tool):
            raise SandboxError(f"{tool} is not installed (apt-get install -y e2fsprogs)")
    rootfs = ensure_rootfs(cache_dir, log, spec.rootfs)
    cache = final.parent
    lock = cache / f".build-{spec.name}.lock"

    def waiting() -> None:
        log(f"another process is building {spec.name}, waiting")

    with flock(lock, waiting) as fd, _terminate_raises():
        if (final / "image.json").is_file():
            return Image(final)
        for stale in cache.glob(f".tmp-build-{spec.name}-*"):
            log(f"removing interrupted build {stale}")
            remove_tree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-build-{spec.name}-", dir=cache))
        try:
            _build_image(spec, rootfs, tmp, fd, log)
            remove_tree(final)  # a directory without image.json is a dead build
            os.rename(tmp, final)
        except BaseException:
            log(f"image build failed or interrupted, removing {tmp}")
            remove_tree(tmp)
            raise
    log(f"VM image ready at {final}")
    return Image(final)


def _build_image(
    spec: ImageSpec, rootfs: Path, tmp: Path, lock_fd: int, log: Callable[[str], None]
) -> None:
    started = time.monotonic()
    build_log = tmp.parent / f"build-{spec.name}.log"
    build_log.write_text("")
    root = tmp / "root"
    log(f"building VM image {spec.name} from {rootfs.name} (log: {build_log})")
    _run_build_step(["cp", "-a", "--reflink=auto", rootfs, root], lock_fd, build_log)
    for rel, content in spec.files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # resolv.conf may be a symlink
        path.write_text(content)
        path.chmod(0o755 if rel in _EXECUTABLE else 0o644)
    for rel, target in spec.links.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.symlink_to(target)
    # The small initrd, made inside the guest's root by its own initramfs-tools;
    # proc and dev vanish with the private mount namespace.
    script = (
        'set -e; mount --bind /dev "$1/dev"; mount -t proc proc "$1/proc"; '
        'chroot "$1" update-initramfs -u -k all'
    )
    _run_build_step(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", root],
        lock_fd,
        build_log,
    )
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise SandboxError(f"expected one kernel in the image's /boot, found {kernels}")
    version = kernels[0].name.removeprefix("vmlinuz-")
    shutil.copyfile(kernels[0], tmp / "vmlinuz")
    shutil.copyfile(root / "boot" / f"initrd.img-{version}", tmp / "initrd.img")
    _run_build_step(
        ["mkfs.ext4", "-q", "-L", DISK_LABEL, "-d", root, tmp / "disk.raw", spec.disk_size],
        lock_fd,
        build_log,
    )
    remove_tree(root)
    (tmp / "image.json").write_text(
        json.dumps(
            {
                "name": spec.name,
                "suite": spec.suite,
                "rootfs": spec.rootfs.name,
                "kernel": version,
                "disk_size": spec.disk_size,
                "initrd_bytes": (tmp / "initrd.img").stat().st_size,
                "build_seconds": round(time.monotonic() - started, 1),
                "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            indent=2,
        )
        + "\n"
    )

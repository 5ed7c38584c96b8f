"""The pytest marks of a test that boots sandbox hosts, in one place."""

from __future__ import annotations

import os
import shutil

import pytest

# Namespaces, mounts and cgroups need root; the root filesystem needs debootstrap.
CAN_BOOT = os.geteuid() == 0 and bool(shutil.which("unshare")) and bool(shutil.which("debootstrap"))


def sandbox_hosts(timeout: float | None = None) -> list[pytest.MarkDecorator]:
    """`pytestmark` of a module whose tests boot hosts: the `sandbox` marker, a longer
    timeout where a converge needs one, skipped where hosts cannot boot."""
    marks = [pytest.mark.sandbox]
    if timeout is not None:
        marks.append(pytest.mark.timeout(timeout))
    marks.append(
        pytest.mark.skipif(not CAN_BOOT, reason="sandbox hosts need root, unshare and debootstrap")
    )
    return marks


# A VM needs root (the image build), debootstrap, mkfs.ext4 and QEMU.
CAN_BOOT_VM = CAN_BOOT and all(
    shutil.which(tool) for tool in ("qemu-system-x86_64", "qemu-img", "mkfs.ext4", "ssh")
)


def vm(timeout: float) -> list[pytest.MarkDecorator]:
    """`pytestmark` of a module whose tests boot a VM: the `vm` marker (kept out of
    `make test`; `make test-cgroup-v2` runs it), a long timeout, skipped without QEMU."""
    return [
        pytest.mark.vm,
        pytest.mark.timeout(timeout),
        pytest.mark.skipif(
            not CAN_BOOT_VM, reason="a VM needs root, debootstrap, mkfs.ext4 and qemu-system-x86"
        ),
    ]

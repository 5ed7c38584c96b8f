"""QEMU virtual machines booting Debian's own kernel, for what a shared kernel cannot
show (cgroup v2): ``image`` builds the cached disk, ``machine`` boots one and reaches it
over SSH, ``guest`` runs the project's tests inside; ``python -m testing.vm --help``."""

from testing.vm.guest import GuestResult, prepare, run_pytest
from testing.vm.image import Image, ImageSpec, ensure_image
from testing.vm.machine import VM, VMConfig, booted, clean, leftovers, start

__all__ = [
    "VM",
    "GuestResult",
    "Image",
    "ImageSpec",
    "VMConfig",
    "booted",
    "clean",
    "ensure_image",
    "leftovers",
    "prepare",
    "run_pytest",
    "start",
]

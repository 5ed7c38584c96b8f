"""Runs inside the VM only (`make test-cgroup-v2`, which sets LEAM_VM_GUEST): what the
project's cgroup tests may rely on there, and cgroup v2 limits on transient units."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import leampoll

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        os.environ.get("LEAM_VM_GUEST") != "1", reason="runs inside the VM (make test-cgroup-v2)"
    ),
]


def test_runs_as_root_with_the_checkout_installed() -> None:
    assert os.geteuid() == 0
    assert Path(sys.prefix) == Path("/root/venv")
    assert Path(leampoll.__file__).is_relative_to("/root/leam")
    assert Path("/run/systemd/system").is_dir()  # systemd is PID 1


def test_cgroup2_is_mounted_at_sys_fs_cgroup() -> None:
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    assert [fs for _, target, fs, *_ in mounts if target == "/sys/fs/cgroup"] == ["cgroup2"]


def test_tasks_max_bounds_a_transient_scope() -> None:
    spawn = (
        "import subprocess\n"
        "kids = []\n"
        "for _ in range(20):\n"
        "    try:\n"
        "        kids.append(subprocess.Popen(['sleep', '60']))\n"
        "    except OSError:\n"
        "        break\n"
        "print(len(kids))\n"
        "for k in kids:\n"
        "    k.kill(); k.wait()\n"
    )
    proc = subprocess.run(
        ["systemd-run", "--quiet", "--scope", "-p", "TasksMax=5", sys.executable, "-c", spawn],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # python itself is one task of the five.
    assert int(proc.stdout.strip()) == 4, proc.stdout + proc.stderr

"""cgroup v2 as real Debian servers boot it, in a VM booting Debian's own kernel (this
machine's kernel puts the controllers on v1, so sandbox hosts cannot show it). Slow:
`make test-cgroup-v2` runs it, `make test` does not. It also runs the test modules named
by LEAM_VM_TESTS (`make test-cgroup-v2 VM_TESTS=...`) inside the VM as root."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.marks import vm as vm_marks
from testing.vm import VM, VMConfig, booted, ensure_image, prepare, run_pytest

pytestmark = vm_marks(timeout=3600)

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_GUEST_TESTS = "tests/test_vm_guest.py"


@pytest.fixture(scope="module")
def vm() -> Iterator[VM]:
    """One VM for the module (a boot costs about half a minute of emulation)."""
    image = ensure_image()
    results = os.environ.get("LEAM_VM_RESULTS")
    config = VMConfig(console_copy=Path(results) / "console.log" if results else None)
    with booted(image, config) as machine:
        yield machine
    # Torn down: qemu gone (by its pid) and its overlay, key and logs removed.
    assert not machine.alive(), f"qemu pid {machine.pid} still running"
    assert not machine.workdir.exists(), f"{machine.workdir} left behind"


def test_boots_debians_own_kernel(vm: VM) -> None:
    kernel = vm.text("uname -r").strip()
    assert kernel == vm.image.meta["kernel"]
    assert kernel != os.uname().release
    assert vm.system_state == "running"


def test_unified_cgroup_hierarchy_has_memory_and_pids(vm: VM) -> None:
    assert vm.text("stat -fc %T /sys/fs/cgroup").strip() == "cgroup2fs"
    assert {"memory", "pids"} <= set(vm.text("cat /sys/fs/cgroup/cgroup.controllers").split())
    # systemd hands both down to its slices, so a unit's limits take effect.
    delegated = vm.text("cat /sys/fs/cgroup/cgroup.subtree_control").split()
    assert {"memory", "pids"} <= set(delegated)


def test_memory_max_kills_a_scope_and_its_peak_is_recorded(vm: VM) -> None:
    # systemd stops a scope once the OOM killer struck in it (OOMPolicy=stop), so its own
    # counters vanish with it; a slice of its own outlives it and counts it (v2 is
    # hierarchical). Seen: peak 104865792, 8 KiB over the limit.
    slice_ = "leamvmoom.slice"
    cg = f"/sys/fs/cgroup/{slice_}"
    alloc = 'python3 -c "bytearray(300<<20)"'
    try:
        # `; exit $?`: the guest's shell reports the kill as 137 (a command exec'd by
        # the shell would die by the signal, and ssh then says only 255).
        killed = vm.run(
            f"systemd-run --quiet --scope --slice={slice_} -p MemoryMax=100M {alloc}; exit $?",
            check=False,
        )
        assert killed.returncode == 137, killed.stderr.decode(errors="replace")
        peak = int(vm.text(f"cat {cg}/memory.peak"))
        assert 90 << 20 <= peak <= 101 << 20, peak
        events = dict(line.split() for line in vm.text(f"cat {cg}/memory.events").splitlines())
        assert int(events["oom_kill"]) >= 1, events
        log = vm.text("journalctl -k --no-pager -g 'Memory cgroup out of memory'")
        assert "Killed process" in log
    finally:
        vm.run(f"systemctl stop {slice_}", check=False)
    assert vm.run(f"test -e {cg}", check=False).returncode == 1


def test_project_tests_run_inside_as_root(vm: VM, tmp_path: Path) -> None:
    tests = os.environ.get("LEAM_VM_TESTS", "").split() or [DEFAULT_GUEST_TESTS]
    results = Path(os.environ.get("LEAM_VM_RESULTS") or tmp_path / "vm")
    started = time.monotonic()
    prepare(vm, PROJECT)
    prepare_seconds = round(time.monotonic() - started, 1)
    result = run_pytest(vm, tests, results)
    result.write_summary(
        results / "summary.json",
        tests=tests,
        kernel=vm.image.meta["kernel"],
        image_build_seconds=vm.image.meta["build_seconds"],
        boot_seconds=vm.boot_seconds,
        prepare_seconds=prepare_seconds,
    )
    assert result.returncode == 0, result.output[-4000:]
    assert result.passed > 0, result.output[-4000:]

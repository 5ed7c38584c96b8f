"""Unit tests of the guards: when a reading holds popping, and what the log line says.

Read on this machine's own filesystem and memory; no network, no subprocesses.
"""

from __future__ import annotations

import os

from leampoll.guards import Reading, holding, read
from leampoll.units import Size


def test_a_guard_holds_only_below_what_is_required():
    assert Reading("disk", 99, 1000, 100).holds
    assert not Reading("disk", 100, 1000, 100).holds
    readings = [Reading("disk", 5, 10, 6), Reading("memory", 7, 10, 6)]
    assert holding(readings) == readings[:1]


def test_inodes_are_shown_as_counts_and_bytes_as_sizes():
    assert str(Reading("inodes", 2048, 4096, 3000)) == "inodes 2048 free of 4096, need 3000"
    assert (
        str(Reading("disk", 2 * 1024**3, 8 * 1024**3, 3 * 1024**3))
        == "disk 2.0G free of 8.0G, need 3.0G"
    )


def test_read_measures_the_workdir_filesystem_and_memory(tmp_path):
    readings = {r.guard: r for r in read(tmp_path, Size(50, percent=True), Size(10), Size(1))}
    st = os.statvfs(tmp_path)
    assert readings["disk"].total == st.f_blocks * st.f_frsize
    assert readings["disk"].required == readings["disk"].total // 2
    assert readings["memory"].required == 1 and not readings["memory"].holds
    assert ("inodes" in readings) == bool(st.f_files)  # some filesystems count none
    for r in readings.values():
        assert 0 <= r.free <= r.total

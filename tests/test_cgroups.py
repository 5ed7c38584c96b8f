"""The cgroup-per-job code without systemd: names, modes, the cgroup files read,
the root helper's refusals, and stopping a whole job's cgroup (a real v1 cgroup
where this machine has one and the tests run as root)."""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from leampoll import cgroups
from leampoll.cgroups import JobCgroup, Limits, Mode, unit_name
from leampoll.executor import rundir_name
from testing.wait import wait_until

HELPER_FILE = Path(__file__).parent.parent / "roles" / "leampoll_jobs" / "files" / "job-unit"


def load_helper():
    loader = importlib.machinery.SourceFileLoader("job_unit", str(HELPER_FILE))
    spec = importlib.util.spec_from_loader("job_unit", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


helper = load_helper()


@pytest.mark.parametrize(
    ("project", "job"),
    [
        ("chicago", "run-42"),
        ("rio-de-janeiro", "../../etc/passwd"),
        ("ñandú", "x" * 400),
        ("a" * 300, "\x00job"),
    ],
)
def test_unit_names_carry_project_and_job_and_are_what_the_helper_accepts(project, job):
    name = unit_name(project, rundir_name(job))
    assert name.startswith("leam-job-") and name.endswith(".scope")
    assert len(name) < 255
    assert helper.unit_arg(name) == name
    # project and job stay apart: the project part has no dash of its own
    assert name.removeprefix("leam-job-").split("-", 1)[1].removesuffix(".scope") == (
        cgroups._safe(rundir_name(job), 120)
    )


def test_two_jobs_of_a_project_and_two_projects_never_share_a_unit():
    names = {unit_name(p, rundir_name(j)) for p in ("rio", "lima") for j in ("a", "b")}
    assert len(names) == 4


@pytest.mark.parametrize(
    "bad",
    [
        "sshd.service",
        "leam-job-a-b.service",
        "leam-job-a.scope",
        "leam-job-a-b/../c.scope",
        "leam-job--b.scope",
        "user@0.service",
        "leam-job-a-b.scope\n",
    ],
)
def test_helper_refuses_every_other_unit(bad):
    with pytest.raises(helper.Refused):
        helper.unit_arg(bad)
    assert helper.main(["stop", bad]) == 1


def test_helper_refuses_bad_limits_and_pids(capsys):
    assert helper.main(["start", "leam-job-a-b.scope", "1"]) == 1
    assert "pid" in capsys.readouterr().err
    with pytest.raises(helper.Refused, match="--memory-max"):
        helper.number("12G", 1 << 20, 2**62, "--memory-max")
    with pytest.raises(helper.Refused, match="--cpu-weight"):
        helper.number("0", 1, 10000, "--cpu-weight")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process of another user")
def test_helper_moves_no_process_of_another_user():
    other = subprocess.Popen(["sleep", "30"], user=65534)
    try:
        with pytest.raises(helper.Refused, match="does not belong"):
            helper.own_pid(str(other.pid), 0)
        assert helper.own_pid(str(os.getpid()), os.getuid()) == os.getpid()
    finally:
        other.kill()
        other.wait()


def test_limits_become_helper_arguments_with_room_for_the_keeper():
    assert Limits().helper_args() == []
    args = Limits(memory_max=100 << 20, tasks_max=50, cpu_weight=200).helper_args()
    assert args == [
        "--memory-max",
        str(100 << 20),
        "--tasks-max",
        "51",
        "--cpu-weight",
        "200",
    ]


def test_mode_says_which_and_why():
    assert cgroups.detect(enabled=False).describe() == "jobs: process groups (--job-cgroups off)"
    assert Mode("cgroup-v1", "systemd 252, leam-jobs.slice").describe() == (
        "jobs: cgroup-v1 (systemd 252, leam-jobs.slice)"
    )


def test_mode_without_the_helper_is_process_groups_saying_so(tmp_path):
    mode = cgroups.detect(helper=tmp_path / "job-unit")
    assert not mode.cgroup
    if Path("/run/systemd/system").is_dir() and cgroups.cgroup_version():
        assert "no job-unit helper" in mode.reason
    else:  # this machine, the init-less hosts, containers
        assert mode.reason.startswith(("no systemd as PID 1", "no memory controller"))


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_version_is_read_from_the_hierarchy(tmp_path):
    v2, v1, none = tmp_path / "v2", tmp_path / "v1", tmp_path / "none"
    write(v2 / "cgroup.controllers", "cpuset cpu io memory pids\n")
    write(v1 / "memory" / "memory.max_usage_in_bytes", "0\n")
    write(none / "cgroup.controllers", "cpu pids\n")
    assert cgroups.cgroup_version(v2) == 2
    assert cgroups.cgroup_version(v1) == 1
    assert cgroups.cgroup_version(none) is None
    assert cgroups.cgroup_version(tmp_path / "missing") is None


def test_v2_files_give_peak_cpu_oom_and_processes(tmp_path):
    unit = unit_name("rio", "job1")
    d = tmp_path / cgroups.SLICE_PATH / unit
    write(d / "memory.current", "1048576\n")
    write(d / "memory.peak", "314572800\n")
    write(d / "cpu.stat", "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    write(d / "memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    write(d / "cgroup.procs", "12\n34\n")
    cg = JobCgroup(unit, 2, tmp_path)
    assert cg.memory_current() == 1 << 20
    assert cg.memory_peak() == 300 << 20
    assert cg.cpu_seconds() == 2.5
    assert cg.oom_kills() == 1
    assert cg.pids() == [12, 34]


def test_v1_files_give_peak_cpu_oom_and_processes(tmp_path):
    unit = unit_name("rio", "job1")
    rel = Path(cgroups.SLICE_PATH) / unit
    write(tmp_path / "memory" / rel / "memory.usage_in_bytes", "4096\n")
    write(tmp_path / "memory" / rel / "memory.max_usage_in_bytes", "104857600\n")
    write(
        tmp_path / "memory" / rel / "memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    )
    write(tmp_path / "cpuacct" / rel / "cpuacct.usage", "1500000000\n")
    write(tmp_path / "systemd" / rel / "cgroup.procs", "7\n")
    cg = JobCgroup(unit, 1, tmp_path)
    assert cg.memory_peak() == 100 << 20
    assert cg.memory_current() == 4096
    assert cg.cpu_seconds() == 1.5
    assert cg.oom_kills() == 2
    assert cg.pids() == [7]


def test_a_gone_cgroup_reads_as_nothing(tmp_path):
    cg = JobCgroup(unit_name("rio", "gone"), 2, tmp_path)
    assert (cg.memory_peak(), cg.cpu_seconds(), cg.oom_kills(), cg.pids()) == (None, None, 0, [])


V1_SYSTEMD = Path("/sys/fs/cgroup/systemd")


@contextlib.contextmanager
def real_v1_cgroup() -> Iterator[JobCgroup]:
    """A job cgroup in this machine's name=systemd hierarchy, removed afterwards.

    JobCgroup reads <root>/systemd/<slice>/<unit>: root is a test directory
    inside the hierarchy, so nothing of the machine's own cgroups is touched.
    """
    top = V1_SYSTEMD / f"leam-test-{os.getpid()}"
    cg = JobCgroup(unit_name(f"test{os.getpid()}", "killall"), 1, top)
    cg.file("systemd", "cgroup.procs").parent.mkdir(parents=True)
    try:
        yield cg
    finally:
        for pid in cg.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        wait_until(lambda: not cg.pids(), 10, "the test cgroup empty")
        subprocess.run(["find", str(top), "-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
        assert not top.exists()


@pytest.mark.skipif(
    os.geteuid() != 0 or not (V1_SYSTEMD / "cgroup.procs").exists(),
    reason="needs root and a cgroup v1 name=systemd hierarchy",
)
def test_kill_all_ends_a_daemon_that_ignores_term_and_spares_the_keeper():
    with real_v1_cgroup() as cg:
        procs = cg.file("systemd", "cgroup.procs")
        keeper = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import os, signal, time\n"
                "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "os.setsid()\n"
                "if os.fork() == 0:\n    time.sleep(60)\nelse:\n    time.sleep(60)\n",
            ],
            preexec_fn=lambda: procs.write_text(str(os.getpid())),
        )
        procs.write_text(str(keeper.pid))
        wait_until(lambda: len(cg.pids()) == 3, 10, "the daemon, its child and the keeper")
        found = cgroups.kill_all(cg, grace=0.5, spare={keeper.pid})
        assert found == 2
        assert cg.pids() == [keeper.pid]
        assert daemon.wait(5) == -9  # TERM ignored: killed after the grace
        keeper.stdin.close()
        keeper.wait(5)

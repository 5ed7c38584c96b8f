"""Boot and power: a host's PID 1 started in namespaces of its own, waited for, ended.

systemd (or sshd, for an init-less host) becomes PID 1 of its own
namespaces and cgroups; a reboot is ``systemctl reboot`` inside and the same
disk booted again, a power cut SIGKILL to PID 1 from outside. Every step
records what it started in the host's ``state.json`` (`HostDir`), so another
process can find it by pid and start time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from testing.sandbox.disk import HostDir
from testing.sandbox.host import Host
from testing.sandbox.settings import BOOT_TIMEOUT, CHROOT_ENV, INIT_SYSTEMD, SYSTEMD_ARGS
from testing.sandbox.system import (
    SandboxError,
    cgroup_hierarchies,
    children,
    make_cgroup,
    port_open,
    proc_start_time,
    remove_cgroup,
    run_command,
    same_process,
    wait_cgroup_empty,
    wait_gone,
)


class Power:
    """Starts, stops and follows the PID 1 of the hosts below ``hosts_dir``.

    Keeps the ``unshare`` children this process started, so their exit
    status tells a reboot from a poweroff or a kill, and none is left a zombie.
    """

    def __init__(self, hosts_dir: Path, key_file: Path, log: Callable[[str], None]) -> None:
        self.hosts_dir = hosts_dir
        self.key_file = key_file
        self.log = log
        self._procs: dict[str, subprocess.Popen[bytes]] = {}  # unshare children we started
        self._lock = threading.Lock()

    def dir(self, name: str) -> HostDir:
        return HostDir(self.hosts_dir / name)

    def spawn(self, name: str, state: dict, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start the host's unshare (its console to console.log) and record its PID 1."""
        log_file = open(self.dir(name).console_log, "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=CHROOT_ENV,
                # own session: Ctrl-C on the caller's terminal must not kill hosts
                start_new_session=True,
            )
        finally:
            log_file.close()
        with self._lock:
            self._procs[name] = proc
        state["unshare_pid"] = proc.pid
        state["unshare_start"] = proc_start_time(proc.pid)
        state["pid1"] = state["pid1_start"] = None
        self.dir(name).write_state(state)
        deadline = time.monotonic() + 30
        pid1 = None
        while pid1 is None:
            kids = children(proc.pid)
            if kids:
                pid1 = kids[0]
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise SandboxError(
                    f"{name}: unshare exited early:\n{self.dir(name).console_tail()}"
                )
            else:
                time.sleep(0.005)
        state["pid1"] = pid1
        state["pid1_start"] = proc_start_time(pid1)
        state["boots"] = state.get("boots", 0) + 1
        self.dir(name).write_state(state)
        return proc

    def start_sshd(self, name: str, state: dict, timeout: float) -> Host:
        """Init-less host: sshd as PID 1 of new UTS, PID and mount namespaces."""
        deadline = time.monotonic() + timeout
        # In the new namespaces: hostname, /proc, then pivot_root into the host
        # root and drop the old root, so the host sees only its own mounts and
        # does not pin other hosts' mounts; sshd becomes PID 1.
        script = (
            'set -e; hostname "$1"; mount -t proc proc "$2/proc"; cd "$2"; '
            "pivot_root . .; umount -l .; cd /; "
            'exec /usr/sbin/sshd -D -e -o ListenAddress="$3" -o PidFile=none'
        )
        proc = self.spawn(
            name,
            state,
            [
                "unshare",
                "--uts",
                "--pid",
                "--mount",
                "--fork",
                "--kill-child",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
                name,
                state["root"],
                state["address"],
            ],
        )
        self.log(f"{name}: started, PID 1 of its namespace is pid {state['pid1']}")
        host = Host.from_state(state, self.key_file)
        self.wait_ssh(host, proc, deadline)
        self.log(f"{name}: ssh root@{host.address} works")
        state["started"] = time.time()
        self.dir(name).write_state(state)
        return host

    def boot_systemd(self, name: str, state: dict, timeout: float) -> Host:
        """Boot the host's disk with systemd as PID 1 of its own namespaces.

        The host gets its own cgroup (below the machine's name=systemd
        hierarchy) and cgroup namespace, so its systemd manages only its own
        processes; /proc/sys and /sys are read-only inside, so it cannot
        change the machine's kernel settings.
        """
        deadline = time.monotonic() + timeout
        # Its own cgroup in every hierarchy, not only name=systemd: its
        # systemd mounts the others too, and would otherwise make its
        # slices at the root of the machine's.
        cgroups = [h / Path(state["cgroup"]).name for h in cgroup_hierarchies()]
        state["cgroups"] = [str(c) for c in cgroups]
        self.dir(name).write_state(state)
        for cgroup in cgroups:
            remove_cgroup(cgroup)  # sub-cgroups an earlier boot's systemd left
            make_cgroup(cgroup)
        inner = (
            'set -e; R="$1"; mount --make-rprivate /; '
            'mount -t proc proc "$R/proc"; '
            'mount --bind "$R/proc/sys" "$R/proc/sys"; '
            'mount -o remount,bind,ro "$R/proc/sys"; '
            'mount -t sysfs -o ro sysfs "$R/sys"; '
            'mount -t tmpfs -o mode=0755 tmpfs "$R/sys/fs/cgroup"; '
            'mkdir -p "$R/sys/fs/cgroup/systemd"; '
            'mount -t cgroup -o none,name=systemd cgroup "$R/sys/fs/cgroup/systemd"; '
            'mount -t tmpfs -o mode=0755 tmpfs "$R/run"; '
            'mount -t tmpfs -o mode=0755 tmpfs "$R/dev"; '
            "for d in null zero full random urandom tty; do "
            'touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done; '
            'mkdir -p "$R/dev/pts" "$R/dev/shm"; '
            'mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$R/dev/pts"; '
            'ln -sf pts/ptmx "$R/dev/ptmx"; '
            'mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"; '
            'exec chroot "$R" /usr/bin/env -i container=other '
            "/lib/systemd/systemd --system " + SYSTEMD_ARGS
        )
        outer = (
            'set -e; R="$1"; I="$2"; shift 2; for c in "$@"; do echo $$ > "$c/cgroup.procs"; done; '
            'exec unshare --pid --mount --uts --ipc --cgroup --fork --kill-child sh -c "$I" sh "$R"'
        )
        old_boot = state.get("pid1_start")
        proc = self.spawn(
            name, state, ["sh", "-c", outer, "sh", state["root"], inner, *state["cgroups"]]
        )
        self.log(f"{name}: booting, systemd is pid {state['pid1']} (boot {state['boots']})")
        host = Host.from_state(state, self.key_file)
        self.wait_ssh(host, proc, deadline)
        self.wait_system_running(host, proc, deadline)
        if host.read_boot_id() != host.boot_id or host.boot_id == str(old_boot):
            raise SandboxError(f"{name}: SSH reached another boot than the one just started")
        state["started"] = time.time()
        self.dir(name).write_state(state)
        self.log(f"{name}: booted, ssh root@{host.address} works")
        return host

    def wait_system_running(
        self, host: Host, proc: subprocess.Popen[bytes], deadline: float
    ) -> str:
        """Poll ``systemctl is-system-running`` until running or degraded."""
        while True:
            if proc.poll() is not None or not host.alive:
                raise SandboxError(
                    f"{host.name}: systemd exited:\n{self.dir(host.name).console_tail()}"
                )
            res = host.ssh("systemctl is-system-running", timeout=30)
            status = res.stdout.strip()
            if status in ("running", "degraded"):
                if status == "degraded":
                    failed = host.ssh("systemctl --failed --no-legend --plain").stdout
                    self.log(f"{host.name}: degraded; failed units: {failed.strip()}")
                return status
            if time.monotonic() > deadline:
                raise SandboxError(f"{host.name}: system {status!r}, not running in time")
            time.sleep(0.2)

    def wait_ssh(self, host: Host, proc: subprocess.Popen[bytes], deadline: float) -> None:
        """Poll until the port accepts, then until a real SSH login succeeds."""
        while not port_open(host.address, 22):
            if proc.poll() is not None or not host.alive:
                raise SandboxError(
                    f"{host.name}: PID 1 died:\n{self.dir(host.name).console_tail()}"
                )
            if time.monotonic() > deadline:
                raise SandboxError(f"{host.name}: sshd did not listen in time")
            time.sleep(0.02)
        while True:
            res = host.ssh("true", timeout=max(1.0, deadline - time.monotonic()))
            if res.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"{host.name}: ssh root@{host.address} failed: {res.stderr.strip()}\n"
                    f"{self.dir(host.name).console_tail()}"
                )
            time.sleep(0.1)

    def systemd_host(self, host: Host | str) -> tuple[str, dict]:
        name = host if isinstance(host, str) else host.name
        state = self.dir(name).read_state()
        if not state:
            raise SandboxError(f"no sandbox host named {name!r} in {self.hosts_dir.parent}")
        if state.get("init") != INIT_SYSTEMD:
            raise SandboxError(f"{name}: boots, reboots and power cuts need a systemd host")
        return name, state

    def follow(self, host: Host | str, state: dict) -> Host:
        """Update a caller's Host in place (it follows its host across boots)."""
        if isinstance(host, Host):
            host.state.clear()
            host.state.update(state)
            return host
        return Host.from_state(state, self.key_file)

    def wait_down(self, host: Host | str, timeout: float = 60) -> str:
        """Wait until the host's PID 1 has ended; returns why, as far as is known.

        "reboot" or "poweroff" when its systemd asked the kernel for that
        (the namespace's init then exits on SIGHUP or SIGINT), "killed" after
        SIGKILL, "gone" when this process did not start it.
        """
        name = host if isinstance(host, str) else host.name
        state = self.dir(name).read_state() or {}
        pid1, start = state.get("pid1"), state.get("pid1_start")
        if pid1 is not None and not wait_gone(pid1, start, timeout):
            raise SandboxError(f"{name}: still running after {timeout}s")
        upid, ustart = state.get("unshare_pid"), state.get("unshare_start")
        with self._lock:
            proc = self._procs.pop(name, None)
        reason = "gone"
        if proc is not None:
            rc = proc.wait(timeout=30)
            reason = {
                -signal.SIGHUP: "reboot",
                -signal.SIGINT: "poweroff",
                -signal.SIGKILL: "killed",
            }.get(rc, f"exited {rc}")
        elif upid is not None and not wait_gone(upid, ustart, 30):
            raise SandboxError(f"{name}: unshare pid {upid} did not exit")
        for cgroup in state.get("cgroups", []):
            wait_cgroup_empty(Path(cgroup), 30)
        return reason

    def boot(self, host: Host | str, timeout: float = BOOT_TIMEOUT) -> Host:
        """Boot a systemd host's disk again (after a reboot, poweroff or power cut)."""
        name, state = self.systemd_host(host)
        if same_process(state.get("pid1"), state.get("pid1_start")):
            raise SandboxError(f"{name}: already running")
        self.wait_down(name, timeout=10)
        self.boot_systemd(name, state, timeout)
        return self.follow(host, state)

    def reboot(self, host: Host | str, timeout: float = BOOT_TIMEOUT) -> Host:
        """``systemctl reboot`` inside, wait until the namespace has ended, boot again.

        Returns the host in its new boot (a Host passed in is updated): its
        ``boot_id`` differs from before, and the host itself reports the new one.
        """
        name, state = self.systemd_host(host)
        before = state.get("pid1_start")
        self.log(f"{name}: systemctl reboot")
        # The SSH session may be cut as the host goes down: its result says nothing.
        with contextlib.suppress(subprocess.TimeoutExpired):
            run_command(
                Host.from_state(state, self.key_file).ssh_command("systemctl reboot"),
                check=False,
                timeout=60,
            )
        try:
            reason = self.wait_down(name, timeout)
        except SandboxError as exc:
            report = self.shutdown_report(state)
            raise SandboxError(f"{exc}; what it waits for:\n{report}") from exc
        if reason not in ("reboot", "gone"):
            raise SandboxError(f"{name}: asked to reboot, but its PID 1 {reason}")
        self.log(f"{name}: went down ({reason}), booting the same disk")
        self.boot_systemd(name, state, timeout)
        if state["pid1_start"] == before:
            raise SandboxError(f"{name}: boot id unchanged after the reboot")
        return self.follow(host, state)

    def shutdown_report(self, state: dict) -> str:
        """systemd's pending jobs and the processes left, read from outside (nsenter)."""
        host = Host.from_state(state, self.key_file)
        out = []
        for argv in (["systemctl", "list-jobs", "--no-pager"], ["ps", "-ef"]):
            with contextlib.suppress(Exception):
                res = host.run_inside(argv, timeout=20)
                out.append(res.stdout + res.stderr)
        return "\n".join(out)

    def power_cut(self, host: Host | str, timeout: float = 30) -> Host:
        """SIGKILL to the host's systemd from outside: every process of it dies at once.

        The host stays down (its disk kept) until ``boot``.
        """
        name, state = self.systemd_host(host)
        pid1, start = state.get("pid1"), state.get("pid1_start")
        if not same_process(pid1, start):
            raise SandboxError(f"{name}: not running")
        self.log(f"{name}: power cut (SIGKILL to pid {pid1})")
        os.kill(pid1, signal.SIGKILL)
        self.wait_down(name, timeout)
        return self.follow(host, state)

    def stop(self, name: str, state: dict) -> None:
        """SIGKILL to the host's PID 1 (or its unshare), then wait until both are gone and
        its cgroups empty; safe on a host that never fully started or is down already."""
        pid1, pid1_start = state.get("pid1"), state.get("pid1_start")
        upid, ustart = state.get("unshare_pid"), state.get("unshare_start")
        # SIGKILL to the namespace's PID 1 ends every process of the host.
        if same_process(pid1, pid1_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid1, signal.SIGKILL)
        # unshare --kill-child also kills its child if unshare itself dies,
        # which covers a host whose PID 1 was never recorded.
        if pid1 is None and same_process(upid, ustart):
            with contextlib.suppress(ProcessLookupError):
                os.kill(upid, signal.SIGKILL)
        with self._lock:
            proc = self._procs.pop(name, None)
        if proc is not None:  # our own child: reap it so it leaves no zombie
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for pid, start in ((pid1, pid1_start), (upid, ustart)):
            if pid is not None and not wait_gone(pid, start, 10):
                raise SandboxError(f"{name}: pid {pid} did not exit")
        for cgroup in state.get("cgroups", []):
            wait_cgroup_empty(Path(cgroup), 10)

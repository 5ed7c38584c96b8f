"""One QEMU virtual machine booting Debian's own kernel under TCG emulation: started
from a cached image (a qcow2 overlay per VM, the image itself never written), reached
over SSH on a 127.0.0.1 port, powered off and torn down by its pid.

Why a VM at all: sandbox hosts share this machine's kernel, whose controllers sit on
cgroup v1; only a kernel of the guest's own shows the cgroup v2 that real servers boot.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from testing.sandbox.settings import SSH_OPTIONS
from testing.sandbox.system import (
    SandboxError,
    default_log,
    proc_start_time,
    run_command,
    same_process,
    wait_gone,
)
from testing.vm.image import KEY_ARG, Image

# Overlays grow with what the guest writes (a venv, test output): on disk, not in /run.
DEFAULT_STATE_PARENT = Path(os.environ.get("LEAM_VM_STATE", "/var/tmp"))
STATE_PREFIX = "leam-vm-"
BOOT_TIMEOUT = 900.0  # start to SSH: 30-40 s on a quiet machine, minutes when it is busy
READY_TIMEOUT = 600.0  # SSH to `systemctl is-system-running` settled
POWEROFF_TIMEOUT = 90.0
# The guest's 10.0.2.x network reaches nothing by default (restrict=on): tests bring
# what they need (a wheelhouse); hostfwd to the guest's sshd works either way.
# net.ifnames=0: the one NIC is eth0, whatever PCI slot QEMU gives it. mitigations=off:
# emulated page-table isolation and retpolines cost much and guard nothing here.
KERNEL_ARGS = (
    "root=/dev/vda",
    "rw",
    "console=ttyS0",
    "panic=-1",
    "net.ifnames=0",
    "mitigations=off",
    "quiet",
)


@dataclass(frozen=True)
class VMConfig:
    """How a VM runs: modest by default, the machine is shared."""

    memory_mb: int = 2048
    cpus: int = 2
    network: bool = False  # True lets the guest reach what this machine reaches
    boot_timeout: float = BOOT_TIMEOUT
    state_parent: Path = DEFAULT_STATE_PARENT
    extra_kernel_args: tuple[str, ...] = ()
    console_copy: Path | None = None  # where the guest's console log is kept at teardown


@dataclass
class VM:
    """A started VM. Everything it owns lives in ``workdir`` (overlay, key, console
    log, pid file); ``destroy`` kills the qemu process by its pid and removes it."""

    image: Image
    config: VMConfig
    workdir: Path
    port: int
    pid: int
    start_time: int | None
    log: Callable[[str], None] = field(default=default_log, repr=False)
    boot_seconds: float | None = None
    system_state: str | None = None

    @property
    def key(self) -> Path:
        return self.workdir / "id_ed25519"

    @property
    def console(self) -> Path:
        return self.workdir / "console.log"

    def alive(self) -> bool:
        return same_process(self.pid, self.start_time)

    # ---------------------------------------------------------------- commands

    def ssh_argv(self, command: str, *, connect_timeout: int = 10) -> list[str]:
        return [
            "ssh",
            *SSH_OPTIONS.split(),
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={connect_timeout}",
            "-o",
            "ServerAliveInterval=15",
            "-i",
            str(self.key),
            "-p",
            str(self.port),
            "root@127.0.0.1",
            command,
        ]

    def run(
        self,
        command: str,
        *,
        timeout: float = 600.0,
        check: bool = True,
        input: bytes | None = None,
        stdout: int | None = subprocess.PIPE,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a shell command in the guest as root; output as bytes (tar streams too)."""
        proc = subprocess.run(
            self.ssh_argv(command),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            out = (proc.stdout or b"")[-2000:].decode(errors="replace")
            raise SandboxError(
                f"in the VM, {command!r} exited {proc.returncode}:\n"
                f"{out}{proc.stderr[-2000:].decode(errors='replace')}"
            )
        return proc

    def text(self, command: str, **kwargs: object) -> str:
        """Run a command in the guest and return its stdout as text."""
        return self.run(command, **kwargs).stdout.decode(errors="replace")  # type: ignore[arg-type]

    def copy_in(self, src: Path, dest: str, files: Sequence[str] | None = None) -> None:
        """Copy ``files`` of ``src`` (relative paths; all of it if None) to ``dest``
        in the guest, as one tar stream over SSH."""
        names = ["."] if files is None else list(files)
        tar = subprocess.run(
            ["tar", "-C", str(src), "--null", "-T", "-", "-cf", "-"],
            input=b"\0".join(n.encode() for n in names),
            capture_output=True,
            check=False,
        )
        if tar.returncode != 0:
            raise SandboxError(f"tar of {src} failed: {tar.stderr.decode(errors='replace')}")
        q = shlex.quote(dest)
        self.run(f"mkdir -p {q} && tar -C {q} -xf -", input=tar.stdout)

    def copy_out(self, src: str, dest: Path) -> None:
        """Copy the guest's directory ``src`` into ``dest`` on this machine."""
        dest.mkdir(parents=True, exist_ok=True)
        data = self.run(f"tar -C {shlex.quote(src)} -cf - .").stdout
        subprocess.run(["tar", "-C", str(dest), "-xf", "-"], input=data, check=True)

    # ---------------------------------------------------------------- lifecycle

    def wait_ssh(self, timeout: float) -> None:
        """Wait until the guest's sshd lets our key in. The forwarded port accepts
        connections before the guest listens, so only a command run counts."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise SandboxError(f"qemu exited during boot; console:\n{self.console_tail()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                probe = subprocess.run(
                    self.ssh_argv("true", connect_timeout=5),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=30,
                    check=False,
                )
                if probe.returncode == 0:
                    return
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"no SSH into the VM after {timeout:.0f}s; console:\n{self.console_tail()}"
                )
            time.sleep(1)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> str:
        """Wait for systemd to settle; log failed units when it is not `running`."""
        state = self.text(
            f"timeout {int(timeout)} systemctl is-system-running --wait",
            check=False,
            timeout=timeout + 30,
        ).strip()
        if state != "running":
            failed = self.text("systemctl --failed --no-legend --plain", check=False)
            self.log(f"VM system state {state!r}; failed units:\n{failed}")
        self.system_state = state
        self.log(self.text("systemd-analyze time", check=False).strip())
        return state

    def console_tail(self, chars: int = 3000) -> str:
        try:
            return self.console.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no console log)"

    def poweroff(self, timeout: float = POWEROFF_TIMEOUT) -> bool:
        """Shut the guest down cleanly; True if qemu exited within ``timeout``."""
        if not self.alive():
            return True
        # The connection may drop as sshd stops: the exit code says nothing.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.run("systemctl poweroff", check=False, timeout=30)
        return wait_gone(self.pid, self.start_time, timeout)

    def destroy(self) -> None:
        """Kill qemu by its pid (if still running) and remove the VM's files."""
        if self.config.console_copy and self.console.exists():
            self.config.console_copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.console, self.config.console_copy)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            if not wait_gone(self.pid, self.start_time, 30):
                raise SandboxError(f"qemu pid {self.pid} did not exit after SIGKILL")
        shutil.rmtree(self.workdir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _qemu_argv(image: Image, config: VMConfig, workdir: Path, port: int, pubkey: str) -> list[str]:
    key_arg = f"{KEY_ARG}={base64.b64encode(pubkey.strip().encode()).decode()}"
    netdev = f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22"
    if not config.network:
        netdev += ",restrict=on"
    return [
        "qemu-system-x86_64",
        "-nodefaults",
        "-no-reboot",
        "-name",
        workdir.name,
        "-accel",
        "tcg,tb-size=256",
        "-cpu",
        "max",
        "-smp",
        str(config.cpus),
        "-m",
        str(config.memory_mb),
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{workdir / 'console.log'}",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initrd),
        "-append",
        " ".join([*KERNEL_ARGS, *config.extra_kernel_args, key_arg]),
        "-drive",
        f"file={workdir / 'overlay.qcow2'},if=virtio,format=qcow2",
        "-netdev",
        netdev,
        "-device",
        "virtio-net-pci,netdev=net0",
        "-device",
        "virtio-rng-pci",
        "-pidfile",
        str(workdir / "qemu.pid"),
    ]


def start(
    image: Image, config: VMConfig | None = None, log: Callable[[str], None] = default_log
) -> VM:
    """Start a VM and wait until SSH works and systemd has settled.

    On any failure the VM is destroyed before the error propagates.
    """
    config = config or VMConfig()
    if not shutil.which("qemu-system-x86_64"):
        raise SandboxError("qemu is not installed (apt-get install -y qemu-system-x86 qemu-utils)")
    config.state_parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=STATE_PREFIX, dir=config.state_parent))
    try:
        run_command(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                workdir.name,
                "-f",
                workdir / "id_ed25519",
            ]
        )
        run_command(
            [
                "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                "-b", image.disk.resolve(), workdir / "overlay.qcow2",
            ]
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    pubkey = (workdir / "id_ed25519.pub").read_text()
    started = time.monotonic()
    vm: VM | None = None
    try:
        for _attempt in range(5):  # a port taken between choosing and binding: retry
            port = _free_port()
            with open(workdir / "qemu.log", "wb") as out:
                proc = subprocess.Popen(
                    _qemu_argv(image, config, workdir, port, pubkey),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            vm = VM(image, config, workdir, port, proc.pid, proc_start_time(proc.pid), log)
            (workdir / "vm.json").write_text(
                json.dumps({"pid": vm.pid, "start_time": vm.start_time, "port": port}) + "\n"
            )
            log(f"qemu pid {proc.pid} booting {image.path.name}, SSH on 127.0.0.1:{port}")
            # qemu fails at once when it cannot bind the port; otherwise it keeps running.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
            if proc.poll() is None:
                break
            qlog = (workdir / "qemu.log").read_text(errors="replace")
            if "hostfwd" not in qlog and "forwarding" not in qlog:
                raise SandboxError(f"qemu exited {proc.returncode}: {qlog[-2000:]}")
        else:
            raise SandboxError("qemu could not bind a free SSH port in 5 tries")
        vm.wait_ssh(config.boot_timeout)
        vm.boot_seconds = round(time.monotonic() - started, 1)
        log(f"VM reachable over SSH {vm.boot_seconds}s after start")
        vm.wait_ready()
        return vm
    except BaseException:
        if vm is not None:
            vm.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
        raise


@contextlib.contextmanager
def booted(
    image: Image, config: VMConfig | None = None, log: Callable[[str], None] = default_log
) -> Iterator[VM]:
    """A running VM for the block: powered off cleanly after it, killed if that fails,
    its files removed either way."""
    vm = start(image, config, log)
    try:
        yield vm
    finally:
        try:
            if not vm.poweroff():
                log(f"VM pid {vm.pid} did not power off in time, killing it")
        finally:
            vm.destroy()


def leftovers(state_parent: Path = DEFAULT_STATE_PARENT) -> list[Path]:
    """State directories of VMs still here (a killed run leaves its own)."""
    return sorted(state_parent.glob(f"{STATE_PREFIX}*"))


def clean(
    state_parent: Path = DEFAULT_STATE_PARENT, log: Callable[[str], None] = default_log
) -> int:
    """Kill every leftover VM by the pid (and start time) it recorded; remove its files."""
    count = 0
    for workdir in leftovers(state_parent):
        with contextlib.suppress(OSError, ValueError, KeyError):
            info = json.loads((workdir / "vm.json").read_text())
            pid, start_time = int(info["pid"]), info["start_time"]
            if same_process(pid, start_time):
                log(f"killing leftover VM pid {pid} ({workdir.name})")
                os.kill(pid, signal.SIGKILL)
                wait_gone(pid, start_time, 30)
        shutil.rmtree(workdir, ignore_errors=True)
        count += 1
    return count

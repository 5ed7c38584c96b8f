"""One sandbox host as the controller sees it: its state, SSH, nsenter, its processes.

What a test holds: a `Host` follows its host across boots (the boot and power
steps update its ``state`` in place) and reaches it like a server, over SSH.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from testing.sandbox.settings import CHROOT_ENV, INIT_NONE, SSH_OPTIONS, SUITE
from testing.sandbox.system import SandboxError, proc_start_time, run_command, same_process


@dataclass
class Host:
    """One sandbox host, as seen from the controller.

    ``state`` is the host's ``state.json``; ``Sandbox.boot``/``reboot``/
    ``power_cut`` update it in place, so a Host held by a test follows its
    host across boots.
    """

    name: str
    address: str
    root: Path  # the host's / on the controller (an overlay mount point)
    key_file: Path
    index: int
    state: dict = field(default_factory=dict, repr=False)

    @property
    def pid1(self) -> int | None:
        """The machine's pid of the host's PID 1 (sshd or systemd) in its current boot."""
        return self.state.get("pid1")

    @property
    def init(self) -> str:
        return self.state.get("init", INIT_NONE)

    @property
    def suite(self) -> str:
        return self.state.get("suite", SUITE)

    @property
    def alive(self) -> bool:
        """True while the host's PID 1 is running."""
        return same_process(self.pid1, self.state.get("pid1_start"))

    @property
    def boot_id(self) -> str | None:
        """Identity of the current boot: PID 1's start time (the kernel's boot id is shared).

        The same value is read inside the host by ``read_boot_id``.
        """
        start = self.state.get("pid1_start")
        return None if start is None else str(start)

    def read_boot_id(self) -> str:
        """The boot identity as the host itself reports it over SSH."""
        stat = self.ssh("cat /proc/1/stat", check=True, timeout=30).stdout
        return stat.rsplit(")", 1)[1].split()[19]

    def processes(self) -> list[tuple[int, int | None, str]]:
        """(pid, start time, command line) of every live process of the host, seen from outside.

        Found by PID namespace, so a process outside any cgroup of the host
        (say one that escaped it) is listed too.
        """
        if not self.alive:
            return []
        try:
            ns = os.readlink(f"/proc/{self.pid1}/ns/pid")
        except OSError:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                start = proc_start_time(int(entry))
                if start is not None and os.readlink(f"/proc/{entry}/ns/pid") == ns:
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                    found.append(
                        (
                            int(entry),
                            start,
                            cmdline.replace(b"\0", b" ").decode(errors="replace").strip(),
                        )
                    )
        return found

    def ssh_command(self, command: str | Sequence[str] | None = None) -> list[str]:
        """The ``ssh`` argv that runs ``command`` on this host as root."""
        argv = [
            "ssh",
            "-i",
            str(self.key_file),
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            *SSH_OPTIONS.split(),
            f"root@{self.address}",
        ]
        if command is not None:
            argv.append(command if isinstance(command, str) else shlex.join(command))
        return argv

    def ssh(
        self,
        command: str | Sequence[str],
        *,
        check: bool = False,
        timeout: float | None = 120,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on the host over real SSH (a string goes to the remote shell)."""
        return run_command(
            self.ssh_command(command),
            check=check,
            timeout=timeout,
            input=input,
            what=f"{self.name}: {command!r}",
        )

    def run_inside(
        self, argv: Sequence[str], *, check: bool = False, timeout: float | None = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the host's namespaces and root without SSH (nsenter).

        For what SSH cannot reach: a host whose sshd is not up (yet).
        """
        if not self.alive:
            raise SandboxError(f"{self.name}: not running")
        return run_command(
            [
                "nsenter",
                "--target",
                str(self.pid1),
                "--mount",
                "--uts",
                "--ipc",
                "--pid",
                "--root",
                "--wd",
                "--",
                *argv,
            ],
            env=CHROOT_ENV,
            check=check,
            timeout=timeout,
            what=f"{self.name}: {list(argv)}",
        )

    def system_state(self) -> str:
        """``systemctl is-system-running`` inside the host ("" if it does not answer)."""
        res = self.run_inside(["systemctl", "is-system-running"], timeout=30)
        return res.stdout.strip()

    @classmethod
    def from_state(cls, state: dict, key_file: Path) -> Host:
        """The host a ``state.json`` describes, reached with the sandbox's key."""
        return cls(
            name=state["name"],
            address=state["address"],
            root=Path(state["root"]),
            key_file=key_file,
            index=state["index"],
            state=state,
        )

    def ansible_vars(self) -> dict[str, str]:
        """Connection variables Ansible needs for this host."""
        return {
            "ansible_host": self.address,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.key_file),
            "ansible_ssh_common_args": SSH_OPTIONS,
            "ansible_python_interpreter": "/usr/bin/python3",
        }

"""The host's files on the controller: ``state_dir/hosts/<name>/``.

Its ``state.json`` (what a later process needs to boot it again or tear it
down), the disk (overlay layers and mount point, written before the first
boot) and the console log of its PID 1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from testing.sandbox.rootfs import copy_resolv
from testing.sandbox.settings import INIT_NONE, INIT_SYSTEMD, SYSTEMD_MASKED
from testing.sandbox.system import SandboxError, port_open, run_command


@dataclass(frozen=True)
class HostDir:
    """One host's directory: state, disk and console log."""

    path: Path

    @property
    def console_log(self) -> Path:
        return self.path / "console.log"

    def read_state(self) -> dict | None:
        try:
            return json.loads((self.path / "state.json").read_text())
        except (OSError, ValueError):
            return None

    def write_state(self, state: dict) -> None:
        """Atomically: a reader (another process tearing the host down) never sees half."""
        path = self.path / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, path)

    def console_tail(self) -> str:
        """The end of PID 1's console, for an error message."""
        try:
            return self.console_log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def prepare(
        self,
        state: dict,
        lower: Path,
        public_key: str,
        use_overlay: bool,
        log: Callable[[str], None],
    ) -> None:
        """The host's disk: an overlay over the cache (a copy where overlay fails), its
        /etc files, SSH key and masked units, its job filesystem."""
        name = state["name"]
        hdir = self.path
        root = Path(state["root"])
        address = state["address"]
        for sub in ("root", "upper", "work"):
            (hdir / sub).mkdir(exist_ok=True)
        if port_open(address, 22):
            raise SandboxError(f"something already listens on {address}:22")

        # Copy-on-write root: the cache stays untouched, the host starts bare.
        overlay = None
        if use_overlay:
            overlay = run_command(
                [
                    "mount",
                    "-t",
                    "overlay",
                    "overlay",
                    "-o",
                    f"lowerdir={lower},upperdir={hdir / 'upper'},workdir={hdir / 'work'}",
                    root,
                ],
                check=False,
            )
        if overlay is not None and overlay.returncode == 0:
            state["mode"] = "overlay"
        else:
            if overlay is not None:
                log(f"{name}: overlay mount failed ({overlay.stderr.strip()}), copying")
            run_command(["cp", "-a", f"{lower}/.", root])
            # pivot_root needs the new root to be a mount point
            run_command(["mount", "--bind", root, root])
            state["mode"] = "copy"
        state["mounts"].append(str(root))
        self.write_state(state)
        log(f"{name}: root ready ({state['mode']}, {state['suite']}, init {state['init']})")

        if state["init"] == INIT_NONE:
            # A systemd host mounts a private /dev of its own at each boot.
            run_command(["mount", "--bind", "/dev", root / "dev"])
            state["mounts"].append(str(root / "dev"))
            run_command(["mount", "--bind", "/dev/pts", root / "dev/pts"])
            state["mounts"].append(str(root / "dev/pts"))
        if state["jobdir_size"]:
            jd = root / state["jobdir"].lstrip("/")
            jd.mkdir(parents=True, exist_ok=True)
            run_command(
                [
                    "mount",
                    "-t",
                    "tmpfs",
                    "-o",
                    f"size={state['jobdir_size']},mode=0755",
                    "tmpfs",
                    jd,
                ]
            )
            state["mounts"].append(str(jd))
        self.write_state(state)

        (root / "etc/hostname").write_text(name + "\n")
        (root / "etc/hosts").write_text(
            f"127.0.0.1\tlocalhost\n{address}\t{name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        copy_resolv(root / "etc/resolv.conf")
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        auth = ssh_dir / "authorized_keys"
        auth.write_text(public_key)
        auth.chmod(0o600)
        if state["init"] == INIT_SYSTEMD:
            # sshd of each host on its own address: two on 127.0.0.1:22 fail.
            conf = root / "etc/ssh/sshd_config.d/leam-sandbox.conf"
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(f"ListenAddress {address}\n")
            units = root / "etc/systemd/system"
            units.mkdir(parents=True, exist_ok=True)
            for unit in SYSTEMD_MASKED:
                link = units / unit
                if not link.is_symlink():
                    link.unlink(missing_ok=True)
                    link.symlink_to("/dev/null")
        else:
            (root / "run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)

    def add_files(self, state: dict, files: Mapping[str, tuple[str | bytes | Path, int]]) -> None:
        """Absolute path -> (content, mode) into the host's disk; a Path is copied."""
        for path, (content, mode) in files.items():
            target = Path(state["root"]) / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                run_command(["cp", "-a", content, target])
            elif isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
            target.chmod(mode)

"""The hosts: boot (systemd or sshd as PID 1 in namespaces of their own), reach
over SSH, reboot, power-cut and tear down; the inventory Ansible reads."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from testing.sandbox.rootfs import RootfsSpec, copy_resolv, remove_tree, ensure_rootfs
from testing.sandbox.settings import (
    BOOT_TIMEOUT,
    CGROUP_ROOT,
    CHROOT_ENV,
    DEFAULT_CACHE_DIR,
    DEFAULT_JOBDIR,
    DEFAULT_STATE_DIR,
    FIRST_OCTET,
    INIT_NONE,
    INIT_SYSTEMD,
    INITS,
    NAME_RE,
    SSH_OPTIONS,
    SUITE,
    SYSTEMD_ARGS,
    SYSTEMD_MASKED,
)
from testing.sandbox.system import (
    SandboxError,
    cgroup_hierarchies,
    children,
    default_log,
    flock,
    make_cgroup,
    proc_start_time,
    remove_cgroup,
    require_root,
    run_command,
    same_process,
    wait_cgroup_empty,
    wait_gone,
    unmount_all_under,
)

# --------------------------------------------------------------------------
# hosts
# --------------------------------------------------------------------------


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

    def ansible_vars(self) -> dict[str, str]:
        """Connection variables Ansible needs for this host."""
        return {
            "ansible_host": self.address,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.key_file),
            "ansible_ssh_common_args": SSH_OPTIONS,
            "ansible_python_interpreter": "/usr/bin/python3",
        }


class Sandbox:
    """A set of sandbox hosts sharing a state directory and an SSH key.

    Everything about a host is in ``state_dir/hosts/<name>/`` (its overlay
    layers, mount point, console log and ``state.json``), so a later process
    — ``python -m testing.sandbox down`` after ``up`` — can tear it down.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        log: Callable[[str], None] | None = None,
        overlay: bool | None = None,
        init: str = INIT_SYSTEMD,
    ) -> None:
        """``overlay=False`` (or env LEAM_SANDBOX_NO_OVERLAY=1) copies the root instead.

        ``init`` is the default of ``up``: "systemd" (systemd boots as PID 1,
        like a real server) or "none" (sshd is PID 1, like a container).
        """
        if overlay is None:
            overlay = os.environ.get("LEAM_SANDBOX_NO_OVERLAY", "") in ("", "0")
        if init not in INITS:
            raise SandboxError(f"init {init!r} not supported: one of {', '.join(INITS)}")
        self.overlay = overlay
        self.init = init
        self.state_dir = Path(state_dir or DEFAULT_STATE_DIR).absolute()
        self.cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR).absolute()
        self.log = log or default_log
        # Sandboxes of other state directories may run hosts of the same
        # names on this machine: cgroups and address picks are keyed by this.
        self.tag = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:8]
        self._procs: dict[str, subprocess.Popen[bytes]] = {}  # unshare children we started
        self._lock = threading.Lock()

    # -- paths and keys ----------------------------------------------------

    @property
    def key_file(self) -> Path:
        """Private key (no passphrase) that every host of this sandbox trusts."""
        return self.state_dir / "ssh" / "id_ed25519"

    def host_dir(self, name: str) -> Path:
        return self.state_dir / "hosts" / name

    def cgroup_dir(self, name: str) -> Path:
        """The systemd host's own cgroup, unique to this state directory and host."""
        return CGROUP_ROOT / f"leam-sandbox-{self.tag}-{name}"

    def ensure_key(self) -> Path:
        """Make the sandbox's SSH key pair once."""
        key = self.key_file
        with flock(self.state_dir / ".lock"):
            if not key.exists():
                key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                run_command(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "leam-sandbox", "-f", key]
                )
        return key

    def ensure_rootfs(
        self, suite: str = SUITE, init: str | None = None, include: Sequence[str] = ()
    ) -> Path:
        """Return the cached root filesystem of that variant, building it if missing."""
        spec = RootfsSpec(suite, init or self.init, tuple(include))
        return ensure_rootfs(self.cache_dir, self.log, spec)

    # -- state -------------------------------------------------------------

    def _read_state(self, name: str) -> dict | None:
        try:
            return json.loads((self.host_dir(name) / "state.json").read_text())
        except (OSError, ValueError):
            return None

    def _write_state(self, name: str, state: dict) -> None:
        path = self.host_dir(name) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, path)

    def _host_from_state(self, state: dict) -> Host:
        return Host(
            name=state["name"],
            address=state["address"],
            root=Path(state["root"]),
            key_file=self.key_file,
            index=state["index"],
            state=state,
        )

    def hosts(self) -> list[Host]:
        """Every host this state directory knows, running or not, by name."""
        found = []
        base = self.state_dir / "hosts"
        if base.is_dir():
            for entry in sorted(base.iterdir()):
                state = self._read_state(entry.name)
                if state:
                    found.append(self._host_from_state(state))
        return found

    def host(self, name: str) -> Host:
        state = self._read_state(name)
        if not state:
            raise SandboxError(f"no sandbox host named {name!r} in {self.state_dir}")
        return self._host_from_state(state)

    def _pick_index(self, taken: set[int]) -> int:
        """A free last octet: not used here and with nothing on port 22.

        The search starts at an offset of this state directory's own, so
        sandboxes of other state directories (a test run beside a demo, or
        runs side by side on one machine) do not race for the same address
        while their hosts boot.
        """
        used = taken | {h.index for h in self.hosts()}
        span = 255 - FIRST_OCTET
        offset = int(self.tag, 16) % span
        for i in range(span):
            n = FIRST_OCTET + (offset + i) % span
            if n not in used and not port_open(f"127.0.0.{n}", 22):
                return n
        raise SandboxError("no free 127.0.0.N address left")

    # -- up ------------------------------------------------------------------

    def up(
        self,
        name: str,
        index: int | None = None,
        jobdir_size: str | None = None,
        *,
        jobdir: str = DEFAULT_JOBDIR,
        timeout: float | None = None,
        init: str | None = None,
        suite: str = SUITE,
        include: Sequence[str] = (),
        files: Mapping[str, tuple[str | bytes | Path, int]] | None = None,
    ) -> Host:
        """Make host ``name`` at 127.0.0.``index``, boot it and wait until it serves.

        ``index`` is the last octet (>= 10); None picks a free one.
        ``jobdir_size`` (e.g. "40M") mounts a tmpfs of that size at ``jobdir``
        inside the host, so a free-space check can be made to fail there.
        ``init``: "systemd" (default of the sandbox) or "none"; ``suite``:
        bookworm or trixie; ``include``: more packages in the root filesystem
        (a cached variant of its own). ``files``: absolute path -> (content,
        mode) written into the host's disk before its first boot (a cloud-init
        seed, say); a Path as content is copied (a folder with what is in it).
        A systemd host is ready when SSH works and ``systemctl
        is-system-running`` says running or degraded.
        On failure the host is torn down again before the error is raised.
        """
        require_root()
        if not NAME_RE.match(name):
            raise SandboxError(f"bad host name {name!r}: use a-z, 0-9 and '-'")
        spec = RootfsSpec(suite, init or self.init, tuple(include))
        if spec.init == INIT_SYSTEMD and not (CGROUP_ROOT / "cgroup.procs").exists():
            raise SandboxError(
                f"systemd hosts need the cgroup v1 name=systemd hierarchy at "
                f"{CGROUP_ROOT}; use init='none' here"
            )
        lower = ensure_rootfs(self.cache_dir, self.log, spec)
        self.ensure_key()
        with flock(self.state_dir / ".lock"):
            if self._read_state(name):
                raise SandboxError(f"host {name!r} already exists; run down first")
            if index is None:
                index = self._pick_index(set())
            elif not FIRST_OCTET <= index <= 254:
                raise SandboxError(f"index {index} out of range {FIRST_OCTET}..254")
            elif any(h.index == index for h in self.hosts()):
                raise SandboxError(f"127.0.0.{index} is already used by another host")
            hdir = self.host_dir(name)
            if hdir.exists():  # leftovers of a host that never wrote its state
                remove_tree(hdir)
            hdir.mkdir(parents=True)
            state: dict = {
                "name": name,
                "index": index,
                "address": f"127.0.0.{index}",
                "root": str(hdir / "root"),
                "init": spec.init,
                "suite": spec.suite,
                "include": list(spec.include),
                "lower": str(lower),
                "cgroup": str(self.cgroup_dir(name)) if spec.init == INIT_SYSTEMD else None,
                "mounts": [],
                "jobdir": jobdir if jobdir_size else None,
                "jobdir_size": jobdir_size,
                "boots": 0,
            }
            self._write_state(name, state)
        try:
            self._prepare(name, state, lower)
            for path, (content, mode) in (files or {}).items():
                target = Path(state["root"]) / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, Path):
                    run_command(["cp", "-a", content, target])
                elif isinstance(content, bytes):
                    target.write_bytes(content)
                else:
                    target.write_text(content)
                target.chmod(mode)
            if spec.init == INIT_SYSTEMD:
                return self._boot_systemd(name, state, timeout or BOOT_TIMEOUT)
            return self._start_sshd(name, state, timeout or 30)
        except BaseException:
            self.log(f"{name}: start failed, tearing down")
            with contextlib.suppress(Exception):
                self.down(name)
            raise

    def _prepare(self, name: str, state: dict, lower: Path) -> None:
        """The host's disk: an overlay over the cache, its files, its job filesystem."""
        hdir = self.host_dir(name)
        root = Path(state["root"])
        address = state["address"]
        for sub in ("root", "upper", "work"):
            (hdir / sub).mkdir(exist_ok=True)
        if port_open(address, 22):
            raise SandboxError(f"something already listens on {address}:22")

        # Copy-on-write root: the cache stays untouched, the host starts bare.
        overlay = None
        if self.overlay:
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
                self.log(f"{name}: overlay mount failed ({overlay.stderr.strip()}), copying")
            run_command(["cp", "-a", f"{lower}/.", root])
            # pivot_root needs the new root to be a mount point
            run_command(["mount", "--bind", root, root])
            state["mode"] = "copy"
        state["mounts"].append(str(root))
        self._write_state(name, state)
        self.log(f"{name}: root ready ({state['mode']}, {state['suite']}, init {state['init']})")

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
        self._write_state(name, state)

        (root / "etc/hostname").write_text(name + "\n")
        (root / "etc/hosts").write_text(
            f"127.0.0.1\tlocalhost\n{address}\t{name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        copy_resolv(root / "etc/resolv.conf")
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        auth = ssh_dir / "authorized_keys"
        auth.write_text(self.key_file.with_suffix(".pub").read_text())
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

    def _spawn(self, name: str, state: dict, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start the host's unshare (its console to console.log) and record its PID 1."""
        hdir = self.host_dir(name)
        log_file = open(hdir / "console.log", "ab")  # noqa: SIM115 - handed to the child
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
        self._write_state(name, state)
        deadline = time.monotonic() + 30
        pid1 = None
        while pid1 is None:
            kids = children(proc.pid)
            if kids:
                pid1 = kids[0]
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise SandboxError(f"{name}: unshare exited early:\n{self._log_tail(name)}")
            else:
                time.sleep(0.005)
        state["pid1"] = pid1
        state["pid1_start"] = proc_start_time(pid1)
        state["boots"] = state.get("boots", 0) + 1
        self._write_state(name, state)
        return proc

    def _start_sshd(self, name: str, state: dict, timeout: float) -> Host:
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
        proc = self._spawn(
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
        host = self._host_from_state(state)
        self._wait_ssh(host, proc, deadline)
        self.log(f"{name}: ssh root@{host.address} works")
        state["started"] = time.time()
        self._write_state(name, state)
        return host

    def _boot_systemd(self, name: str, state: dict, timeout: float) -> Host:
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
        self._write_state(name, state)
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
        proc = self._spawn(
            name, state, ["sh", "-c", outer, "sh", state["root"], inner, *state["cgroups"]]
        )
        self.log(f"{name}: booting, systemd is pid {state['pid1']} (boot {state['boots']})")
        host = self._host_from_state(state)
        self._wait_ssh(host, proc, deadline)
        self._wait_system_running(host, proc, deadline)
        if host.read_boot_id() != host.boot_id or host.boot_id == str(old_boot):
            raise SandboxError(f"{name}: SSH reached another boot than the one just started")
        state["started"] = time.time()
        self._write_state(name, state)
        self.log(f"{name}: booted, ssh root@{host.address} works")
        return host

    def _wait_system_running(
        self, host: Host, proc: subprocess.Popen[bytes], deadline: float
    ) -> str:
        """Poll ``systemctl is-system-running`` until running or degraded."""
        while True:
            if proc.poll() is not None or not host.alive:
                raise SandboxError(f"{host.name}: systemd exited:\n{self._log_tail(host.name)}")
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

    def _log_tail(self, name: str) -> str:
        try:
            return (self.host_dir(name) / "console.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _wait_ssh(self, host: Host, proc: subprocess.Popen[bytes], deadline: float) -> None:
        """Poll until the port accepts, then until a real SSH login succeeds."""
        while not port_open(host.address, 22):
            if proc.poll() is not None or not host.alive:
                raise SandboxError(f"{host.name}: PID 1 died:\n{self._log_tail(host.name)}")
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
                    f"{self._log_tail(host.name)}"
                )
            time.sleep(0.1)

    def up_many(
        self,
        names: Sequence[str],
        jobdir_size: Mapping[str, str] | None = None,
        indexes: Mapping[str, int] | None = None,
        *,
        suites: Mapping[str, str] | None = None,
        init: str | None = None,
        include: Sequence[str] = (),
    ) -> list[Host]:
        """Start several hosts concurrently; returns them in the order given.

        ``suites`` maps host names to a suite other than bookworm.
        Addresses are assigned up front so the threads never race for one.
        If any host fails, the error is raised after the others have finished
        starting; those stay up (the caller decides, see ``hosts_up``).
        """
        suites = dict(suites or {})
        # Each root filesystem variant once, before the threads need it.
        for suite in sorted({suites.get(n, SUITE) for n in names}):
            self.ensure_rootfs(suite, init, include)
        self.ensure_key()
        wanted = dict(indexes or {})
        taken = set(wanted.values())
        for name in names:
            if name not in wanted:
                wanted[name] = self._pick_index(taken)
                taken.add(wanted[name])
        sizes = dict(jobdir_size or {})
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(names)))) as pool:
            futures = [
                pool.submit(
                    self.up,
                    name,
                    wanted[name],
                    sizes.get(name),
                    init=init,
                    suite=suites.get(name, SUITE),
                    include=include,
                )
                for name in names
            ]
            errors = [f.exception() for f in futures]
        for err in errors:
            if err is not None:
                raise err
        return [f.result() for f in futures]

    @contextlib.contextmanager
    def hosts_up(
        self,
        names: Sequence[str],
        jobdir_size: Mapping[str, str] | None = None,
        indexes: Mapping[str, int] | None = None,
        **options: object,
    ) -> Iterator[list[Host]]:
        """Start ``names`` for the ``with`` block and always tear them down after.

        ``options`` as for ``up_many`` (suites, init, include).
        """
        try:
            yield self.up_many(names, jobdir_size, indexes, **options)  # type: ignore[arg-type]
        finally:
            for name in names:
                try:
                    self.down(name)
                except Exception as exc:  # keep tearing down the others
                    self.log(f"{name}: teardown failed: {exc}")

    # -- boots ---------------------------------------------------------------

    def _systemd_host(self, host: Host | str) -> tuple[str, dict]:
        name = host if isinstance(host, str) else host.name
        state = self._read_state(name)
        if not state:
            raise SandboxError(f"no sandbox host named {name!r} in {self.state_dir}")
        if state.get("init") != INIT_SYSTEMD:
            raise SandboxError(f"{name}: boots, reboots and power cuts need a systemd host")
        return name, state

    def _follow(self, host: Host | str, state: dict) -> Host:
        """Update a caller's Host in place (it follows its host across boots)."""
        if isinstance(host, Host):
            host.state.clear()
            host.state.update(state)
            return host
        return self._host_from_state(state)

    def wait_down(self, host: Host | str, timeout: float = 60) -> str:
        """Wait until the host's PID 1 has ended; returns why, as far as is known.

        "reboot" or "poweroff" when its systemd asked the kernel for that
        (the namespace's init then exits on SIGHUP or SIGINT), "killed" after
        SIGKILL, "gone" when this process did not start it.
        """
        name = host if isinstance(host, str) else host.name
        state = self._read_state(name) or {}
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
        name, state = self._systemd_host(host)
        if same_process(state.get("pid1"), state.get("pid1_start")):
            raise SandboxError(f"{name}: already running")
        self.wait_down(name, timeout=10)
        self._boot_systemd(name, state, timeout)
        return self._follow(host, state)

    def reboot(self, host: Host | str, timeout: float = BOOT_TIMEOUT) -> Host:
        """``systemctl reboot`` inside, wait until the namespace has ended, boot again.

        Returns the host in its new boot (a Host passed in is updated): its
        ``boot_id`` differs from before, and the host itself reports the new one.
        """
        name, state = self._systemd_host(host)
        before = state.get("pid1_start")
        self.log(f"{name}: systemctl reboot")
        # The SSH session may be cut as the host goes down: its result says nothing.
        with contextlib.suppress(subprocess.TimeoutExpired):
            run_command(
                self._host_from_state(state).ssh_command("systemctl reboot"),
                check=False,
                timeout=60,
            )
        try:
            reason = self.wait_down(name, timeout)
        except SandboxError as exc:
            report = self._shutdown_report(state)
            raise SandboxError(f"{exc}; what it waits for:\n{report}") from exc
        if reason not in ("reboot", "gone"):
            raise SandboxError(f"{name}: asked to reboot, but its PID 1 {reason}")
        self.log(f"{name}: went down ({reason}), booting the same disk")
        self._boot_systemd(name, state, timeout)
        if state["pid1_start"] == before:
            raise SandboxError(f"{name}: boot id unchanged after the reboot")
        return self._follow(host, state)

    def _shutdown_report(self, state: dict) -> str:
        """systemd's pending jobs and the processes left, read from outside (nsenter)."""
        host = self._host_from_state(state)
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
        name, state = self._systemd_host(host)
        pid1, start = state.get("pid1"), state.get("pid1_start")
        if not same_process(pid1, start):
            raise SandboxError(f"{name}: not running")
        self.log(f"{name}: power cut (SIGKILL to pid {pid1})")
        os.kill(pid1, signal.SIGKILL)
        self.wait_down(name, timeout)
        return self._follow(host, state)

    # -- down ----------------------------------------------------------------

    def down(self, name: str) -> bool:
        """Stop host ``name`` and remove everything made for it.

        Idempotent and safe on a host that never fully started: every step
        checks what is actually there (pids by start time, mounts from
        /proc/self/mountinfo, cgroups). Returns False if there was nothing to do.
        """
        hdir = self.host_dir(name)
        if not hdir.exists():
            return False
        state = self._read_state(name) or {}
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
        cgroups = [Path(c) for c in state.get("cgroups", [])]
        for cgroup in cgroups:
            wait_cgroup_empty(cgroup, 10)
        root = Path(state.get("root", hdir / "root"))
        unmounted = unmount_all_under(root)
        for cgroup in cgroups:
            remove_cgroup(cgroup, keep_top=False)
        remove_tree(hdir)
        self.log(f"{name}: down ({len(unmounted)} mounts released)")
        return True

    def down_all(self) -> list[str]:
        """Tear down every host in the state directory; returns their names."""
        names = []
        base = self.state_dir / "hosts"
        if base.is_dir():
            names = sorted(p.name for p in base.iterdir() if p.is_dir())
        for name in names:
            self.down(name)
        return names

    # -- inventory -------------------------------------------------------------

    def write_inventory(
        self,
        path: str | os.PathLike[str],
        groups: Mapping[str, Sequence[str]] | None = None,
        host_vars: Mapping[str, Mapping[str, object]] | None = None,
        group_vars: Mapping[str, Mapping[str, object]] | None = None,
    ) -> Path:
        """Write a YAML inventory of this sandbox's hosts for Ansible.

        By default every host goes into ``leam_jobservers``. ``host_vars``
        are merged over the connection variables of each host.
        """
        hosts = {h.name: h for h in self.hosts()}
        if groups is None:
            groups = {"leam_jobservers": sorted(hosts)}
        all_hosts: dict[str, dict[str, object]] = {}
        for name, host in hosts.items():
            all_hosts[name] = {**host.ansible_vars(), **dict((host_vars or {}).get(name, {}))}
        children: dict[str, dict[str, object]] = {}
        for group, members in groups.items():
            unknown = [m for m in members if m not in hosts]
            if unknown:
                raise SandboxError(f"group {group}: unknown hosts {unknown}")
            entry: dict[str, object] = {"hosts": {m: None for m in members}}
            if group_vars and group in group_vars:
                entry["vars"] = dict(group_vars[group])
            children[group] = entry
        inventory = {"all": {"hosts": all_hosts, "children": children}}
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(_to_yaml(inventory))
        return out


def _to_yaml(data: object) -> str:
    try:
        import yaml
    except ImportError:  # JSON is valid YAML, and Ansible's YAML plugin reads it
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=False, width=1000)


def port_open(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        try:
            s.connect((address, port))
        except OSError:
            return False
        return True

"""Sandbox test hosts: real Debian machines-in-a-directory reachable over SSH.

The development and CI machines have no Docker and no systemd as PID 1, so the
provisioning roles are tested against "hosts" made of plain kernel features:

* a Debian bookworm root filesystem built once with ``debootstrap`` and kept in
  a cache outside the checkout (``/var/cache/leam-sandbox`` by default);
* a copy-on-write root per host (overlayfs over the cache, ``cp -a`` if overlay
  cannot be mounted), so a host starts in well under a second and always bare;
* its own UTS, PID and mount namespace (``unshare``), with ``sshd`` as PID 1
  listening on its own loopback address ``127.0.0.N`` (N >= 10).

Ansible reaches such a host like any server, with a key made per sandbox.
Killing the namespace's PID 1 ends every process of the host; teardown then
unmounts what was mounted for it and removes its writable layer.

Command line (run from the repository root, as root)::

    python -m tests.sandbox build
    python -m tests.sandbox up web1 web2 --jobdir-size web2=40M
    python -m tests.sandbox status
    python -m tests.sandbox inventory /tmp/inventory.yml
    python -m tests.sandbox ssh web1 -- ps -e
    python -m tests.sandbox down --all

Python::

    sb = Sandbox("/tmp/state")
    with sb.hosts_up(["a", "b"], jobdir_size={"b": "40M"}) as (a, b):
        sb.write_inventory("/tmp/state/inventory.yml")
        print(a.ssh("hostname").stdout)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

SUITE = "bookworm"
# Bump when the recipe below changes so old caches are not reused.
ROOTFS_VERSION = "v1"
INCLUDE_PACKAGES = (
    "python3",
    "openssh-server",
    "sudo",
    "ca-certificates",
    "python3-venv",
    "procps",
    "iproute2",
)
DEFAULT_CACHE_DIR = Path(os.environ.get("LEAM_SANDBOX_CACHE", "/var/cache/leam-sandbox"))
DEFAULT_STATE_DIR = Path(os.environ.get("LEAM_SANDBOX_STATE", "/run/leam-sandbox"))
DEFAULT_JOBDIR = "/mnt/jobdir"
FIRST_OCTET = 10  # 127.0.0.1-9 are left to the machine itself
SSH_OPTIONS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
# A minimal, predictable environment for everything run inside a host root.
CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "HOME": "/root",
}
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

_T0 = time.monotonic()


class SandboxError(RuntimeError):
    """A sandbox step failed; the message says which and why."""


def _default_log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.2f}s] {message}", file=sys.stderr, flush=True)


def _run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float | None = None,
    input: str | None = None,
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing output so a failure can report it (as `what`)."""
    proc = subprocess.run(
        [str(c) for c in cmd],
        env=dict(env) if env is not None else None,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise SandboxError(
            f"{what or shlex.join(str(c) for c in cmd)} exited {proc.returncode}:\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    return proc


# --------------------------------------------------------------------------
# apt mirror, read from the machine's own configuration
# --------------------------------------------------------------------------


def apt_mirror(suite: str = SUITE) -> str:
    """Return the Debian mirror this machine's apt uses for ``suite``.

    Read at run time so no registry host name is ever written into the project.
    """
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.is_file():
        fallback = None
        for stanza in re.split(r"\n\s*\n", deb822.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ", "\t")):
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() or "uris" not in fields:
                continue
            uri = fields["uris"].split()[0]
            if suite in fields.get("suites", "").split():
                return uri
            if fallback is None and "security" not in uri:
                fallback = uri
        if fallback:
            return fallback
    sources = Path("/etc/apt/sources.list")
    if sources.is_file():
        for line in sources.read_text().splitlines():
            parts = line.split("#", 1)[0].split()
            # deb [options] URI suite components...
            parts = [p for p in parts if not (p.startswith("[") or p.endswith("]"))]
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == suite:
                return parts[1]
    raise SandboxError("no Debian mirror found in /etc/apt/sources.list(.d)")


# --------------------------------------------------------------------------
# mounts and processes
# --------------------------------------------------------------------------


def _unescape_mount(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def mounts_under(path: str | os.PathLike[str]) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, in mount order."""
    base = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = _unescape_mount(line.split()[4])
            if target == base or target.startswith(base.rstrip("/") + "/"):
                found.append(target)
    return found


def unmount_all_under(path: str | os.PathLike[str]) -> list[str]:
    """Unmount everything at or below ``path``, deepest and newest first.

    Falls back to a lazy unmount when a mount is busy, so teardown always
    finishes; returns what was unmounted.
    """
    done: list[str] = []
    for _ in range(100):  # stacked mounts need several passes
        targets = mounts_under(path)
        if not targets:
            return done
        # newest first, then deepest first: children go before parents
        order = sorted(enumerate(targets), key=lambda it: (it[1].count("/"), it[0]), reverse=True)
        for _, target in order:
            if _run(["umount", target], check=False).returncode != 0:
                _run(["umount", "-l", target], check=False)
            done.append(target)
    left = mounts_under(path)
    if left:
        raise SandboxError(f"could not unmount {left}")
    return done


def _proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` (clock ticks since boot), None if it is gone.

    Stored next to a pid so teardown never signals a recycled pid.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: split after the last ')'
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None  # a zombie holds nothing any more
    return int(fields[19])


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def _same_process(pid: int | None, start: int | None) -> bool:
    return pid is not None and start is not None and _proc_start_time(pid) == start


def _wait_gone(pid: int, start: int | None, timeout: float) -> bool:
    """Poll until ``pid`` (with that start time) has exited or become a zombie."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _same_process(pid, start):
            return True
        time.sleep(0.02)
    return not _same_process(pid, start)


@contextlib.contextmanager
def _flock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[int]:
    """Hold an exclusive lock on ``path`` so concurrent callers take turns.

    Yields the lock's file descriptor: a child that inherits it keeps the
    lock held until it exits, even if this process dies first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield f.fileno()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise SandboxError("sandbox hosts need root (mounts, namespaces, chroot)")


# --------------------------------------------------------------------------
# root filesystem cache
# --------------------------------------------------------------------------


def rootfs_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the complete cached root filesystem lives (it may not exist yet)."""
    return Path(cache_dir or DEFAULT_CACHE_DIR) / f"rootfs-{SUITE}-{ROOTFS_VERSION}"


def ensure_rootfs(
    cache_dir: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] = _default_log,
) -> Path:
    """Return the cached root filesystem, building it first if it is missing.

    The build goes into a temporary directory that is renamed into place only
    when complete, so an interrupted build never leaves a half cache; a lock
    file makes a concurrent caller wait for the first build instead of
    starting a second one.
    """
    final = rootfs_path(cache_dir)
    if final.is_dir():
        return final
    _require_root()
    cache = final.parent
    cache.mkdir(parents=True, exist_ok=True)

    def waiting() -> None:
        log("another process is building the root filesystem, waiting")

    with _flock(cache / ".build.lock", waiting) as lock_fd, _terminate_raises():
        if final.is_dir():  # built by someone else while we waited
            return final
        # Holding the lock (which build children inherit), any temporary
        # build left here is dead: an interrupted or killed earlier run.
        for stale in cache.glob(".tmp-rootfs-*"):
            log(f"removing interrupted build {stale}")
            _remove_tree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-rootfs-", dir=cache))
        try:
            _build_rootfs(tmp, log, lock_fd)
            os.rename(tmp, final)
        except BaseException:
            log(f"build failed or interrupted, removing {tmp}")
            _remove_tree(tmp)
            raise
    log(f"root filesystem ready at {final}")
    return final


@contextlib.contextmanager
def _terminate_raises() -> Iterator[None]:
    """Turn SIGTERM into an exception during a build so cleanup code runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_build_step(cmd: Sequence[str | os.PathLike[str]], lock_fd: int, log_path: Path) -> None:
    """Run one build command in its own process group, holding the build lock.

    On any interruption the whole group is killed, so no debootstrap is left
    writing into a directory that is being removed. The inherited lock
    descriptor keeps other builders waiting even if this process is killed.
    """
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=CHROOT_ENV,
            pass_fds=(lock_fd,),
            start_new_session=True,
        )
        try:
            rc = proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if rc != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise SandboxError(f"{shlex.join(str(c) for c in cmd)} exited {rc}:\n{tail}")


def _build_rootfs(target: Path, log: Callable[[str], None], lock_fd: int) -> None:
    mirror = apt_mirror()
    if not shutil.which("debootstrap"):
        raise SandboxError("debootstrap is not installed (apt-get install -y debootstrap)")
    build_log = target.parent / "build.log"
    build_log.write_text("")
    log(f"debootstrap {SUITE} (minbase) into {target}, about a minute (log: {build_log})")
    _run_build_step(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=" + ",".join(INCLUDE_PACKAGES),
            SUITE,
            target,
            mirror,
        ],
        lock_fd,
        build_log,
    )
    log("debootstrap done; trusting the machine's CA certificates, seeding apt lists")
    _copy_resolv(target / "etc/resolv.conf")
    extra_ca = Path("/usr/local/share/ca-certificates")
    dest_ca = target / "usr/local/share/ca-certificates"
    dest_ca.mkdir(parents=True, exist_ok=True)
    if extra_ca.is_dir():
        for cert in extra_ca.rglob("*.crt"):
            rel = cert.relative_to(extra_ca)
            (dest_ca / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(cert, dest_ca / rel)
    # The machine may relax apt's date checks for its mirror; hosts need the same.
    relax = _run(["apt-config", "dump"], check=False).stdout
    keep = [
        line
        for line in relax.splitlines()
        if line.startswith(("Acquire::Check-Valid-Until ", "Acquire::Check-Date "))
    ]
    if keep:
        (target / "etc/apt/apt.conf.d/90leam-sandbox").write_text("\n".join(keep) + "\n")
    # Run the chroot steps in a private mount namespace: the proc and dev
    # mounts they need vanish with it, even if this process is killed.
    script = (
        'set -e; mount --bind /dev "$1/dev"; mount -t proc proc "$1/proc"; '
        'chroot "$1" update-ca-certificates --fresh >/dev/null; '
        'chroot "$1" apt-get update -q; '
        'chroot "$1" apt-get clean; '
        'rm -f "$1"/etc/hostname'
    )
    _run_build_step(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", target],
        lock_fd,
        build_log,
    )
    (target / ".leam-sandbox-rootfs.json").write_text(
        json.dumps(
            {
                "suite": SUITE,
                "version": ROOTFS_VERSION,
                "packages": INCLUDE_PACKAGES,
                "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            indent=2,
        )
        + "\n"
    )


def _copy_resolv(dest: Path) -> None:
    """Give a root the machine's name servers (the hosts share its network)."""
    dest.unlink(missing_ok=True)  # may be a dangling symlink in the image
    shutil.copyfile("/etc/resolv.conf", dest)
    dest.chmod(0o644)


def _remove_tree(path: Path) -> None:
    """Remove a host or build directory, never crossing into a mount.

    Anything still mounted below is unmounted first; ``--one-file-system``
    guards against deleting through a bind mount (e.g. the machine's /dev).
    """
    if not path.exists():
        return
    unmount_all_under(path)
    _run(["rm", "-rf", "--one-file-system", path])


# --------------------------------------------------------------------------
# hosts
# --------------------------------------------------------------------------


@dataclass
class Host:
    """One running sandbox host, as seen from the controller."""

    name: str
    address: str
    root: Path  # the host's / on the controller (an overlay mount point)
    key_file: Path
    index: int
    pid1: int | None = None
    state: dict = field(default_factory=dict, repr=False)

    @property
    def alive(self) -> bool:
        """True while the host's PID 1 (its sshd) is running."""
        return _same_process(self.pid1, self.state.get("pid1_start"))

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
        return _run(self.ssh_command(command), check=check, timeout=timeout, input=input,
                    what=f"{self.name}: {command!r}")

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

    Everything about a running host is in ``state_dir/hosts/<name>/`` (its
    overlay layers, mount point, sshd log and ``state.json``), so a later
    process — ``python -m tests.sandbox down`` after ``up`` — can tear it down.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        log: Callable[[str], None] | None = None,
        overlay: bool | None = None,
    ) -> None:
        """``overlay=False`` (or env LEAM_SANDBOX_NO_OVERLAY=1) copies the root instead."""
        if overlay is None:
            overlay = os.environ.get("LEAM_SANDBOX_NO_OVERLAY", "") in ("", "0")
        self.overlay = overlay
        self.state_dir = Path(state_dir or DEFAULT_STATE_DIR).absolute()
        self.cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR).absolute()
        self.log = log or _default_log
        self._procs: dict[str, subprocess.Popen[bytes]] = {}  # unshare children we started
        self._lock = threading.Lock()

    # -- paths and keys ----------------------------------------------------

    @property
    def key_file(self) -> Path:
        """Private key (no passphrase) that every host of this sandbox trusts."""
        return self.state_dir / "ssh" / "id_ed25519"

    def host_dir(self, name: str) -> Path:
        return self.state_dir / "hosts" / name

    def ensure_key(self) -> Path:
        """Make the sandbox's SSH key pair once."""
        key = self.key_file
        with _flock(self.state_dir / ".lock"):
            if not key.exists():
                key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                _run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "leam-sandbox", "-f", key]
                )
        return key

    def ensure_rootfs(self) -> Path:
        """Return the cached root filesystem, building it if missing."""
        return ensure_rootfs(self.cache_dir, self.log)

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
            pid1=state.get("pid1"),
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
        """Lowest free last octet: not used here and with nothing on port 22.

        The port probe keeps two sandboxes (say a test run and a demo) from
        picking the same address.
        """
        used = taken | {h.index for h in self.hosts()}
        for n in range(FIRST_OCTET, 255):
            if n not in used and not _port_open(f"127.0.0.{n}", 22):
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
        timeout: float = 30,
    ) -> Host:
        """Start host ``name`` at 127.0.0.``index`` and wait until SSH works.

        ``index`` is the last octet (>= 10); None picks a free one.
        ``jobdir_size`` (e.g. "40M") mounts a tmpfs of that size at ``jobdir``
        inside the host, so a free-space check can be made to fail there.
        On failure the host is torn down again before the error is raised.
        """
        _require_root()
        if not NAME_RE.match(name):
            raise SandboxError(f"bad host name {name!r}: use a-z, 0-9 and '-'")
        lower = self.ensure_rootfs()
        self.ensure_key()
        with _flock(self.state_dir / ".lock"):
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
                _remove_tree(hdir)
            hdir.mkdir(parents=True)
            state: dict = {
                "name": name,
                "index": index,
                "address": f"127.0.0.{index}",
                "root": str(hdir / "root"),
                "mounts": [],
                "jobdir": jobdir if jobdir_size else None,
                "jobdir_size": jobdir_size,
            }
            self._write_state(name, state)
        try:
            return self._start(name, state, lower, timeout)
        except BaseException:
            self.log(f"{name}: start failed, tearing down")
            with contextlib.suppress(Exception):
                self.down(name)
            raise

    def _start(self, name: str, state: dict, lower: Path, timeout: float) -> Host:
        hdir = self.host_dir(name)
        root = Path(state["root"])
        address = state["address"]
        for sub in ("root", "upper", "work"):
            (hdir / sub).mkdir(exist_ok=True)
        if _port_open(address, 22):
            raise SandboxError(f"something already listens on {address}:22")

        # Copy-on-write root: the cache stays untouched, the host starts bare.
        overlay = None
        if self.overlay:
            overlay = _run(
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
            _run(["cp", "-a", f"{lower}/.", root])
            # pivot_root needs the new root to be a mount point
            _run(["mount", "--bind", root, root])
            state["mode"] = "copy"
        state["mounts"].append(str(root))
        self._write_state(name, state)
        self.log(f"{name}: root ready ({state['mode']})")

        _run(["mount", "--bind", "/dev", root / "dev"])
        state["mounts"].append(str(root / "dev"))
        _run(["mount", "--bind", "/dev/pts", root / "dev/pts"])
        state["mounts"].append(str(root / "dev/pts"))
        if state["jobdir_size"]:
            jd = root / state["jobdir"].lstrip("/")
            jd.mkdir(parents=True, exist_ok=True)
            _run(
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
        _copy_resolv(root / "etc/resolv.conf")
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        auth = ssh_dir / "authorized_keys"
        auth.write_text(self.key_file.with_suffix(".pub").read_text())
        auth.chmod(0o600)
        (root / "run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)

        # In the new namespaces: hostname, /proc, then pivot_root into the host
        # root and drop the old root, so the host sees only its own mounts and
        # does not pin other hosts' mounts; sshd becomes PID 1.
        script = (
            'set -e; hostname "$1"; mount -t proc proc "$2/proc"; cd "$2"; '
            "pivot_root . .; umount -l .; cd /; "
            'exec /usr/sbin/sshd -D -e -o ListenAddress="$3" -o PidFile=none'
        )
        log_file = open(hdir / "sshd.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
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
                    str(root),
                    address,
                ],
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
        state["unshare_start"] = _proc_start_time(proc.pid)
        self._write_state(name, state)

        deadline = time.monotonic() + timeout
        pid1 = None
        while pid1 is None:
            kids = _children(proc.pid)
            if kids:
                pid1 = kids[0]
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise SandboxError(f"{name}: unshare exited early:\n{self._log_tail(name)}")
            else:
                time.sleep(0.005)
        state["pid1"] = pid1
        state["pid1_start"] = _proc_start_time(pid1)
        self._write_state(name, state)
        self.log(f"{name}: started, PID 1 of its namespace is pid {pid1}")

        host = self._host_from_state(state)
        self._wait_ssh(host, proc, deadline)
        self.log(f"{name}: ssh root@{address} works")
        state["started"] = time.time()
        self._write_state(name, state)
        host.state = state
        return host

    def _log_tail(self, name: str) -> str:
        try:
            return (self.host_dir(name) / "sshd.log").read_text()[-2000:]
        except OSError:
            return ""

    def _wait_ssh(self, host: Host, proc: subprocess.Popen[bytes], deadline: float) -> None:
        """Poll until the port accepts, then until a real SSH login succeeds."""
        while not _port_open(host.address, 22):
            if proc.poll() is not None or not host.alive:
                raise SandboxError(f"{host.name}: sshd died:\n{self._log_tail(host.name)}")
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
    ) -> list[Host]:
        """Start several hosts concurrently; returns them in the order given.

        Addresses are assigned up front so the threads never race for one.
        If any host fails, the error is raised after the others have finished
        starting; those stay up (the caller decides, see ``hosts_up``).
        """
        self.ensure_rootfs()
        self.ensure_key()
        wanted = dict(indexes or {})
        taken = set(wanted.values())
        for name in names:
            if name not in wanted:
                wanted[name] = self._pick_index(taken)
                taken.add(wanted[name])
        sizes = dict(jobdir_size or {})
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(names)))) as pool:
            futures = [pool.submit(self.up, name, wanted[name], sizes.get(name)) for name in names]
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
    ) -> Iterator[list[Host]]:
        """Start ``names`` for the ``with`` block and always tear them down after."""
        try:
            yield self.up_many(names, jobdir_size, indexes)
        finally:
            for name in names:
                try:
                    self.down(name)
                except Exception as exc:  # keep tearing down the others
                    self.log(f"{name}: teardown failed: {exc}")

    # -- down ----------------------------------------------------------------

    def down(self, name: str) -> bool:
        """Stop host ``name`` and remove everything made for it.

        Idempotent and safe on a host that never fully started: every step
        checks what is actually there (pids by start time, mounts from
        /proc/self/mountinfo). Returns False if there was nothing to do.
        """
        hdir = self.host_dir(name)
        if not hdir.exists():
            return False
        state = self._read_state(name) or {}
        pid1, pid1_start = state.get("pid1"), state.get("pid1_start")
        upid, ustart = state.get("unshare_pid"), state.get("unshare_start")
        # SIGKILL to the namespace's PID 1 ends every process of the host.
        if _same_process(pid1, pid1_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid1, signal.SIGKILL)
        # unshare --kill-child also kills its child if unshare itself dies,
        # which covers a host whose PID 1 was never recorded.
        if pid1 is None and _same_process(upid, ustart):
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
            if pid is not None and not _wait_gone(pid, start, 10):
                raise SandboxError(f"{name}: pid {pid} did not exit")
        root = Path(state.get("root", hdir / "root"))
        unmounted = unmount_all_under(root)
        _remove_tree(hdir)
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


def _port_open(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        try:
            s.connect((address, port))
        except OSError:
            return False
        return True


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------


def _parse_pairs(items: Sequence[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{what} wants NAME=VALUE, got {item!r}")
        pairs[name] = value
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.sandbox",
        description="Sandbox test hosts (namespaces + sshd on 127.0.0.N) for LEAM roles.",
    )
    parser.add_argument(
        "--state-dir",
        default=str(DEFAULT_STATE_DIR),
        help="running hosts' state (env LEAM_SANDBOX_STATE)",
    )
    parser.add_argument(
        "--cache-dir",
        default=str(DEFAULT_CACHE_DIR),
        help="root filesystem cache (env LEAM_SANDBOX_CACHE)",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build the cached root filesystem if missing")
    p_up = sub.add_parser("up", help="start hosts and wait until SSH works")
    p_up.add_argument("names", nargs="+", metavar="NAME")
    p_up.add_argument(
        "--jobdir-size",
        action="append",
        default=[],
        metavar="NAME=SIZE",
        help=f"mount a tmpfs of SIZE at {DEFAULT_JOBDIR} in host NAME",
    )
    p_up.add_argument(
        "--index",
        action="append",
        default=[],
        metavar="NAME=N",
        help="put host NAME on 127.0.0.N (default: first free N >= 10)",
    )
    p_down = sub.add_parser("down", help="stop hosts and release their mounts")
    p_down.add_argument("names", nargs="*", metavar="NAME")
    p_down.add_argument("--all", action="store_true", help="every host in the state dir")
    sub.add_parser("status", help="list hosts")
    p_inv = sub.add_parser("inventory", help="write an Ansible YAML inventory")
    p_inv.add_argument("path")
    p_inv.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="GROUP=H1,H2",
        help="group membership (default: all hosts in leam_jobservers)",
    )
    p_ssh = sub.add_parser("ssh", help="run a command on a host over SSH")
    p_ssh.add_argument("name")
    p_ssh.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    sb = Sandbox(args.state_dir, args.cache_dir)
    try:
        if args.cmd == "build":
            sb.log(f"root filesystem: {sb.ensure_rootfs()}")
        elif args.cmd == "up":
            sizes = _parse_pairs(args.jobdir_size, "--jobdir-size")
            indexes = {k: int(v) for k, v in _parse_pairs(args.index, "--index").items()}
            for host in sb.up_many(args.names, sizes, indexes):
                sb.log(f"{host.name}: up at {host.address} (root {host.root})")
            sb.log(f"ssh key: {sb.key_file}")
        elif args.cmd == "down":
            if not args.names and not args.all:
                parser.error("down wants host names or --all")
            if args.all:
                sb.log(f"down: {', '.join(sb.down_all()) or 'nothing to do'}")
            for name in args.names:
                if not sb.down(name):
                    sb.log(f"{name}: not found")
        elif args.cmd == "status":
            for host in sb.hosts():
                state = "running" if host.alive else "stopped"
                extra = (
                    f" jobdir {host.state['jobdir_size']}" if host.state.get("jobdir_size") else ""
                )
                print(
                    f"{host.name:20} {host.address:15} {state:8} pid1={host.pid1}"
                    f" mode={host.state.get('mode')}{extra}"
                )
        elif args.cmd == "inventory":
            groups = None
            if args.group:
                groups = {
                    g: [h for h in v.split(",") if h]
                    for g, v in _parse_pairs(args.group, "--group").items()
                }
            sb.log(f"inventory written to {sb.write_inventory(args.path, groups)}")
        elif args.cmd == "ssh":
            cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
            host = sb.host(args.name)
            argv_ssh = host.ssh_command(" ".join(cmd) if cmd else None)  # like ssh(1)
            if not cmd:  # interactive login
                argv_ssh.insert(1, "-t")
            return subprocess.call(argv_ssh)
    except SandboxError as exc:
        sb.log(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        sb.log("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

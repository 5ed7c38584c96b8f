"""The root filesystem cache: one debootstrap per suite, init and package set,
built once under a lock and shared by every state dir; the apt mirror read from the
machine's own configuration."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from testing.sandbox.settings import (
    CHROOT_ENV,
    DEFAULT_CACHE_DIR,
    INCLUDE_PACKAGES,
    INIT_NONE,
    INIT_SYSTEMD,
    INITS,
    PACKAGE_RE,
    ROOTFS_VERSION,
    SUITE,
    SUITES,
    SYSTEMD_PACKAGES,
    SYSTEMD_ROOTFS_VERSION,
)
from testing.sandbox.system import (
    SandboxError,
    default_log,
    flock,
    require_root,
    run_command,
    unmount_all_under,
)

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
# root filesystem cache
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RootfsSpec:
    """Which cached root filesystem a host boots from.

    Each distinct spec is its own cache entry: ``init="systemd"`` adds
    systemd as init (``systemd-sysv``, ``dbus``), ``include`` adds packages
    (a separate variant per package set, so the plain roots stay bare).
    """

    suite: str = SUITE
    init: str = INIT_NONE
    include: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise SandboxError(f"suite {self.suite!r} not supported: one of {', '.join(SUITES)}")
        if self.init not in INITS:
            raise SandboxError(f"init {self.init!r} not supported: one of {', '.join(INITS)}")
        bad = [p for p in self.include if not PACKAGE_RE.match(p)]
        if bad:
            raise SandboxError(f"bad package names in include: {bad}")
        object.__setattr__(self, "include", tuple(sorted(set(self.include))))

    @property
    def packages(self) -> tuple[str, ...]:
        extra = SYSTEMD_PACKAGES if self.init == INIT_SYSTEMD else ()
        return tuple(dict.fromkeys((*INCLUDE_PACKAGES, *extra, *self.include)))

    @property
    def name(self) -> str:
        """Cache directory name; the original bookworm init-less root keeps its name."""
        parts = ["rootfs", self.suite]
        if self.init != INIT_NONE:
            parts.append(self.init)
        if self.include:
            digest = hashlib.sha256(",".join(self.include).encode()).hexdigest()[:10]
            parts.append(f"x{digest}")
        parts.append(ROOTFS_VERSION if self.init == INIT_NONE else SYSTEMD_ROOTFS_VERSION)
        return "-".join(parts)


def rootfs_path(
    cache_dir: str | os.PathLike[str] | None = None, spec: RootfsSpec | None = None
) -> Path:
    """Where the complete cached root filesystem lives (it may not exist yet)."""
    return Path(cache_dir or DEFAULT_CACHE_DIR) / (spec or RootfsSpec()).name


def ensure_rootfs(
    cache_dir: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] = default_log,
    spec: RootfsSpec | None = None,
) -> Path:
    """Return the cached root filesystem, building it first if it is missing.

    The build goes into a temporary directory that is renamed into place only
    when complete, so an interrupted build never leaves a half cache; a lock
    file per variant makes a concurrent caller wait for the first build
    instead of starting a second one.
    """
    spec = spec or RootfsSpec()
    final = rootfs_path(cache_dir, spec)
    if final.is_dir():
        return final
    require_root()
    cache = final.parent
    cache.mkdir(parents=True, exist_ok=True)
    default = spec == RootfsSpec()
    # The plain root keeps the lock and scratch names older checkouts use.
    lock = cache / (".build.lock" if default else f".build-{spec.name}.lock")
    scratch = ".tmp-rootfs-" if default else f".tmp-build-{spec.name}-"

    def waiting() -> None:
        log(f"another process is building {spec.name}, waiting")

    with flock(lock, waiting) as lock_fd, _terminate_raises():
        if final.is_dir():  # built by someone else while we waited
            return final
        # Holding the lock (which build children inherit), any temporary
        # build of this variant left here is dead: an interrupted earlier run.
        for stale in cache.glob(f"{scratch}*"):
            log(f"removing interrupted build {stale}")
            remove_tree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=scratch, dir=cache))
        try:
            _build_rootfs(tmp, log, lock_fd, spec)
            os.rename(tmp, final)
        except BaseException:
            log(f"build failed or interrupted, removing {tmp}")
            remove_tree(tmp)
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


def _debootstrap_script(suite: str) -> list[str]:
    """debootstrap's script argument for ``suite``.

    An older debootstrap may lack a newer suite's script; every Debian suite
    since buster uses the same one (``sid``), so it is named explicitly then.
    """
    scripts = Path("/usr/share/debootstrap/scripts")
    if (scripts / suite).exists() or not (scripts / "sid").exists():
        return []
    return [str(scripts / "sid")]


def _build_rootfs(target: Path, log: Callable[[str], None], lock_fd: int, spec: RootfsSpec) -> None:
    mirror = apt_mirror(spec.suite)
    if not shutil.which("debootstrap"):
        raise SandboxError("debootstrap is not installed (apt-get install -y debootstrap)")
    build_log = target.parent / f"build-{spec.name}.log"
    build_log.write_text("")
    log(
        f"debootstrap {spec.suite} (minbase, init {spec.init}) into {target}, "
        f"about a minute (log: {build_log})"
    )
    _run_build_step(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=" + ",".join(spec.packages),
            spec.suite,
            target,
            mirror,
            *_debootstrap_script(spec.suite),
        ],
        lock_fd,
        build_log,
    )
    log("debootstrap done; trusting the machine's CA certificates, seeding apt lists")
    copy_resolv(target / "etc/resolv.conf")
    extra_ca = Path("/usr/local/share/ca-certificates")
    dest_ca = target / "usr/local/share/ca-certificates"
    dest_ca.mkdir(parents=True, exist_ok=True)
    if extra_ca.is_dir():
        for cert in extra_ca.rglob("*.crt"):
            rel = cert.relative_to(extra_ca)
            (dest_ca / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(cert, dest_ca / rel)
    # The machine may relax apt's date checks for its mirror; hosts need the same.
    relax = run_command(["apt-config", "dump"], check=False).stdout
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
    if spec.init == INIT_SYSTEMD:
        # Each host makes its own machine id at its first boot.
        (target / "etc/machine-id").write_text("")
        (target / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    (target / ".leam-sandbox-rootfs.json").write_text(
        json.dumps(
            {
                "suite": spec.suite,
                "init": spec.init,
                "name": spec.name,
                "packages": spec.packages,
                "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            indent=2,
        )
        + "\n"
    )


def copy_resolv(dest: Path) -> None:
    """Give a root the machine's name servers (the hosts share its network)."""
    dest.unlink(missing_ok=True)  # may be a dangling symlink in the image
    shutil.copyfile("/etc/resolv.conf", dest)
    dest.chmod(0o644)


def remove_tree(path: Path) -> None:
    """Remove a host or build directory, never crossing into a mount.

    Anything still mounted below is unmounted first; ``--one-file-system``
    guards against deleting through a bind mount (e.g. the machine's /dev).
    """
    if not path.exists():
        return
    unmount_all_under(path)
    run_command(["rm", "-rf", "--one-file-system", path])

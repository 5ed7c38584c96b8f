"""The sandbox: a state directory of hosts sharing an SSH key, and what is done to them.

`Sandbox` is the one entry point (tests, the CLI, the demo, the benchmarks):
it makes hosts (`up`, `up_many`, `hosts_up`), boots, reboots and power-cuts
them, tears them down and writes their inventory. The steps live in their
own modules: `host` (a host as the controller sees it), `disk` (the host's
files), `power` (boot and power), `inventory` (what Ansible reads);
`system` holds what they need of the machine (commands, mounts, processes,
cgroups).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from testing.sandbox import inventory
from testing.sandbox.disk import HostDir
from testing.sandbox.host import Host
from testing.sandbox.power import Power
from testing.sandbox.rootfs import RootfsSpec, ensure_rootfs, remove_tree
from testing.sandbox.settings import (
    BOOT_TIMEOUT,
    CGROUP_ROOT,
    DEFAULT_CACHE_DIR,
    DEFAULT_JOBDIR,
    DEFAULT_STATE_DIR,
    FIRST_OCTET,
    INIT_SYSTEMD,
    INITS,
    NAME_RE,
    SUITE,
)
from testing.sandbox.system import (
    SandboxError,
    default_log,
    flock,
    port_open,
    remove_cgroup,
    require_root,
    run_command,
    unmount_all_under,
)

__all__ = ["Host", "Sandbox"]


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
        self.power = Power(self.state_dir / "hosts", self.key_file, self.log)

    # -- paths and keys ----------------------------------------------------

    @property
    def key_file(self) -> Path:
        """Private key (no passphrase) that every host of this sandbox trusts."""
        return self.state_dir / "ssh" / "id_ed25519"

    def host_dir(self, name: str) -> Path:
        return self.state_dir / "hosts" / name

    def dir(self, name: str) -> HostDir:
        """The host's files: state, disk, console log."""
        return HostDir(self.host_dir(name))

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

    def hosts(self) -> list[Host]:
        """Every host this state directory knows, running or not, by name."""
        found = []
        base = self.state_dir / "hosts"
        if base.is_dir():
            for entry in sorted(base.iterdir()):
                state = HostDir(entry).read_state()
                if state:
                    found.append(Host.from_state(state, self.key_file))
        return found

    def host(self, name: str) -> Host:
        state = self.dir(name).read_state()
        if not state:
            raise SandboxError(f"no sandbox host named {name!r} in {self.state_dir}")
        return Host.from_state(state, self.key_file)

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
            if self.dir(name).read_state():
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
            self.dir(name).write_state(state)
        try:
            disk = self.dir(name)
            public_key = self.key_file.with_suffix(".pub").read_text()
            disk.prepare(state, lower, public_key, self.overlay, self.log)
            disk.add_files(state, files or {})
            if spec.init == INIT_SYSTEMD:
                return self.power.boot_systemd(name, state, timeout or BOOT_TIMEOUT)
            return self.power.start_sshd(name, state, timeout or 30)
        except BaseException:
            self.log(f"{name}: start failed, tearing down")
            with contextlib.suppress(Exception):
                self.down(name)
            raise

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

    # -- boot and power (testing/sandbox/power.py) ------------------------------

    def wait_down(self, host: Host | str, timeout: float = 60) -> str:
        """Wait until the host's PID 1 has ended; "reboot", "poweroff", "killed" or "gone"."""
        return self.power.wait_down(host, timeout)

    def boot(self, host: Host | str, timeout: float = BOOT_TIMEOUT) -> Host:
        """Boot a systemd host's disk again (after a reboot, poweroff or power cut)."""
        return self.power.boot(host, timeout)

    def reboot(self, host: Host | str, timeout: float = BOOT_TIMEOUT) -> Host:
        """``systemctl reboot`` inside, wait until the namespace has ended, boot again;
        a Host passed in follows it into its new boot."""
        return self.power.reboot(host, timeout)

    def power_cut(self, host: Host | str, timeout: float = 30) -> Host:
        """SIGKILL to the host's systemd from outside; it stays down until ``boot``."""
        return self.power.power_cut(host, timeout)

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
        state = self.dir(name).read_state() or {}
        self.power.stop(name, state)
        cgroups = [Path(c) for c in state.get("cgroups", [])]
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

    # -- inventory (testing/sandbox/inventory.py) --------------------------------

    def write_inventory(
        self,
        path: str | os.PathLike[str],
        groups: Mapping[str, Sequence[str]] | None = None,
        host_vars: Mapping[str, Mapping[str, object]] | None = None,
        group_vars: Mapping[str, Mapping[str, object]] | None = None,
    ) -> Path:
        """A YAML inventory of this sandbox's hosts (every one in ``leam_jobservers`` by
        default; ``host_vars`` over each host's connection variables)."""
        return inventory.write_inventory(self.hosts(), path, groups, host_vars, group_vars)

"""Building the real portal: a Debian bullseye chroot with Python 2.7, Plone 4.3.20 and
leam.luc, cached outside the checkout and keyed by a hash of everything that shapes it.

Everything in the chroot runs with an empty environment (`env -i`): the host's `PIP_*`
variables and pip configuration name things pip 20 cannot use. The chroot's pip trusts
the host's CA bundle (named in its /etc/pip.conf), and the Debian mirror is the one this
machine's apt uses, read at run time. The wheelhouse is kept beside the builds, so a
rebuild (new leam.luc, new recipe) installs without PyPI.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
CHROOT_FILES = HERE / "chroot"
CONSTRAINTS = HERE / "constraints.txt"
# Bump when a build step changes in a way the other inputs do not show.
RECIPE_VERSION = "1"

SUITE = "bullseye"
DEB_PACKAGES = (
    "python2.7,python2.7-dev,build-essential,libxml2-dev,libxslt1-dev,"
    "libjpeg-dev,zlib1g-dev,ca-certificates"
)
# The last releases that run on Python 2.7.
BOOTSTRAP = ("pip==20.3.4", "setuptools==44.1.1", "wheel==0.37.1")
REQUIREMENTS = (
    "Plone",
    "plone.app.dexterity[relations]",
    "plone.app.relationfield",
    "Products.DataGridField",
    "plone.api",
    "plone.app.registry",
    "PasteScript",
)
LUC_REPO = "https://github.com/LEAMgroup/leam.luc"
LUC_COMMIT = "7a454dd30d4e"
# Shipped beside the project by CI and the tests (a `git archive` of LUC_COMMIT).
LUC_ARCHIVE = PROJECT.parent / "shared" / "real-portal" / "inputs" / "leam.luc-7a454dd30d4e.tar"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
SETTINGS = {
    "scenario_repo": "git clone https://example.invalid/{id}.git",
    "scenario_cmd": "python startup.py -c {url}/config",
}
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INSTANCE = "/srv/plone/instance"  # the template instance, inside the chroot
# The chroot files a build uses (leam_fixture.py goes to each started portal instead).
BUILD_FILES = ("zope.conf.in", "setup_site.py", "set_settings.py")


class Unavailable(RuntimeError):
    """The portal cannot be built on this machine (not root, no bullseye, no debootstrap)."""


def cache_dir() -> Path:
    return Path(os.environ.get("LEAM_REAL_PORTAL_CACHE", "/var/cache/leam-real-portal"))


@dataclass(frozen=True)
class Build:
    """A finished build: the chroot, the fresh databases and the fixture's passwords."""

    dir: Path

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def fresh(self) -> Path:
        """Data.fs of the site with both settings set (every pop can answer)."""
        return self.dir / "Data.fs.fresh"

    @property
    def unset(self) -> Path:
        """Data.fs of the site as Plone leaves it: the two settings unset (pops answer 500)."""
        return self.dir / "Data.fs.unset"

    @property
    def credentials(self) -> dict[str, str]:
        """user -> password (admin: the Zope root; poller: Manager; member: plain)."""
        return json.loads((self.dir / "credentials.json").read_text())

    @property
    def runs(self) -> Path:
        """Where started portals keep their instance homes (inside the chroot)."""
        return self.root / "srv" / "plone" / "run"


def chroot_run(root: Path, script: str, log: Path | None = None) -> None:
    """bash -c script in the chroot with a clean environment; output to log."""
    argv = ["chroot", str(root), "/usr/bin/env", "-i", "HOME=/root", "LANG=C.UTF-8"]
    argv += [f"PATH={CHROOT_PATH}", "/bin/bash", "-euc", script]
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(log, "ab")) if log else subprocess.DEVNULL
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        tail = log.read_text(errors="replace")[-3000:] if log else ""
        raise RuntimeError(f"in the chroot, {script!r} failed ({proc.returncode}):\n{tail}")


def chroot_uid(root: Path, user: str) -> tuple[int, int]:
    """uid and gid of a user of the chroot (its own /etc/passwd)."""
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise KeyError(f"no user {user} in {root}/etc/passwd")


def debian_mirror() -> str:
    """The first Debian archive URI of this machine's apt sources (not the security one)."""
    uris: list[str] = []
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in f.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and line[0] != "#"
            )
            suites = fields.get("Suites", "")
            if fields.get("Types", "").strip() == "deb" and "security" not in suites:
                uris += fields.get("URIs", "").split()
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["deb"] and "security" not in line:
                uris += [p for p in parts[1:] if "://" in p][:1]
    debian = [u for u in uris if "debian" in u] or uris
    if not debian:
        raise Unavailable("no Debian mirror in /etc/apt/sources.list*")
    return debian[0].rstrip("/")


def check_can_build() -> str:
    """The mirror to build from; Unavailable says why the portal cannot be built here."""
    if os.geteuid() != 0:
        raise Unavailable("the real portal's chroot needs root")
    if not shutil.which("debootstrap"):
        raise Unavailable("debootstrap is not installed")
    mirror = debian_mirror()
    try:
        with urllib.request.urlopen(f"{mirror}/dists/{SUITE}/Release", timeout=30) as r:
            r.read(64)
    except OSError as e:
        raise Unavailable(f"{SUITE} is not in the Debian mirror {mirror}: {e}") from e
    return mirror


@dataclass(frozen=True)
class LucSource:
    """Where leam.luc comes from and a digest of its content (part of the cache key)."""

    path: Path
    digest: str


def use_shipped_luc() -> None:
    """LEAM_LUC_SOURCE, where unset, names the leam.luc archive shipped beside the project
    (for the demo and the bench, as for the tests)."""
    if "LEAM_LUC_SOURCE" not in os.environ and LUC_ARCHIVE.exists():
        os.environ["LEAM_LUC_SOURCE"] = str(LUC_ARCHIVE)


def luc_source(log: Callable[[str], None] = print) -> LucSource:
    """LEAM_LUC_SOURCE (a directory or an archive; relative paths from the project root),
    else a clone of leam.luc at LUC_COMMIT kept in the cache."""
    given = os.environ.get("LEAM_LUC_SOURCE")
    if given:
        path = Path(given)
        path = path if path.is_absolute() else (PROJECT / path).resolve()
        if not path.exists():
            raise FileNotFoundError(f"LEAM_LUC_SOURCE: no such file or directory: {path}")
        return LucSource(path, _digest(path))
    clone = cache_dir() / "src" / f"leam.luc-{LUC_COMMIT}"
    if not (clone / "setup.py").exists():
        log(f"cloning {LUC_REPO} at {LUC_COMMIT}")
        shutil.rmtree(clone, ignore_errors=True)
        clone.parent.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(["git", "clone", "-q", LUC_REPO, str(clone)], check=True)
            subprocess.run(["git", "-C", str(clone), "checkout", "-q", LUC_COMMIT], check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            shutil.rmtree(clone, ignore_errors=True)
            raise Unavailable(
                f"leam.luc: cannot clone {LUC_REPO} ({e}); set LEAM_LUC_SOURCE to a "
                "directory or archive of it"
            ) from e
    return LucSource(clone, _digest(clone))


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
        return h.hexdigest()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and ".git" not in p.parts):
        h.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def cache_key(source: LucSource) -> str:
    """Hash of every input: constraints, leam.luc, the chroot files and this recipe."""
    h = hashlib.sha256()
    for part in (RECIPE_VERSION, SUITE, DEB_PACKAGES, *BOOTSTRAP, *REQUIREMENTS, source.digest):
        h.update(part.encode() + b"\0")
    for f in [CONSTRAINTS, *(CHROOT_FILES / name for name in BUILD_FILES)]:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    h.update(json.dumps(SETTINGS, sort_keys=True).encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    """One build at a time per cache, across processes (parallel test runs wait)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def mounts_under(path: Path) -> list[str]:
    """Mount points below path (an interrupted debootstrap can leave its /proc)."""
    prefix = str(path.resolve()) + "/"
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point.startswith(prefix):
            points.append(point)
    return sorted(points, reverse=True)


def remove_tree(path: Path) -> None:
    """rm -rf that first unmounts what is mounted inside (never deletes through a mount)."""
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", point], check=True)
    shutil.rmtree(path, ignore_errors=True)


def find(log: Callable[[str], None] = print) -> Build | None:
    """The finished build for today's inputs, if there is one."""
    d = cache_dir() / cache_key(luc_source(log))
    return Build(d) if (d / ".complete").exists() else None


def build(log: Callable[[str], None] = print) -> Build:
    """The finished build for today's inputs, building it first where needed."""
    if os.geteuid() != 0:
        raise Unavailable("the real portal's chroot needs root")
    source = luc_source(log)
    final = cache_dir() / cache_key(source)
    if (final / ".complete").exists():
        return Build(final)  # no mirror needed
    mirror = check_can_build()
    with build_lock():
        if (final / ".complete").exists():
            return Build(final)
        work = final.with_name(final.name + ".partial")
        remove_tree(work)
        remove_tree(final)
        work.mkdir(parents=True)
        t0 = time.monotonic()
        steps = _Steps(Build(work), mirror, source, log)
        for step in (steps.base, steps.plone, steps.instance, steps.site):
            t = time.monotonic()
            step()
            log(f"{step.__name__}: {time.monotonic() - t:.0f} s")
        (work / ".complete").write_text(f"{time.monotonic() - t0:.0f}\n")
        work.rename(final)
        log(f"built {final} in {time.monotonic() - t0:.0f} s")
        return Build(final)


class _Steps:
    """The build's steps, in order; each logs to a file in the build directory."""

    def __init__(
        self, b: Build, mirror: str, source: LucSource, log: Callable[[str], None]
    ) -> None:
        self.b, self.mirror, self.source, self.log = b, mirror, source, log
        h = hashlib.sha256(CONSTRAINTS.read_bytes() + " ".join(REQUIREMENTS).encode())
        self.wheelhouse = cache_dir() / "wheelhouse" / h.hexdigest()[:16]

    def run(self, script: str, name: str) -> None:
        chroot_run(self.b.root, script, self.b.dir / f"{name}.log")

    def base(self) -> None:
        """Debian and pip for Python 2.7, from a kept tarball when there is one: the
        debootstrap is the slowest step and changes with none of the portal's inputs."""
        h = hashlib.sha256(f"{RECIPE_VERSION} {SUITE} {DEB_PACKAGES} {BOOTSTRAP}".encode())
        tarball = cache_dir() / "base" / f"{SUITE}-{h.hexdigest()[:16]}.tar"
        if tarball.exists():
            self.b.root.mkdir()
            subprocess.run(["tar", "-C", str(self.b.root), "-xpf", str(tarball)], check=True)
        else:
            self.debootstrap()
            self.pip()
            tarball.parent.mkdir(exist_ok=True)
            partial = tarball.with_suffix(".partial")
            subprocess.run(["tar", "-C", str(self.b.root), "-cf", str(partial), "."], check=True)
            partial.rename(tarball)
        etc = self.b.root / "etc"
        shutil.copy("/etc/resolv.conf", etc / "resolv.conf")
        shutil.copy(HOST_CA, etc / "ssl" / "certs" / "host-ca.crt")
        (etc / "pip.conf").write_text(
            "[global]\ncert = /etc/ssl/certs/host-ca.crt\ndisable-pip-version-check = 1\n"
        )

    def debootstrap(self) -> None:
        self.log(f"debootstrap {SUITE} from {self.mirror}")
        argv = ["debootstrap", "--variant=minbase", f"--include={DEB_PACKAGES}"]
        argv += [SUITE, str(self.b.root), self.mirror]
        with open(self.b.dir / "debootstrap.log", "wb") as out:
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
        if proc.returncode:
            tail = (self.b.dir / "debootstrap.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n{tail}")

    def pip(self) -> None:
        """pip, setuptools and wheel for 2.7: downloaded by the host's pip, installed offline."""
        boot = cache_dir() / "bootstrap"
        if not all((boot / f".{p}").exists() for p in BOOTSTRAP):
            argv = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
            argv += ["--python-version", "2.7", "--only-binary=:all:", "-d", str(boot)]
            subprocess.run([*argv, *BOOTSTRAP], check=True)
            for p in BOOTSTRAP:
                (boot / f".{p}").touch()
        shutil.copytree(boot, self.b.root / "tmp" / "boot")
        pip_whl = next(p.name for p in boot.glob("pip-*.whl"))
        self.run(
            f"python2.7 /tmp/boot/{pip_whl}/pip install -q --no-index --find-links /tmp/boot "
            + " ".join(BOOTSTRAP)
            + " && rm -rf /tmp/boot",
            "pip",
        )

    def plone(self) -> None:
        """Every wheel built once into the kept wheelhouse, then an offline install."""
        srv = self.b.root / "srv" / "plone"
        srv.mkdir(parents=True)
        shutil.copy(CONSTRAINTS, srv / "constraints.txt")
        reqs = " ".join(f"'{r}'" for r in REQUIREMENTS)
        inside = self.b.root / "srv" / "wheelhouse"
        if not (self.wheelhouse / ".complete").exists():
            self.log("building the wheelhouse (PyPI)")
            inside.mkdir()
            self.run(
                "cd /srv/plone && pip wheel -q --no-cache-dir -w /srv/wheelhouse "
                f"-c constraints.txt {reqs}",
                "pip-wheel",
            )
            self.wheelhouse.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.wheelhouse, ignore_errors=True)
            shutil.copytree(inside, self.wheelhouse)
            (self.wheelhouse / ".complete").touch()
        else:
            shutil.copytree(self.wheelhouse, inside)
        self.run(
            "cd /srv/plone && pip install -q --no-index --find-links /srv/wheelhouse "
            f"-c constraints.txt {reqs}",
            "pip-install",
        )
        shutil.rmtree(inside)
        src = srv / "src"
        src.mkdir()
        if self.source.path.is_dir():
            shutil.copytree(
                self.source.path, src / "leam.luc", ignore=shutil.ignore_patterns(".git")
            )
        else:
            with tarfile.open(self.source.path) as tar:
                tar.extractall(src, filter="data")
            if not (src / "leam.luc").exists():
                (only,) = src.iterdir()
                only.rename(src / "leam.luc")
        self.run(
            "cd /srv/plone && pip install -q --no-index --no-deps -e src/leam.luc && pip check",
            "pip-install",
        )

    def instance(self) -> None:
        """A Zope instance (no buildout), its own user, and the fixture's passwords."""
        creds = {u: secrets.token_urlsafe(18) for u in ("admin", "poller", "member")}
        cred_file = self.b.dir / "credentials.json"
        cred_file.touch(mode=0o600)
        cred_file.write_text(json.dumps(creds))
        self.run(
            "useradd --system --home /srv/plone --shell /bin/false plone && "
            f"mkzopeinstance -d {INSTANCE} -u admin:unused",
            "instance",
        )
        home = self.b.root / INSTANCE.lstrip("/")
        digest = hashlib.sha1(creds["admin"].encode()).digest()  # Zope 2's {SHA} scheme
        (home / "inituser").write_text(f"admin:{{SHA}}{base64.b64encode(digest).decode()}\n")
        conf = (CHROOT_FILES / "zope.conf.in").read_text()
        conf = conf.replace("@HOME@", INSTANCE).replace("@ADDRESS@", "127.0.0.1")
        (home / "etc" / "zope.conf").write_text(conf.replace("@PORT@", "8080"))
        for d in ("log", "filestorage", "blobstorage"):
            (home / "var" / d).mkdir(parents=True, exist_ok=True)
        self.run(f"chown -R plone {INSTANCE} && mkdir -p /srv/plone/run", "instance")

    def site(self) -> None:
        """The site with settings unset, then set: one fresh database of each."""
        tmp = self.b.root / "tmp"
        secrets_file = tmp / "fixture.json"
        secrets_file.touch(mode=0o600)
        secrets_file.write_text((self.b.dir / "credentials.json").read_text())
        os.chown(secrets_file, *chroot_uid(self.b.root, "plone"))  # zopectl runs as plone
        shutil.copy(CHROOT_FILES / "setup_site.py", tmp / "setup_site.py")
        # The External Method's module must exist where it is added; each started portal
        # gets its own copy, so it is no input of the build's key.
        extensions = self.b.root / INSTANCE.lstrip("/") / "Extensions"
        extensions.mkdir(exist_ok=True)
        shutil.copy(CHROOT_FILES / "leam_fixture.py", extensions)
        shutil.copy(CHROOT_FILES / "set_settings.py", tmp / "set_settings.py")
        zopectl = f"{INSTANCE}/bin/zopectl run"
        self.run(f"{zopectl} /tmp/setup_site.py /tmp/fixture.json", "site")
        secrets_file.unlink()
        data = self.b.root / INSTANCE.lstrip("/") / "var" / "filestorage" / "Data.fs"
        shutil.copy2(data, self.b.unset)
        (tmp / "settings.json").write_text(json.dumps(SETTINGS))
        self.run(f"{zopectl} /tmp/set_settings.py /tmp/settings.json", "site")
        shutil.copy2(data, self.b.fresh)

"""One running real portal: a Zope server in the build's chroot, as the chroot's user
`plone`, on a loopback address, with an instance home of its own.

Each portal gets its own instance home under the chroot's /srv/plone/run/<name> (its
zope.conf, database, logs), so one build serves several portals at once and parallel
test runs never share a database. The build itself is never written to.

Jobs are queued and read over HTTP, through an External Method the build put at the
Zope root (`/leam_fixture`, Manager only, outside the site): a request takes a few
milliseconds while the server runs. The alternative, ZEO plus `zopectl run`, starts a
second Zope with all of Plone for every call (about 6 s each, measured) and needs a ZEO
server beside every portal. Plain HTTP alone cannot do it: creating a LUC Scenario means
driving Plone's add form, and `search_rss` shows one state at a time with no job that
was never popped nor ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from testing.real_portal.build import CHROOT_FILES, CHROOT_PATH, SETTINGS, Build, chroot_uid
from testing.wait import wait_until

SITE = "leam"


@dataclass(frozen=True)
class Job:
    """A job as queued on the real portal."""

    id: str
    url: str


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


class RealPortal:
    """A real LEAM portal from a build: start, stop, reset, queue and read jobs.

    `url` is the site (what a poller is given); `credentials` has the passwords of
    `poller` (Manager) and `member` (a plain member).
    """

    def __init__(
        self, build: Build, address: str = "127.0.0.1", port: int = 0, name: str | None = None
    ) -> None:
        self.build = build
        self.address = address
        self.port = port or free_port(address)
        self.name = name or f"{address}-{self.port}"
        self.home = build.runs / self.name  # host path of the instance home
        self.chroot_home = "/" + str(self.home.relative_to(build.root))
        self.credentials = build.credentials
        self._proc: subprocess.Popen | None = None

    # -- addresses ---------------------------------------------------------

    @property
    def root_url(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def url(self) -> str:
        """The site's URL (what a poller is given)."""
        return f"{self.root_url}/{SITE}"

    def vhm_url(self, host: str, port: int, scheme: str = "http") -> str:
        """The site through Zope's VirtualHostMonster: job URLs name host:port instead."""
        return f"{self.root_url}/VirtualHostBase/{scheme}/{host}:{port}/{SITE}/VirtualHostRoot"

    @property
    def auth(self) -> tuple[str, str]:
        """The poller's credentials."""
        return ("poller", self.credentials["poller"])

    # -- lifecycle ---------------------------------------------------------

    @property
    def pidfile(self) -> Path:
        return self.home / "server.pid"

    @property
    def log(self) -> Path:
        return self.home / "server.log"

    def pid(self) -> int | None:
        """The server's pid while it runs (checked against its start time)."""
        with contextlib.suppress(OSError, ValueError, KeyError, psutil.Error):
            info = json.loads(self.pidfile.read_text())
            if psutil.Process(info["pid"]).create_time() == info["started"]:
                return info["pid"]
        return None

    def reset(self, settings: bool = True) -> RealPortal:
        """Back to the fresh database (server stopped): scenario-1 queued, nothing else.
        `settings=False`: the two LUC settings unset, as Plone leaves a new site."""
        if self.pid():
            raise RuntimeError(f"reset: the portal {self.name} is running; stop it first")
        var = self.home / "var"
        shutil.rmtree(var, ignore_errors=True)
        for d in ("filestorage", "blobstorage", "log"):
            (var / d).mkdir(parents=True)
        fresh = self.build.fresh if settings else self.build.unset
        shutil.copyfile(fresh, var / "filestorage" / "Data.fs")
        uid, gid = chroot_uid(self.build.root, "plone")
        for p in [var, *var.rglob("*")]:
            os.chown(p, uid, gid)
        return self

    def _configure(self) -> None:
        (self.home / "etc").mkdir(parents=True, exist_ok=True)
        (self.home / "Extensions").mkdir(exist_ok=True)
        shutil.copy(CHROOT_FILES / "leam_fixture.py", self.home / "Extensions")
        conf = (CHROOT_FILES / "zope.conf.in").read_text()
        for key, value in (("HOME", self.chroot_home), ("ADDRESS", self.address)):
            conf = conf.replace(f"@{key}@", value)
        (self.home / "etc" / "zope.conf").write_text(conf.replace("@PORT@", str(self.port)))
        if not (self.home / "var" / "filestorage" / "Data.fs").exists():
            self.reset()

    def start(self, timeout: float = 120.0) -> RealPortal:
        """Start the server and wait until the site answers."""
        if self.pid():
            raise RuntimeError(f"the portal {self.name} already runs (pid {self.pid()})")
        self._configure()
        argv = ["chroot", str(self.build.root), "/usr/bin/env", "-i", "HOME=/root"]
        argv += ["LANG=C.UTF-8", f"PATH={CHROOT_PATH}", f"INSTANCE_HOME={self.chroot_home}"]
        argv += ["python2.7", "-m", "Zope2.Startup.run", "-C", f"{self.chroot_home}/etc/zope.conf"]
        with open(self.log, "ab") as out:
            self._proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        proc = psutil.Process(self._proc.pid)
        info = {"pid": proc.pid, "started": proc.create_time(), "address": self.address}
        self.pidfile.write_text(json.dumps({**info, "port": self.port}))

        def up() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the portal exited ({self._proc.returncode}):\n{tail}")
            with contextlib.suppress(requests.RequestException):
                return requests.get(self.url + "/pop_queue", timeout=5).status_code == 200
            return False

        wait_until(up, timeout, f"the real portal on {self.root_url}")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM by pid, SIGKILL at the deadline; returns once the process is gone."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            try:
                psutil.Process(pid).wait(timeout)
            except psutil.TimeoutExpired:
                os.kill(pid, signal.SIGKILL)
                psutil.Process(pid).wait(10)
            except psutil.NoSuchProcess:
                pass
        if self._proc is not None:
            self._proc.wait(10)  # reap our own child
            self._proc = None
        self.pidfile.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop and remove this portal's instance home."""
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> RealPortal:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs and settings (over HTTP, while the server runs) -------------

    def _fixture(self, op: str, **form: str) -> object:
        answer = requests.post(
            f"{self.root_url}/leam_fixture",
            data={"op": op, **form},
            auth=("admin", self.credentials["admin"]),
            timeout=30,
        )
        answer.raise_for_status()
        return answer.json()

    def queue(self, *ids: str) -> list[Job]:
        """Add queued LUC Scenarios with these ids (and titles); popped oldest first."""
        made = self._fixture("queue", ids=",".join(ids))
        assert isinstance(made, list)
        return [Job(j["id"], j["url"]) for j in made]

    def status(self) -> dict[str, str]:
        """Every job's runstatus, oldest first: {id: queued|running|complete}."""
        jobs = self._fixture("status")
        assert isinstance(jobs, list)
        return {j["id"]: j["runstatus"] for j in jobs}

    def set_settings(
        self,
        repo: str | None = SETTINGS["scenario_repo"],
        cmd: str | None = SETTINGS["scenario_cmd"],
    ) -> None:
        """The site's scenario_repo and scenario_cmd ({id} and {url} are filled in per job);
        None unsets one (a pop then answers 500)."""
        form = {k: v for k, v in (("repo", repo), ("cmd", cmd)) if v is not None}
        self._fixture("settings", **form)


def running(build: Build) -> list[RealPortal]:
    """Portals of this build whose server runs (from any process)."""
    found = []
    if build.runs.is_dir():
        for home in sorted(build.runs.iterdir()):
            with contextlib.suppress(OSError, ValueError, KeyError):
                info = json.loads((home / "server.pid").read_text())
                p = RealPortal(build, info["address"], info["port"], home.name)
                if p.pid():
                    found.append(p)
    return found


def measure(build: Build) -> dict[str, float]:
    """Seconds to reset and to start a portal (for docs/real-portal.md)."""
    p = RealPortal(build)
    t = time.monotonic()
    p.reset()
    reset = time.monotonic() - t
    t = time.monotonic()
    p.start()
    start = time.monotonic() - t
    p.close()
    return {"reset": reset, "start": start}

"""Shared fixtures: a real portal stand-in and the real `leampoll` command."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from testing.portal_standin import PortalStandin
from testing.reliability import Run
from testing.wait import wait_until

LEAMPOLL = [sys.executable, "-m", "leampoll"]
USER, PASSWORD = "poller", "s3cret-Pa55word"


def leampoll_check(
    url: str, workdir: Path, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess:
    """`leampoll --check` of url, with guard thresholds any test machine meets."""
    argv = [*LEAMPOLL, "--check", *extra, "--workdir", str(workdir)]
    argv += ["--min-free-disk", "1M", "--min-free-mem", "1M", url]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)


class Poller:
    """A running `leampoll` process, its stderr captured to a file."""

    def __init__(self, args: list[str], workdir: Path, env: dict[str, str], log: Path) -> None:
        self.workdir = workdir
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*LEAMPOLL, *args], env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 20.0) -> str:
        return wait_until(lambda: text in self.log, timeout, f"{text!r} in the poller log")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def portal(request: pytest.FixtureRequest) -> Iterator[PortalStandin]:
    """The stand-in in plone mode (a real portal), or the mode given by indirect
    parametrization: `@pytest.mark.parametrize("portal", MODES, indirect=True)`."""
    with PortalStandin(USER, PASSWORD, mode=getattr(request, "param", "plone")) as p:
        yield p


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "jobdir"
    d.mkdir()
    return d


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    e.update(
        PORTAL_USER=USER,
        PORTAL_PASSWORD=PASSWORD,
        PYTHONPATH=str(Path(__file__).parent.parent),
        # A ledger of the test's own, never the machine's /run/leampoll.
        LEAMPOLL_LEDGER=str(tmp_path / "poller-ledger" / "ledger.json"),
    )
    return e


@pytest.fixture
def start_poller(
    portal: PortalStandin, workdir: Path, env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., Poller]]:
    """Start `leampoll` against the stand-in; every process it left is ended afterwards."""
    started: list[Poller] = []

    def start(
        *extra: str, url: str | None = None, wd: Path | None = None, quick: bool = True
    ) -> Poller:
        base = [
            "--workdir",
            str(wd or workdir),
            "--min-free-disk",
            "1M",
            "--min-free-mem",
            "1M",
            "--min-free-inodes",
            "10",
        ]
        if quick:
            base += ["--speed", "0.2", "--max-backoff", "0.5"]
        p = Poller(
            [*base, *extra, url or portal.url],
            wd or workdir,
            env,
            tmp_path / f"poller-{len(started)}.log",
        )
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
    _end_job_processes(workdir)


def _end_job_processes(workdir: Path) -> None:
    """Kill job process groups the tests left behind, by the pgids the poller recorded."""
    for proc in psutil.process_iter(["pid", "cwd"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            cwd = proc.info.get("cwd") or ""
            if cwd.startswith(str(workdir)):
                os.killpg(os.getpgid(proc.pid), signal.SIGKILL)


@pytest.fixture(scope="session")
def reliability() -> Iterator[Run]:
    """The fault suite's figures; written to $LEAM_RELIABILITY_JSON at the end."""
    run = Run()
    yield run
    out = os.environ.get("LEAM_RELIABILITY_JSON")
    if out and run.cases:
        run.dump(Path(out))

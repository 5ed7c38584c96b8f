"""Shared fixtures: a real portal stand-in and the real `leampoll` command."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from testing.pollers import LEAMPOLL, poller_flags, sh, status_json  # noqa: F401
from testing.portal_standin import MODES, PortalStandin

# The real portal (leam.luc on Plone 4.3), for tests marked real_portal.
from testing.real_portal.fixtures import real_portal, real_portal_build, required  # noqa: F401
from testing.reliability import Run
from testing.wait import wait_until

USER, PASSWORD = "poller", "s3cret-Pa55word"
# A test of what the protocol decides runs against both modes of the stand-in.
both_modes = pytest.mark.parametrize("portal", MODES, indirect=True)


def password_file(path: Path, text: str, mode: int = 0o600) -> Path:
    """Replace the file the way an operator (or the role) would: a new file, renamed."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text + "\n")
    tmp.chmod(mode)
    tmp.rename(path)
    return path


def leampoll_check(
    url: str, workdir: Path, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess:
    """`leampoll --check` of url, with guard thresholds any test machine meets."""
    argv = [*LEAMPOLL, "--check", *extra, *poller_flags(workdir, None, None), url]
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


@pytest.fixture(scope="session", autouse=True)
def _own_ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every poller the tests start on this machine, whatever starts it, reserves in a
    ledger of the run's own: the machine's /run/leampoll is never made or touched."""
    old = os.environ.get("LEAMPOLL_LEDGER")
    os.environ["LEAMPOLL_LEDGER"] = str(tmp_path_factory.mktemp("ledger") / "ledger.json")
    yield
    if old is None:
        os.environ.pop("LEAMPOLL_LEDGER", None)
    else:
        os.environ["LEAMPOLL_LEDGER"] = old


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
def start_leampoll(
    workdir: Path, env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., Poller]]:
    """Start `leampoll` against a portal URL; every process it left is ended afterwards."""
    started: list[Poller] = []

    def start(*extra: str, url: str, wd: Path | None = None, quick: bool = True) -> Poller:
        if quick:
            base = poller_flags(wd or workdir)
        else:
            base = poller_flags(wd or workdir, speed=None, max_backoff=None)
        p = Poller(
            [*base, *extra, url],
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


@pytest.fixture
def start_poller(
    portal: PortalStandin, start_leampoll: Callable[..., Poller]
) -> Callable[..., Poller]:
    """Start `leampoll` against the stand-in (or `url=`)."""

    def start(*extra: str, url: str | None = None, **options) -> Poller:
        return start_leampoll(*extra, url=url or portal.url, **options)

    return start


def _end_job_processes(workdir: Path) -> None:
    """Kill job process groups the tests left behind, by the pgids the poller recorded."""
    for proc in psutil.process_iter(["pid", "cwd"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            cwd = proc.info.get("cwd") or ""
            if cwd.startswith(str(workdir)):
                os.killpg(os.getpgid(proc.pid), signal.SIGKILL)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow modules first (sandbox hosts, then the real portal), so that `make
    test`'s two workers start them early and the quick ones fill in at the end
    (--no-loadscope-reorder keeps this order). A stable sort: every module keeps its own order."""
    items.sort(
        key=lambda item: (
            not item.get_closest_marker("sandbox"),
            not item.get_closest_marker("real_portal"),
        )
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """With LEAM_REAL_PORTAL_REQUIRED=1 (CI) a real-portal test that skips fails instead,
    whatever skipped it (the build, sandbox hosts, a missing tool)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and required() and item.get_closest_marker("real_portal"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"LEAM_REAL_PORTAL_REQUIRED=1, but a real-portal test skipped: {reason}"


@pytest.fixture(scope="session")
def reliability() -> Iterator[Run]:
    """The fault suite's figures; written to $LEAM_RELIABILITY_JSON at the end."""
    run = Run()
    yield run
    out = os.environ.get("LEAM_RELIABILITY_JSON")
    if out and run.cases:
        run.dump(Path(out))


@pytest.fixture
def small_fs(tmp_path):
    """A real, small filesystem (tmpfs) for the disk and inode guards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m,nr_inodes=400", "tmpfs", str(mnt)], check=True
    )
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)

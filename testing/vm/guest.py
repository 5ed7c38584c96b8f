"""Running the project's own tests inside a VM: the checkout copied in, a venv made
with the guest's Python from a wheelhouse built on this machine (the guest needs no
package index), pytest run as root, its JUnit report brought back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from testing.sandbox.settings import DEFAULT_CACHE_DIR
from testing.sandbox.system import SandboxError, default_log, flock, run_command
from testing.vm.machine import VM

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the poller's own fallback
    import tomli as tomllib

# Where things are in the guest.
GUEST_PROJECT = "/root/leam"
GUEST_VENV = "/root/venv"
GUEST_WHEELS = "/root/wheels"
GUEST_RESULTS = "/root/results"
# The guest's Python (Debian's python3 of the suite): the wheelhouse is built for it.
GUEST_PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
# What the tests import besides the poller's own dependencies, pinned where
# requirements-dev.txt pins them (Ansible and the linters stay out: large and unused).
TEST_PACKAGES = (
    "pytest",
    "pytest-timeout",
    "prometheus_client",
    "supervisor",
    "hypothesis",
    "setuptools",
)
# Tells a test it runs inside the VM (tests/test_vm_guest.py runs only there).
GUEST_ENV = {"LEAM_VM_GUEST": "1", "PYTHONDONTWRITEBYTECODE": "1"}


@dataclass(frozen=True)
class GuestResult:
    """What a pytest run in the guest gave: exit code, counts from its JUnit report."""

    returncode: int
    output: str
    tests: int
    failures: int
    errors: int
    skipped: int
    seconds: float
    results_dir: Path

    @property
    def passed(self) -> int:
        return self.tests - self.failures - self.errors - self.skipped

    def write_summary(self, path: Path, **about: object) -> None:
        """`summary.json` of the run (docs/vm.md): `about` (tests, timings) and the counts."""
        summary = {
            **about,
            "test_seconds": self.seconds,
            "returncode": self.returncode,
            "passed": self.passed,
            "failures": self.failures,
            "errors": self.errors,
            "skipped": self.skipped,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        path.write_text(json.dumps(summary, indent=2) + "\n")


def guest_requirements(project: Path) -> list[str]:
    """The poller's dependencies (pyproject.toml) plus the pinned test packages."""
    deps = tomllib.loads((project / "pyproject.toml").read_text())["project"]["dependencies"]
    pins: dict[str, str] = {}
    for line in (project / "requirements-dev.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]
        if name:
            pins[name.lower().replace("_", "-")] = line
    wanted = []
    for name in TEST_PACKAGES:
        key = name.lower().replace("_", "-")
        if key not in pins:
            raise SandboxError(f"{name} is not pinned in requirements-dev.txt")
        wanted.append(pins[key])
    return [*deps, *wanted]


def ensure_wheelhouse(
    requirements: Sequence[str],
    python_version: str,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = default_log,
) -> Path:
    """Wheels for the guest's Python, downloaded with this machine's pip configuration
    (its index and trust store); cached by requirements and Python version."""
    digest = hashlib.sha256(json.dumps([python_version, *requirements]).encode()).hexdigest()[:12]
    cache = Path(cache_dir or DEFAULT_CACHE_DIR)
    final = cache / f"vm-wheels-{digest}"
    if final.is_dir():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    with flock(cache / f".build-vm-wheels-{digest}.lock"):
        if final.is_dir():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-vm-wheels-{digest}-", dir=cache))
        try:
            log(f"downloading wheels for the guest's Python {python_version}")
            reqs = tmp / "requirements.txt"
            reqs.write_text("\n".join(requirements) + "\n")
            run_command(
                [
                    sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                    "--python-version", python_version, "-d", tmp, "-r", reqs,
                ],
                timeout=600,
            )  # fmt: skip
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def project_files(project: Path) -> list[str]:
    """The checkout as git sees it, uncommitted changes included, ignored files not."""
    out = run_command(
        ["git", "-C", project, "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    ).stdout
    return [f for f in out.split("\0") if f and (project / f).is_file()]


def prepare(
    vm: VM, project: Path, suite: str = "bookworm", log: Callable[[str], None] = default_log
) -> None:
    """Copy the checkout and the wheelhouse in; make the venv with the project installed
    editable, as `make venv` does on this machine."""
    requirements = guest_requirements(project)
    wheels = ensure_wheelhouse(requirements, GUEST_PYTHON[suite], log=log)
    started = time.monotonic()
    vm.copy_in(project, GUEST_PROJECT, project_files(project))
    vm.copy_in(wheels, GUEST_WHEELS)
    reqs = "\n".join(requirements) + "\n"
    vm.run(f"cat > {GUEST_WHEELS}/requirements.txt", input=reqs.encode())
    pip = f"{GUEST_VENV}/bin/pip install -q --no-index --find-links {GUEST_WHEELS}"
    vm.run(
        f"python3 -m venv {GUEST_VENV} && {pip} -r {GUEST_WHEELS}/requirements.txt"
        f" && {pip} --no-deps --no-build-isolation -e {GUEST_PROJECT}",
        timeout=900,
    )
    log(f"project and venv ready in the VM in {time.monotonic() - started:.1f}s")


def run_pytest(
    vm: VM,
    tests: Sequence[str],
    results_dir: Path,
    pytest_args: Sequence[str] = (),
    timeout: float = 3600.0,
    log: Callable[[str], None] = default_log,
) -> GuestResult:
    """Run pytest on ``tests`` (paths relative to the checkout) in the guest as root;
    its output and JUnit report land in ``results_dir``."""
    if not tests:
        raise SandboxError("no test modules given to run in the VM")
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in GUEST_ENV.items())
    args = " ".join(shlex.quote(a) for a in [*tests, *pytest_args])
    command = (
        f"rm -rf {GUEST_RESULTS} && mkdir -p {GUEST_RESULTS} && cd {GUEST_PROJECT} && "
        f"env {env} {GUEST_VENV}/bin/pytest -p no:cacheprovider -rs "
        f"--junitxml={GUEST_RESULTS}/junit.xml {args}"
    )
    log(f"running in the VM: pytest {args}")
    started = time.monotonic()
    proc = vm.run(command, check=False, timeout=timeout, stdout=subprocess.PIPE)
    seconds = round(time.monotonic() - started, 1)
    output = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    shutil.rmtree(results_dir, ignore_errors=True)
    results_dir.mkdir(parents=True)
    (results_dir / "pytest.log").write_text(output)
    counts = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    try:
        vm.copy_out(GUEST_RESULTS, results_dir)
        suite = ET.parse(results_dir / "junit.xml").getroot()
        for node in [suite] if suite.tag == "testsuite" else suite.iter("testsuite"):
            for k in counts:
                counts[k] += int(node.get(k, "0"))
    except (SandboxError, OSError, ET.ParseError) as exc:
        log(f"no JUnit report from the VM: {exc}")
    result = GuestResult(
        proc.returncode, output, **counts, seconds=seconds, results_dir=results_dir
    )
    log(
        f"pytest in the VM exited {result.returncode} after {seconds}s: {result.passed} passed, "
        f"{result.failures} failed, {result.errors} errors, {result.skipped} skipped"
    )
    return result

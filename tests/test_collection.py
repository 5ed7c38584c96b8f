"""The collection leam.jobserver and the one version it shares with the poller.

The tarball is built as `make collection` builds it, installed with
`ansible-galaxy collection install` into a collections path of its own, and
`leam.jobserver.site` converges a sandbox host from a directory outside the
checkout, with no ansible.cfg and no roles path: every role, task file and the
poller's source must come from the installed collection.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from leampoll import __version__
from testing import playbook
from testing.fleet import Inventory, leam_project
from testing.playbook import recap
from testing.portal_standin import PortalStandin
from testing.sandbox import Sandbox
from tests.conftest import LEAMPOLL

ROOT = Path(__file__).resolve().parent.parent
RELEASE = [sys.executable, str(ROOT / "tools" / "release.py")]
GALAXY = Path(sys.executable).with_name("ansible-galaxy")
STATE_DIR = Path(os.environ.get("LEAM_SANDBOX_TEST_STATE", "/run/leam-sandbox-pytest"))
PASSWORD = "collection-Pa55 %word"


def release(*args: str, root: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*RELEASE, "--root", str(root), *args], capture_output=True, text=True, timeout=300
    )


# -- versions -------------------------------------------------------------------------


def test_poller_collection_and_changelog_name_one_version():
    out = release("check")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == __version__
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    assert (galaxy["namespace"], galaxy["name"], galaxy["version"]) == (
        "leam",
        "jobserver",
        __version__,
    )
    shown = subprocess.run(
        [*LEAMPOLL, "--version"], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert shown.returncode == 0 and shown.stdout.strip() == f"leampoll {__version__}"


def test_runtime_requires_the_pinned_ansible_core():
    runtime = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())
    pinned = re.search(r"^ansible==(\d+)\.", (ROOT / "requirements-dev.txt").read_text(), re.M)
    assert pinned and pinned.group(1) == "12"  # PyPI's ansible 12 carries ansible-core 2.19
    assert runtime["requires_ansible"] == ">=2.19.0"


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the three files that name the version."""
    for name in ("galaxy.yml", "CHANGELOG.md", "leampoll/__init__.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_bump_moves_every_file_and_the_unreleased_entries(tree):
    before = (tree / "CHANGELOG.md").read_text()
    unreleased = before.split("## [Unreleased]")[1].split(f"## [{__version__}]")[0].strip()
    major, minor = (int(part) for part in __version__.split(".")[:2])
    new = f"{major}.{minor + 1}.0"
    out = release("bump", new, root=tree)
    assert out.returncode == 0, out.stderr
    assert release("check", root=tree).stdout.strip() == new
    assert f'__version__ = "{new}"' in (tree / "leampoll/__init__.py").read_text()
    assert yaml.safe_load((tree / "galaxy.yml").read_text())["version"] == new
    after = (tree / "CHANGELOG.md").read_text()
    section = re.search(
        rf"^## \[{re.escape(new)}\] - \d{{4}}-\d\d-\d\d\n(.*?)^## \[", after, re.M | re.S
    )
    assert section and section.group(1).strip() == unreleased
    assert re.search(r"^## \[Unreleased\]\n\n## \[", after, re.M)  # empty again
    # Nothing new to release, and no going back.
    again = release("bump", f"{major}.{minor + 2}.0", root=tree)
    assert again.returncode == 1 and "nothing under '## [Unreleased]'" in again.stderr
    older = release("bump", __version__, root=tree)
    assert older.returncode == 1 and "not newer" in older.stderr


def test_check_names_the_file_out_of_step(tree):
    galaxy = tree / "galaxy.yml"
    galaxy.write_text(galaxy.read_text().replace(f"version: {__version__}", "version: 9.9.9"))
    out = release("check", root=tree)
    assert out.returncode == 1
    assert "galaxy.yml: version 9.9.9" in out.stderr and __version__ in out.stderr
    shutil.copy(ROOT / "galaxy.yml", galaxy)
    changelog = tree / "CHANGELOG.md"
    changelog.write_text(changelog.read_text().replace(f"## [{__version__}]", "## [0.0.1]"))
    out = release("check", root=tree)
    assert out.returncode == 1 and "CHANGELOG.md: newest release is 0.0.1" in out.stderr


# -- the tarball ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tarball(tmp_path_factory) -> Path:
    out = release("build", str(tmp_path_factory.mktemp("dist")))
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip())
    assert path.name == f"leam-jobserver-{__version__}.tar.gz"
    return path


def test_tarball_holds_every_role_and_playbook_and_the_poller_source(tarball):
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("MANIFEST.json"))
    assert manifest["collection_info"]["version"] == __version__
    # Whatever is in the checkout's playbooks/ and roles/, added later too.
    for path in [
        *(ROOT / "playbooks").rglob("*"),
        *(ROOT / "roles").rglob("*"),
        *(ROOT / "leampoll").glob("*.py"),
        *(ROOT / "plugins").rglob("*.py"),
        *(ROOT / "monitoring").glob("*.*"),
    ]:
        if path.is_file() and "__pycache__" not in path.parts:
            assert str(path.relative_to(ROOT)) in names, path
    assert {
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "meta/runtime.yml",
        "man/leampoll.1",
    } <= names  # the leampoll role installs the man page from it
    leaked = [
        n
        for n in names
        if n.split("/")[0]
        in {"tests", "testing", "bench", "tools", ".venv", ".ci", "dist", "build"}
        or "__pycache__" in n
        or n.endswith(".pyc")
        or n in {"site.yml", "ansible.cfg", "Makefile", "requirements-dev.txt"}
        or n.startswith(("monitoring/tests", "."))
    ]
    assert leaked == []


@pytest.fixture(scope="module")
def installed(tarball, tmp_path_factory) -> Path:
    """The tarball installed into a collections path of its own."""
    path = tmp_path_factory.mktemp("collections")
    out = subprocess.run(
        [str(GALAXY), "collection", "install", str(tarball), "-p", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert (path / "ansible_collections/leam/jobserver/playbooks/site.yml").is_file()
    return path


@pytest.fixture(scope="module")
def outside(installed, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A working directory outside the checkout, and an environment naming only the
    installed collection: an empty ansible.cfg, an empty roles path."""
    work = tmp_path_factory.mktemp("outside")
    assert ROOT not in work.parents
    (work / "ansible.cfg").write_text("[defaults]\n")
    (work / "no-roles").mkdir()
    env = {
        "ANSIBLE_CONFIG": str(work / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(work / "no-roles"),
        "ANSIBLE_COLLECTIONS_PATH": str(installed),
    }
    return work, env


@pytest.fixture(scope="module")
def converged(outside, tmp_path_factory) -> Iterator[dict]:
    """One sandbox host converged through leam.jobserver.site."""
    work, env = outside
    sandbox = Sandbox(STATE_DIR / "collection")
    sandbox.down_all()  # leftovers of an interrupted earlier run
    with (
        PortalStandin("poller", PASSWORD, base_path="/coll") as portal,
        sandbox.hosts_up(["coll"]) as (host,),
    ):
        inventory = Inventory(
            sandbox,
            work / "inventory.yml",
            projects={"coll": [leam_project("coll", portal.url, PASSWORD)]},
        ).write()
        out = playbook.run(inventory, "leam.jobserver.site", "-vv", env=env, cwd=work, log_dir=work)
        yield {
            "out": out,
            "host": host,
            "portal": portal,
            "inventory": inventory,
            "work": work,
            "env": env,
        }


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "playbooks").glob("*.yml")))
def test_every_playbook_is_callable_by_its_full_name(outside, name):
    work, env = outside
    inventory = work / "empty.yml"
    inventory.write_text("all:\n  children:\n    leam_jobservers:\n      hosts: {}\n")
    out = playbook.run(
        inventory, f"leam.jobserver.{name}", "--syntax-check", env=env, cwd=work, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"ansible_collections/leam/jobserver/playbooks/{name}.yml" in out.stdout


@pytest.mark.sandbox
@pytest.mark.timeout(900)
@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("debootstrap"),
    reason="sandbox hosts need root, unshare and debootstrap",
)
def test_installed_collection_converges_a_host_that_runs_jobs(converged, installed):
    out, host, portal = converged["out"], converged["host"], converged["portal"]
    assert out.returncode == 0, out.stdout[-4000:]
    assert recap(out.stdout)["coll"]["failed"] == 0
    # Every task came from the installed collection, none from the checkout.
    paths = re.findall(r"^task path: (\S+?):\d+$", out.stdout, re.M)
    assert paths, out.stdout[-2000:]
    collection = installed / "ansible_collections" / "leam" / "jobserver"
    assert all(Path(p).is_relative_to(collection) for p in paths), sorted(set(paths))
    assert any("/roles/leampoll/tasks/build.yml" in p for p in paths)
    assert PASSWORD not in out.stdout
    # The poller it installed runs this version and works its portal's queue.
    shown = host.ssh("/usr/local/bin/leampoll --version").stdout.strip()
    assert shown == f"leampoll {__version__}"
    portal.queue("coll-job", "true")
    portal.wait_for(lambda p: p.status.get("coll-job") == "complete", timeout=60)
    # And the fleet's table, through the collection's status playbook, shows it.
    status = playbook.run(
        converged["inventory"],
        "leam.jobserver.status",
        env=converged["env"],
        cwd=converged["work"],
        timeout=300,
    )
    assert status.returncode == 0, status.stdout[-4000:]
    row = next(line for line in status.stdout.splitlines() if re.match(r'^\s*"coll\s', line))
    assert row.strip().strip('",').split()[:4] == ["coll", "coll", "RUNNING", __version__]

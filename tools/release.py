"""One version for the poller and the collection: check it, bump it, build the tarball.

The version lives in leampoll/__init__.py (`__version__`, which pyproject.toml
reads). galaxy.yml must carry the same, and CHANGELOG.md's newest released
section must be it; `check` says which file is out of step.

    python tools/release.py check
    python tools/release.py bump X.Y.Z    # __version__, galaxy.yml, CHANGELOG.md
    python tools/release.py build DIR     # check, then DIR/leam-jobserver-X.Y.Z.tar.gz

Tags are not made here: the release commit on main is tagged vX.Y.Z.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
INIT_VERSION = re.compile(r'^__version__ = "([^"]+)"$', re.M)
GALAXY_VERSION = re.compile(r"^version: *(\S+) *$", re.M)
RELEASED = re.compile(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", re.M)
UNRELEASED = "## [Unreleased]"


class ReleaseError(Exception):
    """Files out of step, or a bump that cannot be made; the message says which."""


@dataclass(frozen=True)
class Files:
    """The three files that name the version, in one tree."""

    root: Path

    @property
    def init(self) -> Path:
        return self.root / "leampoll" / "__init__.py"

    @property
    def galaxy(self) -> Path:
        return self.root / "galaxy.yml"

    @property
    def changelog(self) -> Path:
        return self.root / "CHANGELOG.md"


def _one(pattern: re.Pattern[str], path: Path, what: str) -> re.Match[str]:
    matches = list(pattern.finditer(path.read_text()))
    if len(matches) != 1:
        raise ReleaseError(f"{path}: expected one {what}, found {len(matches)}")
    return matches[0]


def version(files: Files) -> str:
    """The version: `__version__` of the poller."""
    found = _one(INIT_VERSION, files.init, "__version__ line").group(1)
    if not SEMVER.match(found):
        raise ReleaseError(f"{files.init}: __version__ {found!r} is not X.Y.Z")
    return found


def check(files: Files) -> str:
    """The version, if galaxy.yml and CHANGELOG.md agree with it."""
    want = version(files)
    galaxy = _one(GALAXY_VERSION, files.galaxy, "top-level 'version:'").group(1)
    if galaxy != want:
        raise ReleaseError(
            f"{files.galaxy}: version {galaxy} but leampoll/__init__.py says "
            f"{want}; run `python tools/release.py bump {want}` or fix it by hand"
        )
    text = files.changelog.read_text()
    if UNRELEASED not in text:
        raise ReleaseError(f"{files.changelog}: no '{UNRELEASED}' section")
    released = RELEASED.search(text)
    if released is None or released.group(1) != want:
        newest = released.group(1) if released else "none"
        raise ReleaseError(
            f"{files.changelog}: newest release is {newest}, not {want}; "
            f"add '## [{want}] - YYYY-MM-DD' below '{UNRELEASED}'"
        )
    return want


def bump(files: Files, new: str, today: datetime.date | None = None) -> None:
    """Move every file to `new`: the [Unreleased] entries become its section."""
    old = check(files)
    if not SEMVER.match(new):
        raise ReleaseError(f"{new!r} is not a version X.Y.Z")
    if tuple(map(int, new.split("."))) <= tuple(map(int, old.split("."))):
        raise ReleaseError(f"{new} is not newer than {old}")
    text = files.changelog.read_text()
    head, _, rest = text.partition(UNRELEASED)
    entries = rest[: RELEASED.search(rest).start()]
    if not entries.strip():
        raise ReleaseError(f"{files.changelog}: nothing under '{UNRELEASED}' to release")
    date = (today or datetime.date.today()).isoformat()
    files.changelog.write_text(f"{head}{UNRELEASED}\n\n## [{new}] - {date}{rest}")
    files.init.write_text(INIT_VERSION.sub(f'__version__ = "{new}"', files.init.read_text()))
    files.galaxy.write_text(GALAXY_VERSION.sub(f"version: {new}", files.galaxy.read_text()))
    check(files)


def build(files: Files, out: Path) -> Path:
    """The collection tarball of this tree, after the version check."""
    ver = check(files)
    galaxy = Path(sys.executable).with_name("ansible-galaxy")
    exe = str(galaxy) if galaxy.exists() else shutil.which("ansible-galaxy")
    if exe is None:
        raise ReleaseError("ansible-galaxy not found (make venv installs it)")
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [exe, "collection", "build", "--force", "--output-path", str(out), str(files.root)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise ReleaseError(f"ansible-galaxy collection build failed:\n{done.stdout}{done.stderr}")
    tarball = out / f"leam-jobserver-{ver}.tar.gz"
    if not tarball.is_file():
        raise ReleaseError(f"ansible-galaxy did not write {tarball}:\n{done.stdout}")
    return tarball


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the tree (default: this one)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="the versions agree; print it")
    p = sub.add_parser("bump", help="move poller, collection and changelog to a new version")
    p.add_argument("version")
    p = sub.add_parser("build", help="build the collection tarball into DIR")
    p.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    files = Files(args.root)
    try:
        if args.command == "check":
            print(check(files))
        elif args.command == "bump":
            bump(files, args.version)
            print(f"version {args.version}: leampoll/__init__.py, galaxy.yml, CHANGELOG.md")
        else:
            print(build(files, args.dir))
    except ReleaseError as exc:
        print(f"release: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

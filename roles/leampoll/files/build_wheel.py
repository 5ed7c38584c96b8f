"""Build the poller's wheel, and its wheelhouse, on the controller; cached.

One process instead of a handful of tasks. The wheel is built once per
content of the source tree: CACHE/<key>/ holds it, where the key hashes every
file that goes into the wheel, SOURCE_DATE_EPOCH and the build backend's
version, so a run of the playbook with unchanged sources takes no build at
all. A build goes to a fresh directory (setuptools' build/ and *.egg-info
there too, so every build starts clean and the checkout stays untouched) and
is renamed into place, so two runs at once never see half a build.

    python build_wheel.py wheel SOURCE EPOCH CACHE [--wheelhouse EXTRAS]
        prints {"dir": CACHE/<key>, "wheel": path, "sha256": hex}; with
        --wheelhouse, also makes the wheelhouse below
    python build_wheel.py wheelhouse DIR EXTRAS
        DIR/wheelhouse.tar: the wheel and its dependencies (with EXTRAS,
        e.g. "[metrics]"), one archive for one transfer per host; collected
        once per build, so the hosts get the same dependencies until the
        sources change (or the cache is removed); beside a wheel built for
        this Python only, its pure-Python wheel, for hosts of another Python

Where this Python has a setuptools that pyproject.toml accepts, the build
calls it directly (PEP 517 hook); otherwise pip builds in an isolated
environment.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# Marks a wheelhouse.tar that holds the portable wheels too (see add_portable_wheels).
PORTABLE_STAMP = ".wheelhouse-portable"
# pyproject.toml's [build-system] requires setuptools>=68.
SETUPTOOLS_MAJOR = 68
DIRECT_BUILD = "import sys; from setuptools import build_meta; build_meta.build_wheel(sys.argv[1])"
# What goes into the wheel: the package and the project files beside it.
PACKAGE = "leampoll"
PROJECT_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in", "README.md")
KEEP = 5  # builds kept in the cache


def setuptools_version() -> str | None:
    """The installed setuptools' version if pyproject.toml accepts it."""
    try:
        from importlib.metadata import version

        found = version("setuptools")
        return found if int(found.split(".")[0]) >= SETUPTOOLS_MAJOR else None
    except Exception:  # not installed, or a version we cannot read
        return None


def run(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
    done = subprocess.run(
        argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def source_key(source: Path, epoch: str, backend: str) -> str:
    digest = hashlib.sha256(f"{epoch}\0{backend}\0".encode())
    files = [source / name for name in PROJECT_FILES if (source / name).is_file()]
    files += sorted(
        p for p in (source / PACKAGE).rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    for path in files:
        digest.update(f"{path.relative_to(source)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:20]


def the_wheel(directory: Path) -> Path:
    wheels = sorted((directory / "dist").glob(f"{PACKAGE}-*.whl"))
    if len(wheels) != 1:
        sys.exit(f"expected one {PACKAGE} wheel in {directory / 'dist'}, found {len(wheels)}")
    return wheels[0]


def build_into(source: Path, epoch: str, scratch: Path, direct: bool) -> None:
    config = scratch / "build.cfg"
    config.write_text(f"[build]\nbuild_base = {scratch}/build\n[egg_info]\negg_base = {scratch}\n")
    env = {**os.environ, "SOURCE_DATE_EPOCH": epoch, "DIST_EXTRA_CONFIG": str(config)}
    dist = scratch / "dist"
    if direct:
        dist.mkdir()
        run([sys.executable, "-c", DIRECT_BUILD, str(dist)], env, cwd=source)
    else:
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--disable-pip-version-check",
                "--quiet",
                "--wheel-dir",
                str(dist),
                str(source),
            ],
            env,
        )
    shutil.rmtree(scratch / "build", ignore_errors=True)


def prune(cache: Path) -> None:
    entries = sorted(
        (p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)


def wheel(args: argparse.Namespace) -> None:
    source, cache = args.source.resolve(), args.cache
    setuptools = setuptools_version()
    target = cache / source_key(source, args.epoch, setuptools or "pip-isolated")
    if not target.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
        try:
            build_into(source, args.epoch, scratch, direct=setuptools is not None)
            the_wheel(scratch)
            with contextlib.suppress(OSError):  # a run at the same time was first
                scratch.rename(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    os.utime(target)  # most recently used: kept by prune()
    prune(cache)
    built = the_wheel(target)
    if args.wheelhouse is not None:
        wheelhouse(argparse.Namespace(dir=target, extras=args.wheelhouse))
    print(
        json.dumps(
            {
                "dir": str(target),
                "wheel": str(built),
                "sha256": hashlib.sha256(built.read_bytes()).hexdigest(),
            }
        )
    )


def add_portable_wheels(scratch: Path) -> None:
    """Beside each wheel built for this Python only, its pure-Python wheel, where one exists.

    The hosts may run another Python than the controller (a bookworm
    controller's 3.11, trixie hosts' 3.13): their pip then picks the
    portable wheel. A dependency without one needs the same Python on both.
    """
    for path in sorted(scratch.glob("*.whl")):
        name, version, *_, abi, _platform = path.stem.split("-")
        if abi in ("none", "abi3"):
            continue
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--platform",
                "any",
                "--implementation",
                "py",
                "--abi",
                "none",
                "--python-version",
                f"{sys.version_info[0]}.{sys.version_info[1]}",
                "--dest",
                str(scratch),
                f"{name}=={version}",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(
                f"{path.name}: no pure-Python wheel; hosts need Python "
                f"{sys.version_info[0]}.{sys.version_info[1]}",
                file=sys.stderr,
            )


def wheelhouse(args: argparse.Namespace) -> None:
    # Collected once per build (the stamp: with the portable wheels).
    if (args.dir / "wheelhouse.tar").is_file() and (args.dir / PORTABLE_STAMP).is_file():
        return
    scratch = Path(tempfile.mkdtemp(prefix=".wheelhouse-", dir=args.dir))
    try:
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--disable-pip-version-check",
                "--quiet",
                "--wheel-dir",
                str(scratch),
                f"{the_wheel(args.dir)}{args.extras}",
            ],
            dict(os.environ),
        )
        add_portable_wheels(scratch)
        with tarfile.open(scratch / "wheelhouse.tar", "w") as tar:
            for path in sorted(scratch.glob("*.whl")):
                tar.add(path, arcname=path.name)
        (scratch / "wheelhouse.tar").rename(args.dir / "wheelhouse.tar")
        (args.dir / PORTABLE_STAMP).touch()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("wheel", help="build the wheel, or find it in the cache")
    p.add_argument("source", type=Path)
    p.add_argument("epoch")
    p.add_argument("cache", type=Path)
    p.add_argument("--wheelhouse", metavar="EXTRAS", help="and its wheelhouse, with these extras")
    p.set_defaults(func=wheel)
    p = sub.add_parser("wheelhouse", help="collect its dependencies into one archive")
    p.add_argument("dir", type=Path)
    p.add_argument("extras")
    p.set_defaults(func=wheelhouse)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()

"""Build the poller's wheel, and its wheelhouse, on the controller.

One process instead of a handful of tasks: a scratch directory, a build
configuration that keeps setuptools' build/ and *.egg-info out of the source
tree (so every build starts clean and the checkout stays untouched), a
reproducible build (SOURCE_DATE_EPOCH), the wheel's checksum. Prints JSON:
{"dir": scratch, "wheel": path, "sha256": hex}.

    python build_wheel.py wheel SOURCE EPOCH
    python build_wheel.py wheelhouse WHEEL EXTRAS   # -> <scratch>/wheelhouse.tar

The wheelhouse (the wheel and every dependency, with EXTRAS such as
"[metrics]") goes to the hosts as one archive: one transfer per host instead
of one per file.

Where this Python has a setuptools that pyproject.toml accepts, the build
calls it directly (PEP 517 hook, about 0.5 s); otherwise pip builds in an
isolated environment, which costs seconds on every run of the playbook.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# pyproject.toml's [build-system] requires setuptools>=68.
SETUPTOOLS_MAJOR = 68
DIRECT_BUILD = (
    "import sys; from setuptools import build_meta; build_meta.build_wheel(sys.argv[1])"
)


def setuptools_fits() -> bool:
    try:
        from importlib.metadata import version

        return int(version("setuptools").split(".")[0]) >= SETUPTOOLS_MAJOR
    except Exception:  # not installed, or a version we cannot read
        return False


def run(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
    done = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def build(args: argparse.Namespace) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="leampoll-build."))
    config = scratch / "build.cfg"
    config.write_text(f"[build]\nbuild_base = {scratch}/build\n[egg_info]\negg_base = {scratch}\n")
    env = {**os.environ, "SOURCE_DATE_EPOCH": args.epoch, "DIST_EXTRA_CONFIG": str(config)}
    dist = scratch / "dist"
    if setuptools_fits():
        dist.mkdir()
        run([sys.executable, "-c", DIRECT_BUILD, str(dist)], env, cwd=args.source)
    else:
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
             "--quiet", "--wheel-dir", str(dist), str(args.source)], env)
    wheels = sorted((scratch / "dist").glob("leampoll-*.whl"))
    if len(wheels) != 1:
        sys.exit(f"expected one leampoll wheel in {scratch / 'dist'}, found {len(wheels)}")
    wheel = wheels[0]
    print(json.dumps({"dir": str(scratch), "wheel": str(wheel),
                      "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()}))


def wheelhouse(args: argparse.Namespace) -> None:
    scratch = args.wheel.parent.parent
    house = scratch / "wheelhouse"
    run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--quiet",
         "--wheel-dir", str(house), f"{args.wheel}{args.extras}"], dict(os.environ))
    with tarfile.open(scratch / "wheelhouse.tar", "w") as tar:
        for path in sorted(house.glob("*.whl")):
            tar.add(path, arcname=path.name)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("wheel", help="build the wheel into a new scratch directory")
    p.add_argument("source", type=Path)
    p.add_argument("epoch")
    p.set_defaults(func=build)
    p = sub.add_parser("wheelhouse", help="collect its dependencies into one archive")
    p.add_argument("wheel", type=Path)
    p.add_argument("extras")
    p.set_defaults(func=wheelhouse)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()

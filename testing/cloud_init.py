"""Debian's cloud-init, for `cloud-init schema`, without installing it on this machine.

Installing the `cloud-init` package here would enable its boot units on the
machine itself; only its schema check is wanted. So the package is fetched
with apt (`apt-get download`, the machine's own mirror), unpacked into a cache
folder and run with the system Python, whose libraries (python3-jsonschema,
python3-yaml, ... installed by .ci/run) it needs. A `cloud-init` already on
PATH is used as it is.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("LEAM_SANDBOX_CACHE", "/var/cache/leam-sandbox")) / "cloud-init"
SYSTEM_PYTHON = "/usr/bin/python3"


class Unavailable(RuntimeError):
    """cloud-init cannot be had here (not root, no apt); the message says why."""


def command() -> list[str]:
    """argv prefix that runs `cloud-init`."""
    found = shutil.which("cloud-init")
    if found:
        return [found]
    root = CACHE / "root"
    exe = root / "usr" / "bin" / "cloud-init"
    if not exe.exists():
        _unpack(root)
    return [SYSTEM_PYTHON, str(exe)]


def _unpack(root: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable("cloud-init is not installed and apt-get download needs root")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "usr" / "bin" / "cloud-init").exists():
            return
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            os.chmod(tmp, 0o755)  # apt's _apt user writes the download there
            got = subprocess.run(
                ["apt-get", "download", "-q", "cloud-init"],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=300,
            )
            debs = list(Path(tmp).glob("cloud-init_*.deb"))
            if got.returncode != 0 or not debs:
                raise Unavailable(f"apt-get download cloud-init failed: {got.stderr[-500:]}")
            part = Path(tmp) / "root"
            subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(part)], check=True, timeout=120)
            part.rename(root)


def schema(path: Path) -> subprocess.CompletedProcess[str]:
    """`cloud-init schema --config-file PATH`, output captured."""
    argv = command()
    env = dict(os.environ)
    if argv[0] == SYSTEM_PYTHON:
        env["PYTHONPATH"] = str(CACHE / "root" / "usr" / "lib" / "python3" / "dist-packages")
    return subprocess.run(
        [*argv, "schema", "--config-file", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )

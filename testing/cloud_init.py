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
    _check_libraries()
    return [SYSTEM_PYTHON, str(exe)]


# What the unpacked cloud-init imports from Debian's python3-* packages
# (tools/setup-machine.sh installs them).
LIBRARIES = ("yaml", "jsonschema", "jinja2", "configobj", "jsonpatch", "requests", "oauthlib")


def _check_libraries() -> None:
    """Unavailable, naming them, when the system Python lacks cloud-init's libraries."""
    probe = (
        "import importlib.util as u, sys; print(*[m for m in sys.argv[1:] if not u.find_spec(m)])"
    )
    try:
        got = subprocess.run(
            [SYSTEM_PYTHON, "-c", probe, *LIBRARIES], capture_output=True, text=True, timeout=60
        )
    except OSError as exc:
        raise Unavailable(f"{SYSTEM_PYTHON}: {exc}") from None
    missing = got.stdout.split()
    if got.returncode != 0 or missing:
        raise Unavailable(
            f"{SYSTEM_PYTHON} lacks cloud-init's libraries "
            f"({' '.join(missing) or got.stderr[-200:]}); `make deps` installs them"
        )


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

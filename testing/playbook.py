"""Running this repository's playbooks from Python: tests, benchmarks.

One place that knows how `ansible-playbook` is invoked (from the project
root, so ansible.cfg applies; without colour, so output can be parsed) and
how its PLAY RECAP reads.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")


def run(
    inventory: Path,
    playbook: str,
    *args: str,
    env: dict[str, str] | None = None,
    log_dir: Path | None = None,
    timeout: float = 1200,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess:
    """`ansible-playbook -i inventory playbook args...`; output kept in log_dir if given.

    From the project root unless `cwd` says otherwise (an installed collection
    is run from elsewhere, so that nothing of the checkout applies).
    """
    argv = [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), playbook, *args]
    full_env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1", **(env or {})}
    out = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, env=full_env, timeout=timeout
    )
    if log_dir is not None:
        name = Path(playbook).name
        (log_dir / f"{name}-{time.time_ns()}.log").write_text(out.stdout + out.stderr)
    return out


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP per host: {'alpha': {'ok': 10, 'changed': 0, 'failed': 0, ...}}."""
    found = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", output, re.M):
        found[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return found

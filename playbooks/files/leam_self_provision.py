#!/usr/bin/python3
"""First boot of a LEAM job server: get Ansible and the toolkit, converge this host.

Written to /usr/local/sbin/leam-self-provision by cloud-init from the user
data that playbooks/userdata.yml renders, and run once per instance (runcmd).
Its settings come in a root-only JSON file named on the command line. It
installs the pinned Ansible into a virtual environment, checks the toolkit out
at the pinned revision and runs its site.yml against this host (connection
local), with the host's variables from /etc/leam/inventory. Every step is
safe to run again: a re-run converges to the same state.

Output goes to stdout/stderr, which cloud-init keeps in
/var/log/cloud-init-output.log; a failure exits non-zero with the step named.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path


def step(what: str, argv: list[str], **kwargs) -> None:
    print(f"leam-self-provision: {what}", flush=True)
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False, **kwargs)
    if done.returncode != 0:
        sys.exit(f"leam-self-provision: {what} failed (exit {done.returncode})")


def vault_password(plan: dict) -> Path | None:
    """The root-only vault password file; fetched by the configured command if missing."""
    if not plan["needs_vault"]:
        return None
    path = Path(plan["vault_password_file"])
    if not path.exists() and plan["vault_password_command"]:
        print(f"leam-self-provision: fetching the vault password into {path}", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            done = subprocess.run(
                plan["vault_password_command"], stdout=out, stdin=subprocess.DEVNULL, check=False
            )
        if done.returncode != 0 or path.stat().st_size == 0:
            path.unlink()
            sys.exit(
                "leam-self-provision: the vault password command failed "
                f"(exit {done.returncode}) or printed nothing"
            )
    if not path.exists():
        sys.exit(
            f"leam-self-provision: the vault password file {path} is missing; the host's "
            "secrets cannot be decrypted"
        )
    st = path.stat()
    if st.st_uid != 0 or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        sys.exit(
            f"leam-self-provision: {path} must belong to root and be readable by root "
            "only (chmod 600)"
        )
    return path


def main(argv: list[str]) -> int:
    plan = json.loads(Path(argv[1]).read_text())
    os.umask(0o022)
    prefix = Path(plan["prefix"])
    venv, src = prefix / "venv", prefix / "src"
    password = vault_password(plan)
    if not (venv / "bin" / "python").exists():
        step("making the Ansible virtual environment", [sys.executable, "-m", "venv", str(venv)])
    step(
        "installing " + " ".join(plan["requirements"]),
        [
            str(venv / "bin" / "pip"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *plan["pip_args"],
            *plan["requirements"],
        ],
    )
    if not (src / ".git").exists():
        step(
            f"cloning {plan['repo']}",
            ["git", "clone", "--quiet", "--no-checkout", plan["repo"], str(src)],
        )
    else:
        step(
            f"fetching {plan['repo']}",
            [
                "git",
                "-C",
                str(src),
                "fetch",
                "--quiet",
                plan["repo"],
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ],
        )
    step(
        f"checking out {plan['ref']}",
        [
            "git",
            "-C",
            str(src),
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "--quiet",
            "--force",
            "--detach",
            plan["ref"],
        ],
    )
    command = [str(venv / "bin" / "ansible-playbook"), "-i", plan["inventory"], "site.yml"]
    if password:
        command += ["--vault-id", f"{plan['vault_id']}@{password}"]
    env = {
        **os.environ,
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "HOME": os.environ.get("HOME") or "/root",
        "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
    }
    step("converging this host with site.yml", command, cwd=src, env=env)
    print("leam-self-provision: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

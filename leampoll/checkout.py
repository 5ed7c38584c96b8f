"""What a job's `repository` value means: a URL to check out, or a command.

A real portal's setting is described as "the subversion repository", so it
may be a bare URL; older ones hold a command (`svn co URL`, `git clone URL`).
A URL is checked out with Subversion, or with git when it names a git
repository (`.git` at the end, `git@host:` or `git://`); anything else is a
command, split shell-style and run without a shell, as before. The run
directory is always the last argument.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

SVN_SCHEMES = ("http://", "https://", "svn://", "svn+ssh://", "file://")
_GIT_SCP = re.compile(r"^git@[^\s/:]+:\S")


@dataclass(frozen=True)
class Checkout:
    """The argv of a checkout and how it was chosen (for the job log)."""

    argv: list[str]
    kind: str  # svn, git or command


def is_git_url(value: str) -> bool:
    return (
        value.startswith("git://")
        or bool(_GIT_SCP.match(value))
        or (value.lower().startswith(SVN_SCHEMES) and value.rstrip("/").endswith(".git"))
    )


def plan(repository: str, rundir: Path) -> Checkout:
    """The checkout of `repository` into `rundir`; ValueError for a command shlex cannot split."""
    value = repository.strip()
    if value and not any(c.isspace() for c in value):
        if is_git_url(value):
            return Checkout(["git", "clone", "--quiet", value, str(rundir)], "git")
        if value.lower().startswith(SVN_SCHEMES):
            return Checkout(["svn", "checkout", "--non-interactive", value, str(rundir)], "svn")
    argv = shlex.split(value)
    if not argv:
        raise ValueError("empty repository command")
    if Path(argv[0]).name == "svn" and "--non-interactive" not in argv:
        argv.insert(min(2, len(argv)), "--non-interactive")
    return Checkout([*argv, str(rundir)], "command")

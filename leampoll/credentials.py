"""The portal password from a file: read at start and again on SIGHUP.

A file lets the password be rotated without a restart (and so without
stopping a job), and keeps it out of the process environment and out of
Supervisor's program file. A password file others may read defeats that:
one readable by everybody is refused; one readable by its group is used
with a warning (a group of trusted readers can be deliberate).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("leampoll")


class PasswordFileError(Exception):
    """The password file cannot be used; the message names the file and why."""


def read_password_file(path: Path) -> str:
    """The password: the file's first line without its line end."""
    try:
        # O_NONBLOCK: a FIFO in its place is refused below instead of hanging here.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise PasswordFileError(f"password file {path}: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise PasswordFileError(f"password file {path}: not a regular file")
    with os.fdopen(fd, "rb") as f:
        if mode & stat.S_IROTH:
            raise PasswordFileError(
                f"password file {path} is readable by everybody "
                f"(mode {stat.S_IMODE(mode):04o}); chmod 0400 it"
            )
        data = f.read(64 * 1024)
    if mode & stat.S_IRGRP:
        log.warning(
            "password file %s is readable by its group (mode %04o); 0400 is safer",
            path,
            stat.S_IMODE(mode),
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PasswordFileError(f"password file {path}: not UTF-8 text") from None
    lines = text.splitlines()
    password = lines[0] if lines else ""
    if not password:
        raise PasswordFileError(f"password file {path} is empty")
    return password

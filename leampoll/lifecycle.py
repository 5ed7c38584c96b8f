"""Signals, in one place, and the one wait primitive everything sleeps in.

SIGTERM/SIGINT ask for a cold stop (stop the job, hand it back, exit);
SIGUSR1 asks for a warm stop (finish the job, pop nothing more, exit 0);
SIGHUP asks for the password file to be read again, which the worker does
between cycles, never during a request.
Every wait - the idle sleep, a backoff, a running job - goes through
`Lifecycle.wait`, which wakes at once on any signal or child exit: Python's
handlers only set flags, and `signal.set_wakeup_fd` turns each signal into a
byte on a pipe that `select` watches. So a stop never waits out a sleep, and a
finished job is noticed without polling.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("leampoll")

WARM = "warm"
COLD = "cold"
# What signal.signal takes and hands back (the previous handler, restored on uninstall).
Handler = Callable[[int, FrameType | None], Any] | int | None


class Lifecycle:
    """The poller's stop state, set only by signal handlers."""

    def __init__(self) -> None:
        self.stop: str | None = None
        self.reload = False  # SIGHUP: read the password file again
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous: dict[int, Handler] = {}

    def install(self) -> None:
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for sig, handler in (
            (signal.SIGTERM, self._cold),
            (signal.SIGINT, self._cold),
            (signal.SIGUSR1, self._warm),
            (signal.SIGHUP, self._hup),
            (signal.SIGCHLD, self._child),  # only to wake wait(); Popen reaps
        ):
            self._previous[sig] = signal.signal(sig, handler)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(-1)
        os.close(self._read_fd)
        os.close(self._write_fd)

    def _cold(self, signum: int, _frame: object) -> None:
        if self.stop != COLD:
            self.stop = COLD
            log.info(
                "%s: stopping (a running job is stopped and handed back)",
                signal.Signals(signum).name,
            )

    def _warm(self, _signum: int, _frame: object) -> None:
        if self.stop is None:
            self.stop = WARM
            log.info("SIGUSR1: draining (the running job finishes, nothing more is popped)")

    def _hup(self, _signum: int, _frame: object) -> None:
        self.reload = True
        log.info("SIGHUP: reloading credentials before the next portal request")

    def _child(self, _signum: int, _frame: object) -> None:
        pass

    def wait(self, seconds: float | None) -> None:
        """Sleep up to `seconds` (None: until woken), waking on any signal."""
        if seconds is not None and seconds <= 0:
            return
        ready, _, _ = select.select([self._read_fd], [], [], seconds)
        if ready:
            try:
                while os.read(self._read_fd, 512):
                    pass
            except BlockingIOError:
                pass

    def sleep(self, seconds: float) -> bool:
        """Sleep the whole time unless a stop or a reload is asked for; True if a stop was.

        A reload ends the sleep too: new credentials are tried at once, also
        by a poller backing off after the old ones were refused.
        """
        end = time.monotonic() + seconds
        while self.stop is None and not self.reload:
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.wait(left)
        return self.stop is not None

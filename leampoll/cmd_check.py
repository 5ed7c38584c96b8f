"""`leampoll --check`: is this poller ready to run? Pops nothing.

One line per check, `ok`, `warn`, `unknown` or `FAIL`, so an operator (or
Ansible) can read what is wrong at a glance; exit 1 when anything failed.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

import requests

from leampoll import __version__, guards
from leampoll.auth import CHECK_PATH, Verdict, classify
from leampoll.config import Config
from leampoll.portal import PortalClient
from leampoll.security import tls_problem


def run(config: Config, out: TextIO = sys.stdout) -> int:
    failed = False

    def line(status: str, name: str, detail: str) -> None:
        nonlocal failed
        failed = failed or status == "FAIL"
        print(f"{status:7} {name:8} {detail}", file=out, flush=True)

    line("ok", "config", f"leampoll {__version__}, site {config.site}, pop {config.pop_url}")
    workdir = config.workdir
    if not workdir.is_dir():
        line("FAIL", "workdir", f"{workdir} does not exist")
    elif not os.access(workdir, os.W_OK | os.X_OK):
        line("FAIL", "workdir", f"{workdir} is not writable by uid {os.getuid()}")
    else:
        line("ok", "workdir", f"{workdir} is writable")
        for reading in guards.check(config):
            line("FAIL" if reading.holds else "ok", reading.guard, str(reading))

    client = PortalClient(
        config.site,
        config.pop_url,
        config.user,
        config.password,
        config.connect_timeout,
        min(config.read_timeout, 30),
        config.trusted,
        config.ca_file,
        config.allow_insecure_http,
    )
    try:
        answer = client.probe(config.site)
        if answer.status >= 500:
            line("FAIL", "portal", f"{config.site} answered HTTP {answer.status}")
        else:
            line("ok", "portal", f"{config.site} reachable (HTTP {answer.status})")
            result = classify(client.probe(config.site + CHECK_PATH))
            status = {Verdict.OK: "ok", Verdict.REJECTED: "FAIL"}.get(result.verdict, "unknown")
            word = {Verdict.OK: "accepted", Verdict.REJECTED: "rejected"}.get(
                result.verdict, "cannot be verified"
            )
            line(
                status,
                "login",
                f"credentials of {config.user!r} {word} by {config.site} ({result.detail})",
            )
    except requests.exceptions.SSLError as exc:
        line("FAIL", "tls", f"{config.site}: {tls_problem(exc)}")
    except requests.RequestException as exc:
        line("FAIL", "portal", f"{config.site} unreachable: {exc.__class__.__name__}")
    finally:
        client.close()
    return 1 if failed else 0

"""`leampoll --check`: is this poller ready to run? Pops nothing.

One line per check, `ok`, `warn` or `FAIL`, so an operator (or Ansible) can
read what is wrong at a glance; exit 1 when anything failed.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

import requests

from leampoll import __version__, guards
from leampoll.config import Config
from leampoll.portal import PortalClient
from leampoll.security import tls_problem

CHECK_PATH = "/portal_membership/isAnonymousUser"  # a public Plone method, no side effects


def run(config: Config, out: TextIO = sys.stdout) -> int:
    failed = False

    def line(status: str, name: str, detail: str) -> None:
        nonlocal failed
        failed = failed or status == "FAIL"
        print(f"{status:4} {name:8} {detail}", file=out, flush=True)

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

    client = PortalClient(config.site, config.pop_url, config.user, config.password,
                          config.connect_timeout, min(config.read_timeout, 30),
                          config.ca_file, config.allow_insecure_http)
    try:
        status, _ = client.get_text(config.site)
        if status >= 500:
            line("FAIL", "portal", f"{config.site} answered HTTP {status}")
        else:
            line("ok", "portal", f"{config.site} reachable (HTTP {status})")
            _credentials(client, config, line)
    except requests.exceptions.SSLError as exc:
        line("FAIL", "tls", f"{config.site}: {tls_problem(exc)}")
    except requests.RequestException as exc:
        line("FAIL", "portal", f"{config.site} unreachable: {exc.__class__.__name__}")
    finally:
        client.close()
    return 1 if failed else 0


def _credentials(client: PortalClient, config: Config, line) -> None:
    status, text = client.get_text(config.site + CHECK_PATH)
    answer = text.strip()
    if status == 200 and answer == "False":
        line("ok", "login", f"credentials of {config.user!r} accepted")
    elif status in (401, 403) or (status == 200 and answer == "True"):
        line("FAIL", "login", f"credentials of {config.user!r} rejected")
    else:
        line("warn", "login", f"cannot verify credentials (HTTP {status} on {CHECK_PATH})")

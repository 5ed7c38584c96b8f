"""Loading: the settings from flags, environment and file, checked across options.

What each option means is leampoll.options'; the settings' shape and defaults
are leampoll.config's. Everything unusable is a ConfigError with one line.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path

from leampoll import security, sources
from leampoll.config import Config, ConfigError
from leampoll.credentials import PasswordFileError, read_password_file
from leampoll.options import build_parser
from leampoll.origins import TrustedOrigins


def config_sources(environ: Mapping[str, str]) -> sources.Sources:
    """Where settings come from besides flags: the environment of the process, and a file."""
    return sources.Sources(
        environ=environ,
        # The names the old poller and Supervisor's program files use.
        aliases={
            "PORTAL_USER": "user",
            "PORTAL_PASSWORD": "password",
            "PORTAL_PASSWORD_FILE": "password_file",
        },
        env_ignore=frozenset({"LEAMPOLL_PROJECTS_FILE"}),  # leampoll status reads it
        # A config file is copied, mailed and checked in more easily than an
        # environment: the password itself is never taken from one.
        file_refused={
            "password": "a config file may not hold the password; "
            "use password_file, or PORTAL_PASSWORD in the environment"
        },
    )


def check_speed(speed: float, once: bool) -> None:
    """A poller that keeps polling waits between polls; --once polls one time and may not.

    The roles never give --once: their validation applies this with once false.
    """
    if speed <= 0 and not once:
        raise ConfigError("--speed must be greater than 0")


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Parse and validate; raise ConfigError with one clear line when unusable."""
    env = os.environ if environ is None else environ
    args = sources.parse(build_parser(), argv, config_sources(env))
    if not args.site:
        raise ConfigError("no portal URL given (leampoll [options] SITE_URL)")
    parts = urllib.parse.urlsplit(args.site)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"portal URL must be http(s)://host/...: {args.site!r}")
    if parts.username or parts.password:
        raise ConfigError("put credentials in PORTAL_USER/PORTAL_PASSWORD, not in the URL")
    insecure = security.insecure_http(args.site, args.allow_insecure_http)
    if insecure:
        raise ConfigError(f"portal URL {args.site}: {insecure}")
    if args.ca_file is not None and not (
        args.ca_file.is_file() and os.access(args.ca_file, os.R_OK)
    ):
        raise ConfigError(f"{security.CA_OPTION} {args.ca_file}: not a readable file")
    user = args.user or ""
    password = args.password or ""
    if password and args.password_file:
        raise ConfigError(
            "both a password and a password file are given; "
            "set PORTAL_PASSWORD or PORTAL_PASSWORD_FILE, not both"
        )
    if args.password_file:
        try:
            password = read_password_file(args.password_file)
        except PasswordFileError as exc:
            raise ConfigError(str(exc)) from None
    if not user or not password:
        raise ConfigError(
            "portal credentials missing: set PORTAL_USER and PORTAL_PASSWORD "
            "(or PORTAL_PASSWORD_FILE)"
        )
    workdir = (args.workdir or Path.cwd()).absolute()
    check_speed(args.speed, args.once)
    try:
        TrustedOrigins.build(args.site, args.trusted_origin)
    except ValueError as exc:
        raise ConfigError(f"--trusted-origin: {exc}") from None
    for origin in args.trusted_origin:
        # A trusted origin receives the password too: the same http rule as the site.
        insecure = security.insecure_http(origin.strip(), args.allow_insecure_http)
        if insecure:
            raise ConfigError(f"--trusted-origin {origin}: {insecure}")
    return Config(
        site=args.site.rstrip("/"),
        user=user,
        password=password,
        workdir=workdir,
        popq=args.popq,
        speed=args.speed,
        idle=args.idle,
        preserve=args.preserve,
        debug=args.debug,
        min_free_disk=args.min_free_disk,
        min_free_mem=args.min_free_mem,
        min_free_inodes=args.min_free_inodes,
        job_timeout=args.job_timeout,
        checkout_timeout=args.checkout_timeout,
        max_backoff=max(args.max_backoff, 0.1),
        grace=args.grace,
        keep_failed=args.keep_failed,
        keep_logs=args.keep_logs,
        read_timeout=args.timeout,
        once=args.once,
        check=args.check,
        metrics_file=args.metrics_file,
        project=args.project or workdir.name,
        auth_check_interval=args.auth_check_interval,
        keep_failed_running=args.keep_failed_running,
        trusted_origins=tuple(args.trusted_origin),
        password_file=args.password_file.absolute() if args.password_file else None,
        allow_insecure_http=args.allow_insecure_http,
        ca_file=args.ca_file.absolute() if args.ca_file else None,
        memory_max=args.memory_max,
        tasks_max=args.tasks_max,
        cpu_weight=args.cpu_weight,
        job_cgroups=args.job_cgroups == "auto",
        guard_mode=args.guard_mode,
        learn_runs=args.learn_runs,
        learn_margin=args.learn_margin,
        need_disk=args.need_disk,
        need_memory=args.need_memory,
        need_inodes=args.need_inodes,
        ledger=args.ledger.absolute() if args.ledger else None,
    )

"""python -m testing.real_portal build|start|stop|reset|queue|status|clean

A portal started here keeps running after the command returns (its pid is kept in its
instance home); `stop` and `clean` end it by that pid.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable

from testing.real_portal import build as builder
from testing.real_portal.portal import RealPortal, running


def _portal(b: builder.Build, args: argparse.Namespace) -> RealPortal:
    live = running(b)
    if args.port:
        live = [p for p in live if p.port == args.port and p.address == args.address]
        return live[0] if live else RealPortal(b, args.address, args.port)
    if len(live) == 1:
        return live[0]
    raise SystemExit(f"{len(live)} portals run: name one with --port")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testing.real_portal", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build (or find) the chroot for today's inputs; print its path")
    for name, text in (
        ("start", "start a portal (a free port unless --port); print its site URL"),
        ("stop", "stop a running portal (the only one, or --port)"),
        ("reset", "restore a stopped portal's fresh database"),
        ("queue", "queue jobs on a running portal"),
        ("status", "every job's runstatus on a running portal (JSON)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--address", default="127.0.0.1")
        p.add_argument("--port", type=int, default=0)
        if name == "queue":
            p.add_argument("ids", nargs="+", help="job ids")
        if name == "reset":
            p.add_argument(
                "--unset", action="store_true", help="scenario_repo/scenario_cmd unset (500)"
            )
    clean = sub.add_parser("clean", help="stop every portal, remove instance homes")
    clean.add_argument(
        "--builds", action="store_true", help="also remove the builds (the wheelhouse stays)"
    )
    args = parser.parse_args(argv)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    if args.cmd == "build":
        print(builder.build(log).dir)
        return 0
    if args.cmd == "clean":
        return clean_all(args.builds, log)
    b = builder.find(log)
    if b is None:
        raise SystemExit("not built: run `python -m testing.real_portal build` first")
    portal = _portal(b, args)
    if args.cmd == "start":
        portal.start()
        print(portal.url)
    elif args.cmd == "stop":
        portal.stop()
    elif args.cmd == "reset":
        portal.reset(settings=not args.unset)
    elif args.cmd == "queue":
        for job in portal.queue(*args.ids):
            print(job.url)
    elif args.cmd == "status":
        print(json.dumps(portal.status(), indent=1))
    return 0


def clean_all(builds: bool, log: Callable[[str], None]) -> int:
    """Every portal of every build stopped, instance homes and partial builds removed."""
    cache = builder.cache_dir()
    if not cache.is_dir():
        return 0
    for d in sorted(cache.iterdir()):
        if not (d / "root").is_dir():
            continue
        b = builder.Build(d)
        for p in running(b):
            log(f"stopping {p.url}")
            p.stop()
        if b.runs.is_dir():
            for home in b.runs.iterdir():
                shutil.rmtree(home)
        if d.name.endswith(".partial") or builds:
            with builder.build_lock():
                log(f"removing {d}")
                builder.remove_tree(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `leampoll` command: parse, set up logging, hand over to the worker."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from leampoll.config import ConfigError
from leampoll.loading import load


def setup_logging(debug: bool) -> None:
    """One line per event on stderr (Supervisor keeps and rotates it)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        logging.getLogger("urllib3").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["status"]:
        from leampoll import cmd_status

        return cmd_status.main(args[1:])
    if args[:1] == ["retire"]:
        from leampoll import cmd_retire

        setup_logging("--debug" in args)
        return cmd_retire.main([a for a in args[1:] if a != "--debug"])
    setup_logging(False)  # a password file's warning is logged while loading
    try:
        config = load(args)
    except ConfigError as exc:
        print(f"leampoll: {exc}", file=sys.stderr)
        return 1
    setup_logging(config.debug)
    if config.check:
        from leampoll import cmd_check

        return cmd_check.run(config)
    from leampoll.worker import Worker

    try:
        return Worker(config).run()
    except OSError as exc:
        logging.getLogger("leampoll").error("cannot run: %s", exc)
        return 1

"""man/leampoll.1: built from the poller's parser by `make man`, and kept in step with it."""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

from leampoll.options import build_parser

ROOT = Path(__file__).resolve().parent.parent
MANPAGE = ROOT / "man" / "leampoll.1"


def text() -> str:
    """The page as words: roff's escaped dashes and font changes taken out."""
    page = MANPAGE.read_text()
    return re.sub(r"\\f[BIRP]|\\[,/]", "", page).replace("\\-", "-")


def test_manpage_mentions_every_option_of_the_parser():
    page = text()
    options = [
        o for a in build_parser()._actions if a.help != argparse.SUPPRESS for o in a.option_strings
    ]  # hidden legacy flags stay undocumented
    missing = [o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", page)]
    assert options and not missing, f"not in {MANPAGE} (run make man): {missing}"


def test_manpage_documents_signals_exit_codes_and_sources():
    page = text()
    for needle in (
        "TERM, INT",
        "USR1",
        "HUP",
        "exit status",
        "LEAMPOLL_<NAME>",
        "PORTAL_PASSWORD_FILE",
        "leampoll status",
    ):
        assert needle in page


def test_committed_manpage_is_what_make_man_builds(tmp_path):
    fresh = tmp_path / "leampoll.1"
    subprocess.run(
        ["make", "-s", "-o", ".venv/.installed", "man", f"MAN={fresh}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert fresh.read_text() == MANPAGE.read_text(), "man/leampoll.1 is stale: run make man"

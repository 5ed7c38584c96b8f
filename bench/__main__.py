"""`python -m bench [SUITE ...]`: run the benchmarks, print the tables, write BENCHMARKS.md."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench import PLANNED, discover
from bench.report import ROOT, render_table, write_markdown


def main(argv: list[str] | None = None) -> int:
    suites = discover()
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of this project, each against a baseline measured in the "
        "same run. Without a suite name every available suite runs.",
    )
    parser.add_argument(
        "suites", nargs="*", metavar="SUITE", help="which suites to run: " + ", ".join(suites)
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "BENCHMARKS.md",
        help="where the results go (default BENCHMARKS.md in the project)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer samples, for trying the benchmarks out; prints the tables but writes no file",
    )
    args = parser.parse_args(argv)
    for name in args.suites:
        if name not in suites:
            why = " (planned, not written yet)" if name in PLANNED else ""
            parser.error(f"unknown suite {name!r}{why}; available: {', '.join(suites)}")
    chosen = args.suites or list(suites)

    sections = []
    for name in chosen:
        started = time.monotonic()
        print(f"== {suites[name].title} (python -m bench {name})", file=sys.stderr, flush=True)
        section = suites[name].run(args)
        print(f"== {name}: done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        sections.append(section)
    for section in sections:
        print(f"\n{section.title}\n{section.header}\n")
        print(render_table(section.rows, markdown=False, subjects=section.subjects))
    if args.quick:
        print("\n(--quick: fewer samples than the goals ask for; nothing written)")
        return 0
    write_markdown(args.out, sections, suites)
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

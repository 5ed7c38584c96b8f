"""Tables and BENCHMARKS.md: rendering, the machine description, keeping other sections."""

from __future__ import annotations

import datetime
import os
import platform
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench import PLANNED, Row, Section, Suite

ROOT = Path(__file__).resolve().parent.parent

_BEGIN = "<!-- bench:{} -->"
_END = "<!-- /bench:{} -->"
_SECTION = re.compile(r"<!-- bench:(\S+) -->\n(.*?)<!-- /bench:\1 -->\n?", re.DOTALL)


def machine() -> str:
    """CPU model, cores, kernel and Python, as one line for a section header."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0))
    return (
        f"{model}, {cores} cores ({os.cpu_count()} online), Linux {platform.release()}, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _met(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "**no**")


def render_table(
    rows: Sequence[Row], markdown: bool = True, subjects: tuple[str, str] = ("leampoll", "baseline")
) -> str:
    columns = ("figure", *subjects, "ratio", "goal", "met?")
    cells = [[r.figure, r.ours, r.baseline, r.ratio, r.goal, _met(r.met)] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    plain = [list(columns)] + [[c.replace("**", "") for c in row] for row in cells]
    widths = [max(len(row[i]) for row in plain) for i in range(len(columns))]
    out = []
    for n, row in enumerate(plain):
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def section_markdown(section: Section) -> str:
    parts = [f"## {section.title}", ""]
    if section.header:
        parts += [section.header, ""]
    if section.rows:
        parts += [render_table(section.rows, subjects=section.subjects), ""]
    if section.notes:
        parts += [section.notes.strip(), ""]
    return "\n".join(parts)


def write_markdown(path: Path, sections: Sequence[Section], suites: Mapping[str, Suite]) -> None:
    """Write BENCHMARKS.md: the new sections, the others kept from the file, placeholders."""
    kept: dict[str, str] = {}
    if path.exists():
        kept = {m.group(1): m.group(2) for m in _SECTION.finditer(path.read_text())}
    for s in sections:
        kept[s.name] = section_markdown(s)
    order = list(suites) + [n for n in PLANNED if n not in suites]
    order += [n for n in kept if n not in order]
    body = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`; one suite: `python -m bench NAME`). "
        "Every figure is measured side by side with its baseline in the same run, on the "
        "machine named in its section; nothing here is copied from an earlier run. "
        "Ratios are baseline / leampoll (above 1: leampoll is faster or smaller).",
        "",
    ]
    for name in order:
        if name in kept:
            text = kept[name]
        elif name in PLANNED:
            title, note = PLANNED[name]
            text = section_markdown(
                Section(name, f"{title} (`python -m bench {name}`)", notes=note)
            )
        else:
            text = section_markdown(Section(name, suites[name].title, notes="Not run yet."))
        body += [_BEGIN.format(name), text.rstrip("\n"), _END.format(name), ""]
    path.write_text("\n".join(body).rstrip("\n") + "\n")

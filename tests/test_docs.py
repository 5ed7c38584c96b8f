"""README.md and docs/: every relative link points at a file, and at a heading that exists.

The reference lives in docs/ behind README's map; a page moved or a heading
renamed must not leave a dead link behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class Link:
    """One relative link of a Markdown file, with its line for the message."""

    source: Path
    line: int
    target: str


def prose(text: str) -> list[tuple[int, str]]:
    """Numbered lines outside code fences (a link in a code block is not a link)."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, re.sub(r"`[^`]*`", "", line)))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (repeated headings get -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    text = path.read_text()
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not match:
            continue
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[Link]:
    """The relative links of path (URLs with a scheme and mail addresses are not checked)."""
    return [
        Link(path, number, target)
        for number, line in prose(path.read_text())
        for target in LINK.findall(line)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)
    ]


def shown(path: Path) -> str:
    """path as a message names it: relative to the project where it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def dead(link: Link) -> str | None:
    """Why link is dead, or None."""
    name, _, anchor = link.target.partition("#")
    target = (link.source.parent / name).resolve() if name else link.source
    if not target.exists():
        return f"no file {shown(target)}"
    if anchor and target.suffix == ".md" and anchor not in anchors(target):
        return f"no heading #{anchor} in {shown(target)}"
    return None


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_dead_links(page: Path) -> None:
    problems = [
        f"{shown(link.source)}:{link.line}: ({link.target}) {why}"
        for link in links(page)
        if (why := dead(link))
    ]
    assert not problems, "\n".join(problems)


def test_every_docs_page_is_linked_from_readme() -> None:
    targets = {
        (ROOT / link.target.partition("#")[0]).resolve() for link in links(ROOT / "README.md")
    }
    unlinked = [p.name for p in pages()[1:] if p.resolve() not in targets]
    assert not unlinked, f"docs pages missing from README's map: {unlinked}"


def test_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines; the reference belongs in docs/"
    first_block = "\n".join(lines[: lines.index("## Layout")])
    assert "make demo" in first_block and "make test" in first_block


def test_a_dead_link_is_named(tmp_path: Path) -> None:
    """The checker itself: a missing file and a missing heading are both reported."""
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## A `code` heading: yes\n")
    page.write_text(
        "[ok](other.md#a-code-heading-yes) [gone](missing.md) [bad](other.md#nope)\n"
        "```\n[in code](nowhere.md)\n```\n[web](https://example.org/x)\n"
    )
    found = {link.target: dead(link) for link in links(page)}
    assert set(found) == {"other.md#a-code-heading-yes", "missing.md", "other.md#nope"}
    assert found["other.md#a-code-heading-yes"] is None
    assert found["missing.md"] == f"no file {tmp_path / 'missing.md'}"
    assert found["other.md#nope"] == f"no heading #nope in {tmp_path / 'other.md'}"

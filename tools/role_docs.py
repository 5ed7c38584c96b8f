"""Role documentation written from each role's meta/argument_specs.yml.

The argument specs are the one description of a role's variables; from them
this script writes the commented defaults/main.yml and the part of the
role's README.md between the role_docs markers (the rest of the README is
prose, kept as it is). `check` fails, naming each file, when one is not what
`write` would make of the specs: `make lint` runs it.

    python tools/role_docs.py write
    python tools/role_docs.py check
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- role_docs: begin; written from meta/argument_specs.yml by tools/role_docs.py -->"
END = "<!-- role_docs: end -->"
WIDTH = 78  # comment lines of defaults/main.yml
YAML_MAX = 120  # yamllint's line-length
HEADER = """\
---
# Written by tools/role_docs.py from meta/argument_specs.yml, where each
# variable is described: change it there, then run
# `python tools/role_docs.py write`.
"""


@dataclass
class Role:
    """A role and its argument specs, by entry point (`main`, `drain_all`, ...)."""

    path: Path
    specs: dict

    @property
    def name(self) -> str:
        return self.path.name

    def defaults_entries(self) -> list[str]:
        """Entry points whose options are the role's variables.

        `main` where there is one: other entry points (`tasks_from:`) take
        inputs that a playbook sets, not role defaults. A role without a
        `main` (the shared variables) has only variables.
        """
        return ["main"] if "main" in self.specs else list(self.specs)


def load_roles(root: Path) -> list[Role]:
    roles = []
    for spec_file in sorted(root.glob("roles/*/meta/argument_specs.yml")):
        data = yaml.safe_load(spec_file.read_text()) or {}
        roles.append(Role(spec_file.parent.parent, data.get("argument_specs") or {}))
    return roles


# -- Ansible's documentation markup: C(code), I(option), B(bold), U(url), ... ------


MARKUP = re.compile(r"\b([BCILMORUV])\(")


def _markup(text: str, plain: bool) -> str:
    """X(...) markup (parentheses inside it balanced) as Markdown, or as plain text."""
    out, i = [], 0
    while m := MARKUP.search(text, i):
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            j += 1
        inner, kind = text[m.end() : j - 1 if depth == 0 else j], m.group(1)
        if kind == "L" and "," in inner:
            label, url = (part.strip() for part in inner.rsplit(",", 1))
            out.append(label if plain else f"[{label}]({url})")
        elif plain or kind in "LU":
            out.append(inner)
        elif kind == "B":
            out.append(f"**{inner}**")
        else:
            out.append(f"`{inner}`")
        i = j
    out.append(text[i:])
    return "".join(out)


def to_markdown(text: str) -> str:
    return _markup(text, plain=False)


def to_plain(text: str) -> str:
    return _markup(text, plain=True)


def paragraphs(option: dict) -> list[str]:
    desc = option.get("description") or []
    items = [desc] if isinstance(desc, str) else list(desc)
    for item in items:
        if not isinstance(item, str):
            # A plain YAML scalar with ": " in it is a mapping: quote the text.
            raise SystemExit(f"a description is not text: {item!r}")
    return [" ".join(item.split()) for item in items]


# -- defaults/main.yml ----------------------------------------------------------------


def yaml_scalar(value) -> str:
    """A value as YAML on one line: plain where YAML reads it back as the same string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(yaml_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_scalar(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9_/.][A-Za-z0-9_/.+-]*", text) and yaml.safe_load(text) == text:
        return text
    return json.dumps(text)


def default_line(name: str, value) -> str:
    """`name: value`; a long string folded (`>-`) on lines that yamllint accepts."""
    line = f"{name}: {yaml_scalar(value)}"
    foldable = isinstance(value, str) and "  " not in value and value == value.strip()
    if len(line) <= YAML_MAX or not foldable:
        return line
    lines = textwrap.wrap(value, 100, break_long_words=False, break_on_hyphens=False)
    return f"{name}: >-\n" + "\n".join("  " + part for part in lines)


def comment(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(
        text,
        WIDTH,
        initial_indent=f"{indent}# ",
        subsequent_indent=f"{indent}# ",
        break_on_hyphens=False,
    )


def defaults_text(role: Role) -> str:
    blocks = [HEADER]
    for entry in role.defaults_entries():
        for name, option in (role.specs[entry].get("options") or {}).items():
            if "default" not in option:
                continue
            lines = []
            for para in paragraphs(option):
                lines += comment(to_plain(para))
            if option.get("choices"):
                lines += comment("One of: " + ", ".join(map(str, option["choices"])) + ".")
            suboptions = option.get("options") or {}
            if suboptions:
                keys = [
                    k + (" (required)" if o.get("required") else "") for k, o in suboptions.items()
                ]
                lines += comment(
                    f"Keys of an item ({role.name} role's README): " + ", ".join(keys) + "."
                )
            lines.append(default_line(name, option["default"]))
            blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


# -- README.md ------------------------------------------------------------------------


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def default_cell(option: dict) -> str:
    if "default" not in option:
        return ""
    return cell(f"`{yaml_scalar(option['default'])}`")  # as it is written in YAML


def type_cell(option: dict) -> str:
    kind = option.get("type", "str")
    if option.get("elements"):
        kind += f" of {option['elements']}"
    return kind


def describe(option: dict) -> str:
    text = " ".join(to_markdown(p) for p in paragraphs(option))
    if option.get("choices"):
        text += " One of " + ", ".join(f"`{c}`" for c in option["choices"]) + "."
    if option.get("required"):
        text += " Required."
    for cond in option.get("required_if") or []:
        key, value, needed = cond[0], cond[1], cond[2]
        text += f" With `{key}: {value}`: " + ", ".join(f"`{n}`" for n in needed) + " required."
    return cell(text)


def option_table(options: dict, first: str) -> list[str]:
    rows = [f"| {first} | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for name, option in options.items():
        cells = [f"`{name}`", type_cell(option), default_cell(option), describe(option)]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def readme_block(role: Role) -> str:
    lines = [BEGIN]
    defaults = role.defaults_entries()
    for entry, spec in role.specs.items():
        title = to_markdown(spec.get("short_description", "").rstrip("."))
        lines += ["", f"### Entry point `{entry}`" + (f": {title}" if title else ""), ""]
        if entry in defaults:
            lines += ["Defaults in `defaults/main.yml`.", ""]
        options = spec.get("options") or {}
        if not options:
            lines.append("No variables.")
            continue
        lines += option_table(options, "Variable")
        for name, option in options.items():
            if option.get("options"):
                lines += ["", f"Keys of an item of `{name}`:", ""]
                lines += option_table(option["options"], "Key")
    lines += ["", END]
    return "\n".join(lines)


def readme_text(role: Role, current: str) -> str:
    start, end = current.find(BEGIN), current.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{role.path / 'README.md'}: no role_docs markers ({BEGIN!r} ... {END!r})")
    return current[:start] + readme_block(role) + current[end + len(END) :]


# -- write / check --------------------------------------------------------------------


def expected_files(root: Path) -> dict[Path, str]:
    files = {}
    for role in load_roles(root):
        files[role.path / "defaults" / "main.yml"] = defaults_text(role)
        readme = role.path / "README.md"
        files[readme] = readme_text(role, readme.read_text() if readme.exists() else "")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["write", "check"])
    parser.add_argument("--root", type=Path, default=ROOT, help="the tree (default: this one)")
    args = parser.parse_args(argv)
    stale = []
    for path, text in expected_files(args.root).items():
        if path.exists() and path.read_text() == text:
            continue
        if args.mode == "write":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(args.root)}")
        else:
            stale.append(path.relative_to(args.root))
    for path in stale:
        print(
            f"{path}: not as meta/argument_specs.yml describes; run "
            "`python tools/role_docs.py write`",
            file=sys.stderr,
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())

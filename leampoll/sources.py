"""Configuration sources: flags > LEAMPOLL_* environment > TOML file > defaults.

Generic over the parser (a `Parser`: an ArgumentParser that records its
options through argparse's public methods): every option (and the optional
SITE_URL) gets an environment variable LEAMPOLL_<DEST> and a file key <dest>
(dashes or underscores), values converted by the same type function the flag
uses.
So an option added to the parser is configurable everywhere without code
here. Mistakes in the environment or the file are usage errors (exit 2, like
argparse's own) naming the variable, or the file and the key.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENV_PREFIX = "LEAMPOLL_"
# A switch's words: the poller's environment and file take these, nothing else.
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off", ""})
# Ansible's bool (a role variable, `| bool`, an argument spec's bool) reads y and t as true too.
ANSIBLE_TRUE = TRUE | {"y", "t"}
# The actions whose setting is a boolean, a constant, a count or a list.
_BOOLEAN = ("store_true", "store_false", argparse.BooleanOptionalAction)
_NOT_SETTINGS = ("help", "version", "append_const", "parsers")


@dataclass(frozen=True)
class Option:
    """One option as it was added: its action, the kind asked for, its default, if required."""

    action: argparse.Action
    kind: Any  # the `action=` given to add_argument: "store", "append", a class...
    default: Any
    required: bool


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that knows its options and leaves defaults to `parse`.

    argparse keeps its actions, defaults and groups private; this records
    them as they are added (through the public add_argument and
    add_mutually_exclusive_group), and gives argparse no default and no
    requirement, so that parse_args returns what the command line names and
    nothing else. `parse` then lays the environment, the file and the
    defaults under it, and checks what is required itself.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.options: dict[str, Option] = {}
        self.exclusive: list[list[str]] = []
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        return self._record(super().add_argument, args, kwargs)

    def add_mutually_exclusive_group(self, **kwargs: Any) -> Any:
        group = super().add_mutually_exclusive_group(**kwargs)
        return _Exclusive(self, group)

    def _record(
        self, add: Callable[..., argparse.Action], args: tuple, kwargs: dict[str, Any]
    ) -> argparse.Action:
        required = bool(kwargs.pop("required", False))
        action = add(*args, **kwargs)
        if action.dest != argparse.SUPPRESS:  # --help, --version
            self.options[action.dest] = Option(
                action, kwargs.get("action", "store"), action.default, required
            )
            action.default = argparse.SUPPRESS  # Action's public attribute: parse fills it
        return action


class _Exclusive:
    """A mutually exclusive group of a Parser: its options are recorded as a group too."""

    def __init__(self, parser: Parser, group: Any) -> None:
        self._parser, self._group = parser, group
        self._dests: list[str] = []
        parser.exclusive.append(self._dests)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = self._parser._record(self._group.add_argument, args, kwargs)
        self._dests.append(action.dest)
        return action


@dataclass
class Sources:
    """What the parser's settings may come from besides the command line.

    `aliases` are other environment names of an option (PORTAL_USER for
    --user); `env_ignore` are LEAMPOLL_* variables that belong to something
    else; `file_refused` are file keys refused with the reason given.
    """

    environ: Mapping[str, str]
    config_dest: str = "config"
    aliases: Mapping[str, str] = field(default_factory=dict)
    env_ignore: frozenset[str] = frozenset()
    file_refused: Mapping[str, str] = field(default_factory=dict)


def env_name(action: argparse.Action) -> str:
    """The environment variable of an option: --min-free-disk -> LEAMPOLL_MIN_FREE_DISK."""
    return ENV_PREFIX + action.dest.upper()


def configurable(parser: Parser) -> dict[str, Option]:
    """dest -> option of every option that may come from the environment or a file."""
    found = {}
    for dest, option in parser.options.items():
        action = option.action
        if action.help == argparse.SUPPRESS or option.kind in _NOT_SETTINGS:
            continue  # hidden legacy flags, and what sets nothing
        if not action.option_strings and action.nargs not in ("?", "*"):
            continue  # a required positional belongs on the command line
        found[dest] = option
    return found


def parse(parser: Parser, argv: Sequence[str] | None, sources: Sources) -> argparse.Namespace:
    """Parse argv, filling what it leaves out from the environment, then the file."""
    actions = configurable(parser)
    defaults = {
        d: o.default for d, o in parser.options.items() if o.default is not argparse.SUPPRESS
    }
    required = [o.action for o in actions.values() if o.required]
    # The command line alone (the Parser gives argparse no defaults), so what it names wins.
    given = vars(parser.parse_args(argv))

    layered: dict[str, Any] = {}
    origin: dict[str, str] = {}
    config_action = actions.get(sources.config_dest)
    env_values = _from_environ(parser, actions, sources)
    path = given.get(sources.config_dest) or env_values.get(sources.config_dest, (None,))[0]
    if config_action is not None and path:
        for dest, (value, where) in _from_file(parser, actions, Path(path), sources).items():
            layered[dest], origin[dest] = value, where
    for dest, (value, where) in env_values.items():
        layered[dest], origin[dest] = value, where

    _exclusive(parser, given, layered, origin, defaults)
    missing = [a for a in required if a.dest not in given and a.dest not in layered]
    if missing:
        parser.error(
            "the following arguments are required: "
            + ", ".join("/".join(a.option_strings) for a in missing)
        )
    return argparse.Namespace(**{**defaults, **layered, **given})


def _exclusive(parser: Parser, given: dict, layered: dict, origin: dict, defaults: dict) -> None:
    """Options of a mutually exclusive group: a flag overrides the group's other settings."""
    for dests in parser.exclusive:
        if any(d in given for d in dests):
            for d in dests:
                if d not in given:
                    layered.pop(d, None)
            continue
        set_ = [d for d in dests if d in layered and layered[d] != defaults.get(d)]
        if len(set_) > 1:
            parser.error(" and ".join(origin[d] for d in set_) + " cannot be used together")


def _from_environ(
    parser: Parser, options: dict[str, Option], sources: Sources
) -> dict[str, tuple[Any, str]]:
    by_name = {env_name(o.action): o for o in options.values()}
    values: dict[str, tuple[Any, str]] = {}
    for name in sorted(sources.environ):
        if not name.startswith(ENV_PREFIX) or name in sources.env_ignore:
            continue
        option = by_name.get(name)
        if option is None:
            hint = difflib.get_close_matches(name, by_name, n=1)
            parser.error(
                f"environment variable {name} matches no option"
                + (f" (did you mean {hint[0]}?)" if hint else "")
            )
        values[option.action.dest] = (_convert(parser, option, sources.environ[name], name), name)
    for alias, dest in sources.aliases.items():
        text = sources.environ.get(alias)
        if text is None or dest not in options:
            continue
        value = _convert(parser, options[dest], text, alias)
        if dest in values and values[dest][0] != value:
            parser.error(f"{alias} and {values[dest][1]} are both set, to different values")
        values.setdefault(dest, (value, alias))
    return values


def _from_file(
    parser: Parser, options: dict[str, Option], path: Path, sources: Sources
) -> dict[str, tuple[Any, str]]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        parser.error(f"config file {path}: {exc.strerror}")
    except tomllib.TOMLDecodeError as exc:
        parser.error(f"config file {path}: not valid TOML: {exc}")
    keys = [d for d in options if d != sources.config_dest]
    values: dict[str, tuple[Any, str]] = {}
    for key, raw in data.items():
        dest = key.replace("-", "_")
        where = f"{path}: key {key!r}"
        if dest in sources.file_refused:
            parser.error(f"{where}: {sources.file_refused[dest]}")
        if dest not in keys:
            hint = difflib.get_close_matches(dest, keys, n=1)
            parser.error(
                f"{where} matches no option" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            )
        if dest in values:
            parser.error(f"{where}: given twice (with - and with _)")
        values[dest] = (_convert(parser, options[dest], raw, where), where)
    return values


def _convert(parser: Parser, option: Option, raw: Any, where: str) -> Any:
    """A value from the environment (text) or the file (TOML) as the flag would give it."""

    def fail(why: str) -> None:
        parser.error(f"{where}: {why}")

    action = option.action
    if option.kind in _BOOLEAN:
        flag = _boolean(raw)
        if flag is None:
            fail(f"expects a boolean (true/false), got {raw!r}")
        return flag  # the value of the setting (--no-verify, dest verify: verify = false)
    if option.kind == "store_const":
        flag = _boolean(raw)
        if flag is None:
            fail(f"expects a boolean (true/false), got {raw!r}")
        return action.const if flag else option.default
    if option.kind == "count":
        if isinstance(raw, bool) or not str(raw).strip().isdigit():
            fail(f"expects a count (0, 1, 2...), got {raw!r}")
        return int(str(raw).strip())
    many = (
        option.kind in ("append", "extend")
        or action.nargs in ("*", "+")
        or (isinstance(action.nargs, int) and action.nargs > 1)
    )
    if many:
        items = raw if isinstance(raw, list) else _split(raw) if isinstance(raw, str) else [raw]
        return [_one(action, item, fail) for item in items]
    if isinstance(raw, list):
        fail("expects one value, got a list")
    return _one(action, raw, fail)


def _one(action: argparse.Action, raw: Any, fail: Callable[[str], None]) -> Any:
    if isinstance(raw, (bool, dict, list)) or not isinstance(raw, (str, int, float)):
        fail(f"expects a value as {_flag(action)} takes it, got {raw!r}")
    text = str(raw)
    convert = action.type  # the same function the flag's value goes through
    try:
        value = convert(text) if callable(convert) else text
    except argparse.ArgumentTypeError as exc:
        fail(str(exc))
    except (TypeError, ValueError):
        fail(f"invalid value {text!r} for {_flag(action)}")
    if action.choices is not None and value not in action.choices:
        fail(f"{text!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def _boolean(raw: Any) -> bool | None:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        text = raw.strip().lower()
        return True if text in TRUE else False if text in FALSE else None
    return None


def truth(value: Any) -> bool:
    """A role variable as Ansible reads a bool: the switch's words, y and t; else Python's bool.

    The roles' filters (plugins/filter/) read their switches with this, so that
    a switch means there what the poller's own words mean, plus Ansible's.
    """
    if isinstance(value, str):
        return value.strip().lower() in ANSIBLE_TRUE
    return bool(value)


def _split(text: str) -> list[str]:
    """A list in one variable: one item a line, or comma-separated on one line."""
    parts = text.splitlines() if "\n" in text.strip() else text.split(",")
    return [p.strip() for p in parts if p.strip()]


def _flag(action: argparse.Action) -> str:
    return action.option_strings[-1] if action.option_strings else action.dest

"""Typed records read back from the JSON files pollers write (status.json,
history.jsonl, the host's ledger): one rule for all of them, so a file written
by another version of the poller stays readable and a damaged one reads as
nothing rather than failing the reader."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

_T = TypeVar("_T")


def from_json(cls: type[_T], data: Any) -> _T | None:
    """`data` as a `cls` dataclass, or None when it is not a dict or misses a field
    without a default. Unknown keys are left out."""
    if not isinstance(data, dict):
        return None
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError:
        return None

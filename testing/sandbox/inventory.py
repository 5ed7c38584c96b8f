"""The inventory Ansible reads: the sandbox's hosts with their connection variables."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from testing.sandbox.host import Host
from testing.sandbox.system import SandboxError


def write_inventory(
    hosts: Sequence[Host],
    path: str | os.PathLike[str],
    groups: Mapping[str, Sequence[str]] | None = None,
    host_vars: Mapping[str, Mapping[str, object]] | None = None,
    group_vars: Mapping[str, Mapping[str, object]] | None = None,
) -> Path:
    """Write a YAML inventory of the hosts for Ansible.

    By default every host goes into ``leam_jobservers``. ``host_vars``
    are merged over the connection variables of each host.
    """
    by_name = {h.name: h for h in hosts}
    if groups is None:
        groups = {"leam_jobservers": sorted(by_name)}
    all_hosts: dict[str, dict[str, object]] = {}
    for name, host in by_name.items():
        all_hosts[name] = {**host.ansible_vars(), **dict((host_vars or {}).get(name, {}))}
    children: dict[str, dict[str, object]] = {}
    for group, members in groups.items():
        unknown = [m for m in members if m not in by_name]
        if unknown:
            raise SandboxError(f"group {group}: unknown hosts {unknown}")
        entry: dict[str, object] = {"hosts": {m: None for m in members}}
        if group_vars and group in group_vars:
            entry["vars"] = dict(group_vars[group])
        children[group] = entry
    inventory = {"all": {"hosts": all_hosts, "children": children}}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_yaml(inventory))
    return out


def to_yaml(data: object) -> str:
    """YAML, or JSON (which is YAML too) where PyYAML is missing."""
    try:
        import yaml
    except ImportError:  # JSON is valid YAML, and Ansible's YAML plugin reads it
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=False, width=1000)

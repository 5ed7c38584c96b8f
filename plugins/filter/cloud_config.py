"""Filters of playbooks/userdata.yml: one inventory host's variables -> #cloud-config.

The user data of a job server must make a bare machine converge itself with
site.yml, and must never carry a secret in clear: cloud providers show user
data to anyone who may describe the instance. So every value whose key names
a secret (password, secret, token) is encrypted with ansible-vault here, and
the vault password reaches the machine by another way (a root-only file).

Kept in Python, not Jinja, so that the selection, the encryption and the
shape of the document are unit tested (tests/test_cloud_config.py).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

try:
    import leampoll  # noqa: F401  (a checkout's venv has it installed)
except ImportError:  # the installed collection carries the poller's source at its root
    sys.path.append(str(Path(__file__).resolve().parents[2]))
from leampoll.paths import PLAIN_PATH_TEXT, is_plain_path

# Variables of the roles (and the inventory's data model) a host needs.
DEFAULT_PREFIXES = ("leam_", "leampoll_", "supervisor_", "jobdir_", "node_exporter_")
# Settings of the rendering itself never go to the host.
OWN_PREFIX = "leam_userdata_"
SECRET_KEY = re.compile(r"password|secret|token", re.IGNORECASE)
PIN = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)")
# Where the host keeps what the user data brings (all root-only but the script).
ETC = "/etc/leam"
SCRIPT = "/usr/local/sbin/leam-self-provision"
SCRIPT_SOURCE = (
    Path(__file__).resolve().parents[2] / "playbooks" / "files" / "leam_self_provision.py"
)


class CloudConfigError(ValueError):
    """The rendering cannot be done as asked; the message names the setting."""


@dataclass
class Options:
    """How the host gets Ansible and the project (the leam_userdata_* variables)."""

    inventory_name: str
    repo: str
    ref: str
    ansible_version: str
    setuptools_version: str
    vault_password: str = ""
    host_vault_password_file: str = f"{ETC}/vault-password"
    vault_password_command: list[str] = field(default_factory=list)
    vault_id: str = "leam_userdata"
    pip_args: list[str] = field(default_factory=list)
    prefix: str = "/opt/leam-ansible"
    packages: list[str] = field(default_factory=lambda: ["git", "python3-venv", "ca-certificates"])

    def check(self) -> None:
        for name in ("inventory_name", "repo", "ref", "ansible_version", "setuptools_version"):
            if not str(getattr(self, name) or "").strip():
                raise CloudConfigError(f"leam_userdata: {name} is empty")
        if not isinstance(self.pip_args, list) or not all(
            isinstance(a, str) for a in self.pip_args
        ):
            raise CloudConfigError("leam_userdata_pip_args must be a list of strings")
        if not isinstance(self.vault_password_command, list):
            raise CloudConfigError(
                "leam_userdata_vault_password_command must be a list "
                "of words (argv), not a shell string"
            )
        for path in (self.host_vault_password_file, self.prefix):
            if not is_plain_path(path):
                raise CloudConfigError(f"leam_userdata: {path!r} is not {PLAIN_PATH_TEXT}")


class Vaulted(str):
    """An ansible-vault ciphertext, dumped as a `!vault |` scalar."""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)
_Dumper.add_representer(Vaulted, lambda d, v: d.represent_scalar("!vault", str(v), style="|"))


def dump(data: Any) -> str:
    return yaml.dump(
        data,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        width=1000,
        allow_unicode=True,
    )


def requirement_pin(requirements: str, name: str) -> str:
    """The version `name==X` is pinned to in a requirements file's text."""
    wanted = name.lower().replace("_", "-")
    for line in requirements.splitlines():
        m = PIN.match(line)
        if m and m.group(1).lower().replace("_", "-") == wanted:
            return m.group(2)
    raise CloudConfigError(f"requirements: no '{name}==VERSION' pin found")


def host_settings(
    hostvars: Mapping[str, Any], prefixes: Iterable[str] | None = DEFAULT_PREFIXES
) -> dict[str, Any]:
    """The role variables of one host: its inventory values, not Ansible's own.
    `prefixes` None: those of every role of the collection (DEFAULT_PREFIXES)."""
    prefixes = tuple(DEFAULT_PREFIXES if prefixes is None else prefixes)
    return {
        k: _plain(hostvars[k])
        for k in sorted(hostvars)
        if k.startswith(prefixes) and not k.startswith(OWN_PREFIX)
    }


def _plain(value: Any) -> Any:
    """Ansible's lazy containers and tagged strings as plain data."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    for kind in (str, bool, int, float):  # bool before int: it is one
        if isinstance(value, kind):
            return kind(value)
    return value


def encrypt_secrets(data: Any, encrypt, key: str = "") -> tuple[Any, int]:
    """Replace every value under a secret-naming key by encrypt(value); count them."""
    if isinstance(data, Mapping):
        out, n = {}, 0
        for k, v in data.items():
            out[k], m = encrypt_secrets(v, encrypt, str(k))
            n += m
        return out, n
    if isinstance(data, list):
        pairs = [encrypt_secrets(v, encrypt, key) for v in data]
        return [p[0] for p in pairs], sum(p[1] for p in pairs)
    if SECRET_KEY.search(key) and data is not None and not isinstance(data, bool):
        return Vaulted(encrypt(str(data))), 1
    return data, 0


def vault_encrypter(password: str, vault_id: str):
    """A function that encrypts one string with ansible-vault (AES256)."""
    from ansible.parsing.vault import VaultLib, VaultSecret

    if not password:
        raise CloudConfigError(
            "the host variables hold secrets but no vault password was "
            "given (leam_userdata_vault_password_file)"
        )
    secret = VaultSecret(password.strip().encode())
    lib = VaultLib([(vault_id, secret)])

    def encrypt(text: str) -> str:
        return lib.encrypt(text, secret, vault_id).decode()

    return encrypt


def cloud_config(settings: Mapping[str, Any], options: Mapping[str, Any] | Options) -> str:
    """The whole #cloud-config document for one host, as text."""
    opts = options if isinstance(options, Options) else Options(**_plain(options))
    opts.check()
    encrypters: list = []

    def encrypt(text: str) -> str:
        if not encrypters:  # only asked for when there is a secret
            encrypters.append(vault_encrypter(opts.vault_password, opts.vault_id))
        return encrypters[0](text)

    vars_out, secrets = encrypt_secrets(_plain(settings), encrypt)
    inventory = {
        "all": {
            "children": {
                "leam_jobservers": {
                    "hosts": {
                        opts.inventory_name: {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": "/usr/bin/python3",
                        }
                    }
                }
            }
        }
    }
    plan = {
        "repo": opts.repo,
        "ref": opts.ref,
        "requirements": [
            f"ansible=={opts.ansible_version}",
            f"setuptools=={opts.setuptools_version}",
        ],
        "pip_args": opts.pip_args,
        "prefix": opts.prefix,
        "inventory": f"{ETC}/inventory",
        "vault_password_file": opts.host_vault_password_file,
        "vault_password_command": opts.vault_password_command,
        "vault_id": opts.vault_id,
        "needs_vault": secrets > 0,
    }
    root_only = {"owner": "root:root", "permissions": "0600"}
    doc = {
        "package_update": True,
        "packages": list(opts.packages),
        "write_files": [
            {
                "path": f"{ETC}/inventory/hosts.yml",
                **root_only,
                "content": "# Written by cloud-init from the user data (playbooks/userdata.yml).\n"
                + dump(inventory),
            },
            {
                "path": f"{ETC}/inventory/host_vars/{opts.inventory_name}.yml",
                **root_only,
                "content": "# This host's variables; secrets are ansible-vault encrypted.\n"
                + dump(vars_out),
            },
            {
                "path": f"{ETC}/self-provision.json",
                **root_only,
                "content": json.dumps(plan, indent=1, sort_keys=True) + "\n",
            },
            {
                "path": SCRIPT,
                "owner": "root:root",
                "permissions": "0700",
                "content": SCRIPT_SOURCE.read_text(),
            },
        ],
        # runcmd runs once per instance: a reboot does not provision again.
        "runcmd": [[SCRIPT, f"{ETC}/self-provision.json"]],
    }
    return "#cloud-config\n" + dump(doc)


class FilterModule:
    """leam_requirement_pin, leam_host_settings, leam_cloud_config."""

    def filters(self) -> dict[str, Any]:
        return {
            "leam_requirement_pin": requirement_pin,
            "leam_host_settings": host_settings,
            "leam_cloud_config": cloud_config,
        }

"""playbooks/userdata.yml and its filter plugin: host variables -> #cloud-config.

The documents are checked with Debian's own `cloud-init schema` (testing/cloud_init.py)
and decrypted back with ansible-vault: no secret in clear, nothing lost.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testing import cloud_init, playbook
from testing.playbook import ROOT

pytestmark = pytest.mark.timeout(300)

_spec = importlib.util.spec_from_file_location(
    "cloud_config", ROOT / "plugins" / "filter" / "cloud_config.py"
)
cc = importlib.util.module_from_spec(_spec)
sys.modules["cloud_config"] = cc  # dataclasses look their module up there
_spec.loader.exec_module(cc)

SECRET = "Sup3r-s3cret-Pa55"
VAULT_PASSWORD = "fleet vault password"
SETTINGS = {
    "leam_projects": [
        {
            "name": "chicago",
            "portal_url": "http://127.0.0.1:8781",
            "portal_user": "poller",
            "portal_password": SECRET,
        }
    ],
    "leampoll_speed": 2,
    "leampoll_pip_extra_args": ["--no-index"],
}


def options(**over) -> dict:
    base = {
        "inventory_name": "job1",
        "repo": "file:///srv/leam.git",
        "ref": "abc123",
        "ansible_version": "12.3.0",
        "setuptools_version": "84.2.1",
        "vault_password": VAULT_PASSWORD,
    }
    return {**base, **over}


class VaultLoader(yaml.SafeLoader):
    """Reads `!vault` scalars back as their ciphertext."""


VaultLoader.add_constructor("!vault", lambda loader, node: ("vault", loader.construct_scalar(node)))


def decrypt(ciphertext: str, password: str = VAULT_PASSWORD) -> str:
    from ansible.parsing.vault import VaultLib, VaultSecret

    return (
        VaultLib([("leam_userdata", VaultSecret(password.encode()))]).decrypt(ciphertext).decode()
    )


def files(doc: str) -> dict[str, dict]:
    assert doc.startswith("#cloud-config\n")
    return {f["path"]: f for f in yaml.safe_load(doc)["write_files"]}


def host_vars(doc: str, name: str = "job1") -> dict:
    return yaml.load(
        files(doc)[f"/etc/leam/inventory/host_vars/{name}.yml"]["content"], Loader=VaultLoader
    )


def assert_schema_valid(path: Path) -> None:
    try:
        done = cloud_init.schema(path)
    except cloud_init.Unavailable as exc:
        pytest.skip(str(exc))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Valid cloud-config" in done.stdout


def test_requirement_pin_reads_the_pinned_versions():
    text = (ROOT / "requirements-dev.txt").read_text()
    assert cc.requirement_pin(text, "ansible") == "12.3.0"
    assert (
        cc.requirement_pin("# x\nSetup_Tools == 1.2 ; python_version>'3'\n", "setup-tools") == "1.2"
    )
    with pytest.raises(cc.CloudConfigError, match="'ansible-core==VERSION'"):
        cc.requirement_pin(text, "ansible-core")


def test_host_settings_keep_role_variables_only():
    hostvars = {
        "leam_projects": [],
        "leampoll_speed": 5,
        "supervisor_conf": "x",
        "jobdir_mode": "0755",
        "ansible_host": "192.0.2.1",
        "inventory_hostname": "j",
        "leam_userdata_repo": "file:///x",
        "vault_chicago_password": SECRET,
        "groups": {},
    }
    assert cc.host_settings(hostvars) == {
        "jobdir_mode": "0755",
        "leam_projects": [],
        "leampoll_speed": 5,
        "supervisor_conf": "x",
    }


def test_every_role_variable_reaches_the_host():
    # A role's variables left out of the user data would be its defaults on a cloud host.
    for spec in sorted(ROOT.glob("roles/*/meta/argument_specs.yml")):
        for entry in yaml.safe_load(spec.read_text())["argument_specs"].values():
            for name in entry.get("options", {}):
                assert name.startswith(cc.DEFAULT_PREFIXES), f"{spec.parts[-3]}: {name}"


def test_secrets_are_vaulted_and_decrypt_back():
    doc = cc.cloud_config(SETTINGS, options())
    assert SECRET not in doc and VAULT_PASSWORD not in doc
    (project,) = host_vars(doc)["leam_projects"]
    tag, ciphertext = project["portal_password"]
    assert tag == "vault" and ciphertext.startswith("$ANSIBLE_VAULT;1.2;AES256;leam_userdata")
    assert decrypt(ciphertext) == SECRET
    assert project["portal_user"] == "poller" and host_vars(doc)["leampoll_speed"] == 2


def test_every_secret_naming_key_is_vaulted_at_any_depth():
    settings = {"leam_x": {"api_token": "t0ken", "nested": [{"Secret": 42}], "plain": "ok"}}
    out = host_vars(cc.cloud_config(settings, options()))["leam_x"]
    assert decrypt(out["api_token"][1]) == "t0ken"
    assert decrypt(out["nested"][0]["Secret"][1]) == "42"
    assert out["plain"] == "ok"


def test_secrets_without_a_vault_password_are_refused():
    with pytest.raises(cc.CloudConfigError, match="leam_userdata_vault_password_file"):
        cc.cloud_config(SETTINGS, options(vault_password=""))


def test_no_secret_needs_no_vault():
    doc = cc.cloud_config({"leampoll_speed": 3}, options(vault_password=""))
    plan = json.loads(files(doc)["/etc/leam/self-provision.json"]["content"])
    assert plan["needs_vault"] is False


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"repo": ""}, "repo is empty"),
        ({"pip_args": "--no-index"}, "leam_userdata_pip_args"),
        ({"vault_password_command": "aws ssm get-parameter"}, "argv"),
        ({"host_vault_password_file": "vault-pass"}, "not an absolute path"),
    ],
)
def test_bad_options_are_named(over, needle):
    with pytest.raises(cc.CloudConfigError, match=needle):
        cc.cloud_config(SETTINGS, options(**over))


def test_document_shape_files_root_only_and_runs_the_script_once():
    doc = cc.cloud_config(SETTINGS, options(pip_args=["--find-links", "/srv/wheelhouse"]))
    data = yaml.safe_load(doc)
    written = files(doc)
    for path in (
        "/etc/leam/inventory/hosts.yml",
        "/etc/leam/inventory/host_vars/job1.yml",
        "/etc/leam/self-provision.json",
    ):
        assert written[path]["permissions"] == "0600" and written[path]["owner"] == "root:root"
    script = written[cc.SCRIPT]
    assert script["permissions"] == "0700" and script["content"] == cc.SCRIPT_SOURCE.read_text()
    assert data["runcmd"] == [[cc.SCRIPT, "/etc/leam/self-provision.json"]]
    assert {"git", "python3-venv"} <= set(data["packages"])
    plan = json.loads(written["/etc/leam/self-provision.json"]["content"])
    assert plan["requirements"] == ["ansible==12.3.0", "setuptools==84.2.1"]
    assert plan["pip_args"] == ["--find-links", "/srv/wheelhouse"] and plan["ref"] == "abc123"
    inventory = yaml.safe_load(written["/etc/leam/inventory/hosts.yml"]["content"])
    host = inventory["all"]["children"]["leam_jobservers"]["hosts"]["job1"]
    assert host["ansible_connection"] == "local"


def test_rendered_document_passes_cloud_init_schema(tmp_path):
    path = tmp_path / "user-data"
    path.write_text(cc.cloud_config(SETTINGS, options()))
    assert_schema_valid(path)
    bad = tmp_path / "bad"
    bad.write_text(path.read_text().replace("permissions: '0600'", "permissions: 600", 1))
    assert cloud_init.schema(bad).returncode != 0  # the check can fail


def _inventory(tmp: Path) -> Path:
    """An inventory like inventory.example: the password in a vaulted vars file."""
    inv = tmp / "inventory"
    (inv / "host_vars" / "job1").mkdir(parents=True)
    (inv / "hosts.yml").write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {
                        "leam_jobservers": {
                            "hosts": {
                                "job1": {"ansible_host": "192.0.2.11", "ansible_user": "admin"}
                            }
                        }
                    }
                }
            }
        )
    )
    (inv / "host_vars" / "job1" / "main.yml").write_text(
        yaml.safe_dump(
            {
                "leam_projects": [
                    {
                        "name": "chicago",
                        "portal_url": "https://chicago.example.org",
                        "portal_user": "poller",
                        "portal_password": "{{ vault_chicago_password }}",
                    }
                ],
                "leampoll_speed": 20,
            }
        )
    )
    vault = inv / "host_vars" / "job1" / "vault.yml"
    vault.write_text(f"vault_chicago_password: {SECRET}\n")
    (tmp / "vault-pass").write_text(VAULT_PASSWORD + "\n")
    subprocess.run(
        [
            Path(sys.executable).with_name("ansible-vault"),
            "encrypt",
            "--vault-password-file",
            str(tmp / "vault-pass"),
            str(vault),
        ],
        check=True,
        capture_output=True,
    )
    return inv


def userdata_playbook(tmp_path: Path, *extra_vars: str) -> subprocess.CompletedProcess:
    """playbooks/userdata.yml against a test inventory in tmp_path; each of extra_vars an -e."""
    inv = _inventory(tmp_path)
    options = [word for var in extra_vars for word in ("-e", var)]
    vault = ["--vault-password-file", str(tmp_path / "vault-pass")]
    return playbook.run(inv, "playbooks/userdata.yml", *vault, *options, timeout=240)


def test_userdata_playbook_renders_a_valid_document_with_no_secret_in_clear(tmp_path):
    dest = tmp_path / "userdata.yaml"
    run = userdata_playbook(
        tmp_path,
        "target=job1",
        "leam_userdata_repo=file:///srv/leam.git",
        f"leam_userdata_vault_password_file={tmp_path / 'vault-pass'}",
        f"dest={dest}",
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert SECRET not in run.stdout + run.stderr
    assert dest.stat().st_mode & 0o777 == 0o600
    doc = dest.read_text()
    assert SECRET not in doc and VAULT_PASSWORD not in doc
    (project,) = host_vars(doc)["leam_projects"]
    assert decrypt(project["portal_password"][1]) == SECRET
    assert "ansible_user" not in host_vars(doc)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    plan = json.loads(files(doc)["/etc/leam/self-provision.json"]["content"])
    assert plan["ref"] == head and plan["requirements"][0] == "ansible==12.3.0"
    assert_schema_valid(dest)


def test_userdata_playbook_names_what_is_missing(tmp_path):
    run = userdata_playbook(tmp_path, "target=nohost")
    assert run.returncode != 0 and "-e target=HOST" in run.stdout

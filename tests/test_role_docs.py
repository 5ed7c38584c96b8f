"""tools/role_docs.py: role defaults and README tables written from the argument specs."""

import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import role_docs  # noqa: E402

SPEC = """\
---
argument_specs:
  main:
    short_description: A demo role
    options:
      demo_mode:
        type: str
        default: "0755"
        description: Mode of C(%(here)s) things, see I(demo_dir).
      demo_dir:
        type: str
        default: "{{ role_path }}/x"
        description:
          - Where things go.
          - An absolute path.
      demo_items:
        type: list
        elements: dict
        default: []
        description: The items.
        options:
          name:
            type: str
            required: true
            description: Its name.
          state:
            type: str
            choices: [present, absent]
            default: present
            description: Whether it is there.
  drain_all:
    short_description: Drain everything
    options:
      demo_ops_wait:
        type: bool
        default: true
        description: Wait for the drain.
"""

README = """\
# Role `demo`

Prose that stays.

<!-- role_docs: begin; written from meta/argument_specs.yml by tools/role_docs.py -->
stale
<!-- role_docs: end -->

More prose.
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    role = tmp_path / "roles" / "demo"
    (role / "meta").mkdir(parents=True)
    (role / "meta" / "argument_specs.yml").write_text(SPEC)
    (role / "README.md").write_text(README)
    return tmp_path


def test_write_makes_defaults_of_main_and_documents_every_entry_point(tree, capsys):
    assert role_docs.main(["check", "--root", str(tree)]) == 1
    assert "roles/demo/defaults/main.yml" in capsys.readouterr().err
    assert role_docs.main(["write", "--root", str(tree)]) == 0
    assert role_docs.main(["check", "--root", str(tree)]) == 0

    defaults_text = (tree / "roles/demo/defaults/main.yml").read_text()
    # Values read back as the spec gives them; inputs of other entry points are no defaults.
    assert yaml.safe_load(defaults_text) == {
        "demo_mode": "0755",
        "demo_dir": "{{ role_path }}/x",
        "demo_items": [],
    }
    assert "# Mode of %(here)s things, see demo_dir.\ndemo_mode:" in defaults_text
    assert "# Keys of an item (demo role's README): name (required), state." in defaults_text

    readme = (tree / "roles/demo/README.md").read_text()
    assert readme.startswith("# Role `demo`\n\nProse that stays.\n")
    assert readme.endswith("<!-- role_docs: end -->\n\nMore prose.\n")
    assert "stale" not in readme
    assert "### Entry point `main`: A demo role" in readme
    assert "### Entry point `drain_all`: Drain everything" in readme
    assert '| `demo_mode` | str | `"0755"` | Mode of `%(here)s` things, see `demo_dir`. |' in readme
    assert "| `demo_ops_wait` | bool | `true` | Wait for the drain. |" in readme
    assert (
        "| `state` | str | `present` | Whether it is there. One of `present`, `absent`. |" in readme
    )


def test_check_names_a_file_edited_by_hand(tree, capsys):
    role_docs.main(["write", "--root", str(tree)])
    defaults = tree / "roles/demo/defaults/main.yml"
    defaults.write_text(defaults.read_text().replace('"0755"', '"0700"'))
    assert role_docs.main(["check", "--root", str(tree)]) == 1
    assert (
        "roles/demo/defaults/main.yml: not as meta/argument_specs.yml describes"
        in capsys.readouterr().err
    )


def test_a_description_yaml_read_as_a_mapping_is_refused(tree):
    spec = tree / "roles/demo/meta/argument_specs.yml"
    spec.write_text(spec.read_text().replace("- An absolute path.", "- Absolute: a path."))
    with pytest.raises(SystemExit, match="a description is not text"):
        role_docs.main(["write", "--root", str(tree)])


def test_a_readme_without_markers_is_refused(tree):
    (tree / "roles/demo/README.md").write_text("# Role `demo`\n")
    with pytest.raises(SystemExit, match="no role_docs markers"):
        role_docs.main(["write", "--root", str(tree)])


def test_long_values_are_folded_as_yaml_reads_them_back():
    value = "{{ lookup('ansible.builtin.env', 'XDG_CACHE_HOME') " * 3 + "}}"
    text = role_docs.default_line("demo_cache", value)
    assert text.startswith("demo_cache: >-\n")
    assert max(len(line) for line in text.splitlines()) <= role_docs.YAML_MAX
    assert yaml.safe_load(text) == {"demo_cache": value}


def test_the_checkout_roles_are_as_their_specs_describe():
    assert role_docs.main(["check"]) == 0, textwrap.dedent("""
        run `python tools/role_docs.py write` after changing meta/argument_specs.yml""")

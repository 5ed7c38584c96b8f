"""Unit tests of checkout planning: the portal's repository value as a command."""

from __future__ import annotations

from pathlib import Path

import pytest

from leampoll.checkout import plan

RUNDIR = Path("/jobs/x")


@pytest.mark.parametrize(
    ("value", "argv"),
    [
        (
            "https://svn.example.org/luc/trunk",
            [
                "svn",
                "checkout",
                "--non-interactive",
                "https://svn.example.org/luc/trunk",
                "/jobs/x",
            ],
        ),
        (
            "svn+ssh://svn.example.org/luc",
            ["svn", "checkout", "--non-interactive", "svn+ssh://svn.example.org/luc", "/jobs/x"],
        ),
        (
            "file:///srv/svn/luc/trunk",
            ["svn", "checkout", "--non-interactive", "file:///srv/svn/luc/trunk", "/jobs/x"],
        ),
        (
            "  svn://svn.example.org/luc  ",
            ["svn", "checkout", "--non-interactive", "svn://svn.example.org/luc", "/jobs/x"],
        ),
        (
            "https://git.example.org/luc.git",
            ["git", "clone", "--quiet", "https://git.example.org/luc.git", "/jobs/x"],
        ),
        (
            "file:///srv/git/model.git/",
            ["git", "clone", "--quiet", "file:///srv/git/model.git/", "/jobs/x"],
        ),
        (
            "git@github.com:leam/luc.git",
            ["git", "clone", "--quiet", "git@github.com:leam/luc.git", "/jobs/x"],
        ),
        (
            "git://git.example.org/luc",
            ["git", "clone", "--quiet", "git://git.example.org/luc", "/jobs/x"],
        ),
        (
            "svn co https://svn.example.org/luc",
            ["svn", "co", "--non-interactive", "https://svn.example.org/luc", "/jobs/x"],
        ),
        (
            "git clone -q 'https://git.example.org/a b.git'",
            ["git", "clone", "-q", "https://git.example.org/a b.git", "/jobs/x"],
        ),
        ("/opt/models/fetch.sh", ["/opt/models/fetch.sh", "/jobs/x"]),
    ],
)
def test_repository_values(value, argv):
    assert plan(value, RUNDIR).argv == argv


def test_repository_kinds():
    assert plan("https://svn.example.org/x", RUNDIR).kind == "svn"
    assert plan("git@host:x.git", RUNDIR).kind == "git"
    assert plan("svn co https://svn.example.org/x", RUNDIR).kind == "command"


def test_repository_command_that_cannot_be_split():
    with pytest.raises(ValueError):
        plan("svn co 'unclosed", RUNDIR)

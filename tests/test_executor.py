"""Unit tests of the executor's pure parts: run directory names, how an outcome
is described, log tails.

No network, no subprocesses.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from leampoll.executor import MAX_NAME, Outcome, rundir_name, tail

# -- executor.rundir_name ----------------------------------------------------------------

SAFE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
HASH_SUFFIX = re.compile(r"_[0-9a-f]{12}$")

HOSTILE_IDS = [
    "../../etc/passwd",
    "/etc/passwd",
    "a/../../b",
    "..",
    ".",
    "",
    "???",
    "abc\x00def",
    "\x00",
    "../\x00../x",
    ".hidden",
    "...",
    "-",
    "   ",
    "0123",
    "_x",
    "~root",
    "C:\\Windows\\system32",
    "a\nb",
    "\u00e9t\u00e9-2040",
    "\u202eevil",
    "\ud800",
    "$(rm -rf /)",
    "`id`",
    "a;b|c&d",
    "%2e%2e%2fetc",
    "x" * 5000,
    "../" * 2000,
]


@pytest.mark.parametrize(
    ("job_id", "expected"),
    [
        ("chicago-2040-base", "chicago_2040_base"),
        ("chicago 2040 base", "chicago_2040_base"),
        ("a - - b", "a_b"),
        ("a   b", "a_b"),
        ("a---b", "a_b"),
        ("a \t-\n b", "a_b"),
        ("2040-chicago", "chicago"),
        ("123abc", "abc"),
        ("_-_abc", "abc"),
        ("...abc", "abc"),
        ("scenario.1", "scenario1"),
        ("Already_Fine_9", "Already_Fine_9"),
        ("../../etc/passwd", "etcpasswd"),
        ("/etc/passwd", "etcpasswd"),
        ("a/../../b", "ab"),
        ("abc\x00def", "abcdef"),
    ],
)
def test_rundir_name_examples(job_id, expected):
    assert rundir_name(job_id) == expected


@pytest.mark.parametrize("job_id", HOSTILE_IDS)
def test_rundir_name_is_one_safe_component(job_id, tmp_path):
    name = rundir_name(job_id)
    assert name
    assert "/" not in name
    assert "\\" not in name
    assert ".." not in name
    assert not name.startswith(".")
    assert SAFE_NAME.match(name), name
    assert len(name) <= MAX_NAME <= 100
    assert len(Path(name).parts) == 1
    workdir = tmp_path.resolve()
    for path in (workdir / name, workdir / f"{name}.log"):
        resolved = path.resolve()
        assert resolved.is_relative_to(workdir)
        assert resolved != workdir
        assert resolved.parent == workdir


@pytest.mark.parametrize("job_id", ["", "..", "???", "\x00", "/", "12345", "-_-"])
def test_rundir_name_empty_result_gets_hash(job_id):
    name = rundir_name(job_id)
    assert re.fullmatch(r"job_[0-9a-f]{12}", name)


def test_rundir_name_empty_results_differ_per_id():
    names = {rundir_name(i) for i in ["", "..", "???", "\x00", "/", "12345"]}
    assert len(names) == 6


def test_rundir_name_is_deterministic():
    assert rundir_name("chicago-2040-base") == rundir_name("chicago-2040-base")
    assert rundir_name("x" * 5000) == rundir_name("x" * 5000)
    assert rundir_name("???") == rundir_name("???")


@pytest.mark.parametrize("job_id", ["x" * 5000, "a-" * 2500, "Z" * 101, "q" * 4999 + "?"])
def test_rundir_name_long_id_is_bounded_and_hashed(job_id):
    name = rundir_name(job_id)
    assert len(name) <= 100
    assert HASH_SUFFIX.search(name), name
    assert SAFE_NAME.match(name)


def test_rundir_name_boundary_length():
    assert rundir_name("a" * MAX_NAME) == "a" * MAX_NAME
    assert HASH_SUFFIX.search(rundir_name("a" * (MAX_NAME + 1)))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("x" * 100 + "A", "x" * 100 + "B"),
        ("x" * 100 + "-one", "x" * 100 + "-two"),
        ("y" * 5000, "y" * 4999 + "z"),
        ("y" * 5000, "y" * 5001),
    ],
)
def test_rundir_name_long_ids_sharing_a_prefix_differ(first, second):
    assert first[:100] == second[:100]
    assert rundir_name(first) != rundir_name(second)


# -- executor.Outcome.describe -----------------------------------------------------------


def test_describe_success():
    text = Outcome(True, duration=3.21).describe()
    assert text == "succeeded in 3.2s"


def test_describe_success_leaves_out_the_log():
    assert "last lines" not in Outcome(True, duration=1, tail="noise").describe()


@pytest.mark.parametrize(
    ("code", "stage"), [(1, "run"), (2, "run"), (127, "run"), (128, "checkout")]
)
def test_describe_exit_code(code, stage):
    text = Outcome(False, stage, returncode=code, duration=4.0).describe()
    assert text.startswith(f"{stage} failed")
    assert f"exit code {code}" in text
    assert "4.0s" in text


@pytest.mark.parametrize(
    ("returncode", "name"),
    [(-9, "SIGKILL"), (-15, "SIGTERM"), (-11, "SIGSEGV"), (-6, "SIGABRT"), (-2, "SIGINT")],
)
def test_describe_killed_by_signal(returncode, name):
    text = Outcome(False, "run", returncode=returncode, duration=1.0).describe()
    assert f"killed by {name}" in text
    assert "exit code" not in text


def test_describe_unknown_signal():
    text = Outcome(False, "run", returncode=-200).describe()
    assert "signal 200" in text


@pytest.mark.parametrize("returncode", [None, -9, -15, 0])
def test_describe_timed_out(returncode):
    text = Outcome(False, "run", returncode=returncode, timed_out=True, duration=62.4).describe()
    assert "timed out" in text
    assert "62s" in text
    assert "SIGKILL" not in text


def test_describe_checkout_timed_out():
    text = Outcome(False, "checkout", returncode=-9, timed_out=True, duration=900).describe()
    assert text.startswith("checkout failed: timed out after 900s")


def test_describe_detail_wins():
    text = Outcome(False, "setup", returncode=3, detail="cannot prepare /w/x: disk full").describe()
    assert text == "setup failed: cannot prepare /w/x: disk full"


def test_describe_includes_log_tail():
    log_tail = "Traceback (most recent call last):\nValueError: boom"
    text = Outcome(False, "run", returncode=1, duration=2.0, tail=log_tail).describe()
    assert text.startswith("run failed: exit code 1")
    assert "last lines of the log" in text
    assert text.endswith(log_tail)


def test_describe_detail_with_tail():
    outcome = Outcome(False, "checkout", detail="bad repository command", tail="svn: E170013")
    text = outcome.describe()
    assert "bad repository command" in text
    assert text.endswith("svn: E170013")


# -- executor.tail -----------------------------------------------------------------------


def test_tail_many_lines(tmp_path):
    lines = [f"line {i}" for i in range(1000)]
    log = tmp_path / "job.log"
    log.write_text("\n".join(lines) + "\n")
    assert tail(log) == "\n".join(lines[-20:])


def test_tail_few_lines(tmp_path):
    log = tmp_path / "job.log"
    log.write_text("one\ntwo\nthree")
    assert tail(log) == "one\ntwo\nthree"


@pytest.mark.parametrize("width", [150, 500, 10_000, 100_000])
def test_tail_long_lines_bounded(tmp_path, width):
    log = tmp_path / "job.log"
    lines = [f"{i:05d}" + "x" * width for i in range(200)]
    log.write_text("\n".join(lines) + "\nlast line\n")
    text = tail(log)
    assert len(text) <= 2000
    assert text.endswith("last line")
    assert text.count("\n") <= 19


def test_tail_one_huge_line(tmp_path):
    log = tmp_path / "job.log"
    log.write_bytes(b"a" * 5_000_000 + b"END")
    text = tail(log)
    assert len(text) == 2000
    assert text.endswith("END")


def test_tail_custom_bounds(tmp_path):
    log = tmp_path / "job.log"
    log.write_text("".join(f"{i}\n" for i in range(100)))
    assert tail(log, lines=3) == "97\n98\n99"
    assert tail(log, lines=3, chars=4) == "8\n99"


def test_tail_binary_and_invalid_utf8(tmp_path):
    log = tmp_path / "job.log"
    log.write_bytes(bytes(range(256)) * 100 + "\nlast \u00e9\n".encode())
    text = tail(log)
    assert len(text) <= 2000
    assert text.endswith("last \u00e9")


def test_tail_missing_or_empty(tmp_path):
    assert tail(tmp_path / "nope.log") == ""
    assert tail(tmp_path) == ""  # a directory is not a log
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    assert tail(empty) == ""

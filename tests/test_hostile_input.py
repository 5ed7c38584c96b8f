"""Generated hostile input (hypothesis): whatever a portal answers, the poller
does not crash, makes no path outside its workdir and never runs a shell.

Pop answers of every shape go through `parse_answer`; the jobs it yields go
through the executor's real run-directory and command building. Only the
spawn itself (`Executor.run_group`) is replaced by a recorder in the bulk
properties, so thousands of cases run in seconds; a smaller property really
spawns the commands and checks the job saw its words untouched.

Bounded by default (`make test`); a longer run: HYPOTHESIS_PROFILE=long.
New answer fields or checkout forms: extend FIELDS, TOKENS or the strategies.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import xml.sax.saxutils
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import requests
import urllib3
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from leampoll.answers import Empty, Job, Refused, parse_answer
from leampoll.checkout import SVN_SCHEMES, is_git_url, plan
from leampoll.executor import MAX_NAME, Executor, Outcome, rundir_name
from leampoll.lifecycle import Lifecycle
from leampoll.origins import DEFAULT_PORTS, TrustedOrigins, origin_of

ROOT = Path(__file__).resolve().parent.parent

settings.register_profile(
    "leam", max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "leam"))
EXAMPLES = settings().max_examples
# The recording executor never waits: one Lifecycle (a pipe) serves every example.
IDLE_LIFE = Lifecycle()


@contextlib.contextmanager
def live_lifecycle() -> Iterator[Lifecycle]:
    """A Lifecycle that wakes on SIGCHLD, as in the poller; its pipe closed afterwards."""
    life = Lifecycle()
    life.install()
    try:
        yield life
    finally:
        life.uninstall()


SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish", "busybox"}

# -- strategies ----------------------------------------------------------------

# Pieces attackers and broken portals use: traversal, absolute paths, NUL,
# shell syntax, option injection, bidi and combining characters, lone
# surrogates (a JSON escape can carry them), Windows names, long runs.
TOKENS = [
    "..",
    "../",
    "/",
    "/etc/passwd",
    "\x00",
    "~",
    "~root",
    "$(id)",
    "`id`",
    ";",
    "&&",
    "|",
    ">",
    "<",
    "'",
    '"',
    "\\",
    "\n",
    "\r",
    "\t",
    " ",
    "-rf",
    "--",
    "-",
    "%s",
    "%(here)s",
    "*",
    "?",
    "\u202e",
    "\u0301",
    "\ud800",
    "\udcff",
    "\ufeff",
    "CON",
    "NUL",
    ".",
    "é",
    "\U0001f600",
    "\u2028",
    "svn",
    "git",
    "sh -c",
    "http://",
    "file:///",
    "a" * 300,
]
CHARS = st.characters(codec=None)  # every code point, surrogates included
hostile_text = st.one_of(
    st.text(CHARS, max_size=40),
    st.lists(st.one_of(st.sampled_from(TOKENS), st.text(CHARS, max_size=4)), max_size=12).map(
        "".join
    ),
    st.text(st.sampled_from("./-_ a\\"), min_size=200, max_size=3000),
)
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), hostile_text)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)
    ),
    max_leaves=12,
)

FIELDS = ["id", "title", "url", "repository", "cmdline", "on_success", "on_error"]
job_dict = st.fixed_dictionaries(
    {"status": st.one_of(st.sampled_from(["OK", "EMPTY", "ERROR", "ok", ""]), json_value)},
    optional={f: st.one_of(hostile_text, json_value) for f in FIELDS},
)


def _encode_json(data: object, ascii_only: bool) -> bytes:
    return json.dumps(data, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


ok_job_body = st.builds(
    _encode_json,
    st.fixed_dictionaries(
        {"status": st.just("OK"), "id": hostile_text, "cmdline": hostile_text},
        optional={f: st.one_of(hostile_text, json_value) for f in FIELDS[1:4] + FIELDS[5:]},
    ),
    st.booleans(),
)


def _xml_text(text: str) -> str:
    return xml.sax.saxutils.escape(text)


xml_scenario = st.builds(
    lambda i, t, r: (
        f"<?xml version='1.0' encoding='utf-8'?><model><scenario><id>{_xml_text(i)}"
        f"</id><title>{_xml_text(t)}</title><repository>{_xml_text(r)}"
        f"</repository></scenario></model>"
    ).encode("utf-8", "surrogatepass"),
    hostile_text,
    hostile_text,
    hostile_text,
)
xml_body = st.one_of(
    xml_scenario,
    st.sampled_from(
        [
            b"<x>EMPTY</x>",
            b"<x>ERROR</x>",
            b"<x> EMPTY </x>",
            b"<model/>",
            b"<!DOCTYPE x [<!ENTITY a 'aaaa'>]><x>&a;</x>",
            b"<?xml version='1.0' encoding='utf-16'?><x>EMPTY</x>",
            "<x>EMPTY</x>".encode("utf-16"),
            b"<x>&#0;</x>",
            b"<x><y>" * 5000,
        ]
    ),
)
json_body = st.one_of(
    st.builds(_encode_json, job_dict, st.booleans()),
    st.builds(_encode_json, json_value, st.booleans()),
    st.builds(
        lambda b, n: b[:n], st.builds(_encode_json, job_dict, st.booleans()), st.integers(0, 400)
    ),  # cut short
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
    st.sampled_from(
        [
            b"",
            b"null",
            b"NaN",
            b"1e999",
            b'{"status": "OK"}',
            b"\xff\xfe",
            b'{"status": "OK", "id": "\\ud800", "cmdline": "true"}',
        ]
    ),
)
body = st.one_of(json_body, xml_body, st.binary(max_size=300))
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "application/xml;;charset=UTF-8",
    "application/xml",
    "text/xml",
    "text/html; charset=utf-8",
    "text/plain",
    "",
    ";",
    ";;;",
    "application/json;;;",
    " application/json ",
    "application/xml;charset=UTF-16",
]
content_type = st.one_of(st.sampled_from(CONTENT_TYPES), hostile_text)
status = st.one_of(
    st.sampled_from([200, 200, 200, 204, 301, 302, 401, 403, 404, 500, 503]), st.integers(-1, 1000)
)
retry_after = st.one_of(
    st.none(),
    hostile_text,
    st.sampled_from(
        [
            "0",
            "120",
            "9" * 400,
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "²",
            "-1",
            "1.5",
        ]
    ),
)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")  # strict: what the parser lets through; exec takes it too
    except UnicodeError:
        return False
    return "\x00" not in text


# -- the answer parser -----------------------------------------------------------


@given(status=status, ctype=content_type, data=body, wait=retry_after)
def test_any_answer_parses_to_a_job_empty_or_one_line_refusal(status, ctype, data, wait):
    answer = parse_answer(status, ctype, data, wait)
    assert isinstance(answer, Job | Empty | Refused)
    if isinstance(answer, Refused):
        assert isinstance(answer.reason, str) and answer.reason
        assert "\n" not in answer.reason and "\r" not in answer.reason  # one log line
        assert answer.retry_after is None or answer.retry_after >= 0
    if isinstance(answer, Job):
        assert status == 200
        for name in (*FIELDS, "problem"):
            value = getattr(answer, name)
            assert isinstance(value, str) and _encodable(value), (name, value)
        if not answer.problem:
            assert answer.id.strip() and answer.cmdline.strip()


@given(job=st.fixed_dictionaries({f: hostile_text for f in FIELDS}), ascii_only=st.booleans())
def test_a_job_answer_keeps_its_fields_or_says_what_is_missing(job, ascii_only):
    answer = parse_answer(
        200, "application/json", _encode_json({"status": "OK", **job}, ascii_only)
    )
    assert isinstance(answer, Job)
    for name in FIELDS:  # every usable field exactly as sent, every other one dropped
        # An escaped surrogate pair (\ud800\udcff) is one character to JSON.
        sent = json.loads(json.dumps(job[name])) if ascii_only else job[name]
        usable = _encodable(sent) and len(sent) <= 64 * 1024
        assert getattr(answer, name) == (sent if usable else "")
    runnable = answer.id.strip() and answer.cmdline.strip()
    assert bool(answer.problem) != bool(runnable)


# -- the run directory -------------------------------------------------------------


@given(job_id=hostile_text)
def test_run_directory_is_one_plain_name_inside_the_workdir(job_id):
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "work"
        workdir.mkdir()
        rundir, logpath = Executor(workdir, IDLE_LIFE).paths(Job(id=job_id, cmdline="true"))
        name = rundir_name(job_id)
        assert rundir == workdir / name and logpath == workdir / f"{name}.log"
        assert name[0].isascii() and name[0].isalpha()
        assert len(name) <= MAX_NAME and name.replace("_", "").isalnum() and name.isascii()
        assert rundir.resolve().parent == workdir.resolve()
        assert rundir_name(job_id) == name  # the same job, the same directory


# -- command building through the real executor -------------------------------------


class RecordingExecutor(Executor):
    """The real executor, except that it records each command instead of spawning it."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, IDLE_LIFE)
        self.calls: list[tuple[str, list, Path, dict]] = []

    def run_group(self, stage, argv, cwd, env, log, timeout, on_start=None) -> Outcome:
        self.calls.append((stage, argv, cwd, dict(env)))
        return Outcome(True, stage)


def _subsequence(small: list[str], big: list[str]) -> bool:
    it = iter(big)
    return all(any(word == other for other in it) for word in small)


def _check_commands(ex: RecordingExecutor, job: Job, outside: Path) -> None:
    rundir, _ = ex.paths(job)
    assert rundir.is_dir() and not rundir.is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == ["keep"]  # nothing outside changed
    assert (outside / "keep").read_text() == "untouched"
    for stage, argv, cwd, env in ex.calls:
        assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        # A checkout's value is taken without white space at its ends (Unicode's too).
        text = job.repository.strip() if stage == "checkout" else job.cmdline
        try:
            words = shlex.split(text)
        except ValueError:  # not a command line; a checkout may take it as one URL
            words = [text.strip()]
        if Path(argv[0]).name in SHELLS:  # a shell only where the portal named one itself
            assert words and Path(words[0]).name == Path(argv[0]).name
        if stage == "checkout":
            assert cwd == ex.workdir and argv[-1] == str(rundir)
            # The portal's words, each one argument (a bare URL included, however checked out).
            assert _subsequence(words, argv[:-1]) or text.strip() in argv
            assert "PORTAL_PASSWORD" not in env
        else:
            assert argv == words and cwd == rundir and env["LEAM_RUNDIR"] == str(rundir)


def _execute(job: Job) -> RecordingExecutor:
    with tempfile.TemporaryDirectory() as tmp:
        workdir, outside = Path(tmp) / "work", Path(tmp) / "outside"
        workdir.mkdir()
        outside.mkdir()
        (outside / "keep").write_text("untouched")
        ex = RecordingExecutor(workdir)
        rundir, logpath = ex.paths(job)
        # Left behind by someone hostile: links where the run directory and log go.
        rundir.symlink_to(outside, target_is_directory=True)
        logpath.symlink_to(outside / "keep")
        outcome = ex.execute(
            job, {"PORTAL_USER": "u", "PORTAL_PASSWORD": "pw", "LEAM_JOB_ID": job.id}
        )
        assert isinstance(outcome, Outcome)
        _check_commands(ex, job, outside)
    return ex


@given(
    answer=st.one_of(
        st.tuples(st.sampled_from(CONTENT_TYPES[:3]), ok_job_body),
        st.tuples(st.sampled_from(CONTENT_TYPES[3:6]), xml_scenario),
        st.tuples(st.sampled_from(CONTENT_TYPES), body),
    )
)
def test_popped_answers_build_commands_without_a_shell_inside_the_workdir(answer):
    answer = parse_answer(200, *answer)
    event(
        "runnable job" if isinstance(answer, Job) and not answer.problem else type(answer).__name__
    )  # the mix shows with --hypothesis-show-statistics
    if isinstance(answer, Job) and not answer.problem:
        ex = _execute(answer)
        for _, argv, _, env in ex.calls:  # every word can really be exec'd
            assert all(_encodable(a) for a in argv), argv
            assert all(_encodable(v) for v in env.values())


@settings(max_examples=max(50, EXAMPLES // 2))
@given(
    job_id=hostile_text,
    repository=hostile_text,
    cmdline=hostile_text,
    legacy=st.one_of(st.none(), st.binary(max_size=50)),
)
def test_any_job_builds_commands_without_a_shell_inside_the_workdir(
    job_id, repository, cmdline, legacy
):
    # Straight into the executor, as a job recorded on disk would come back.
    _execute(Job(id=job_id, cmdline=cmdline, repository=repository, legacy_xml=legacy))


@given(repo=hostile_text.filter(lambda r: r.strip() == r and r and _encodable(r)))
def test_legacy_xml_repository_stays_one_argument(repo):
    data = (
        f"<model><scenario><id>j1</id><repository>{_xml_text(repo)}</repository></scenario></model>"
    ).encode()
    answer = parse_answer(200, "application/xml;;charset=UTF-8", data)
    if not isinstance(answer, Job) or answer.problem:
        return  # characters XML cannot carry: refused, which is fine
    with tempfile.TemporaryDirectory() as tmp:
        ex = RecordingExecutor(Path(tmp))
        ex.execute(answer, {})
        checkout = [argv for stage, argv, _, _ in ex.calls if stage == "checkout"]
        sent = repo.replace("\r\n", "\n").replace("\r", "\n")  # XML's own line-end rule
        assert checkout and sent in checkout[0]


# -- repository values that are URLs (leampoll/checkout.py) ---------------------------

URL_HEADS = [
    *SVN_SCHEMES,
    "HTTPS://",
    "Svn://",
    "git://",
    "git@host:",
    "git@",
    "GIT://",
    "-",
    "--config-option=",
    "-o",
    "ext::sh -c",
    "--upload-pack=touch pwned ",
]
url_like = st.builds(
    lambda head, rest, tail: head + rest + tail,
    st.sampled_from(URL_HEADS),
    hostile_text,
    st.sampled_from(["", ".git", "/", ".git/", " ", "\n"]),
)
FIXED_WORDS = {"svn": ["svn", "checkout", "--non-interactive"], "git": ["git", "clone", "--quiet"]}


@given(value=st.one_of(url_like, hostile_text), pad=st.sampled_from(["", " ", "\t", "\n "]))
def test_a_repository_url_is_one_argument_and_never_an_option(value, pad):
    rundir = Path("/srv/leam/work/run_1")
    try:
        checkout = plan(pad + value + pad, rundir)
    except ValueError:
        return  # a command shlex cannot split: the job fails with that reason
    argv = checkout.argv
    assert argv[-1] == str(rundir) and all(isinstance(a, str) for a in argv)
    word = value.strip()
    if checkout.kind == "command":
        # Only what the portal wrote, split as a shell would, plus at most svn's fixed option.
        words, given_words = argv[:-1], shlex.split(word)
        if len(words) == len(given_words) + 1:
            words = [
                *words[: words.index("--non-interactive")],
                *words[words.index("--non-interactive") + 1 :],
            ]
        assert words == given_words
        return
    # A bare URL: the tool's fixed words, the URL verbatim as one argument, the run directory.
    assert argv == [*FIXED_WORDS[checkout.kind], word, str(rundir)]
    assert not word.startswith("-") and not any(c.isspace() for c in word)
    assert checkout.kind == ("git" if is_git_url(word) else "svn")


# -- origins that may receive the credentials (leampoll/origins.py) -------------------

SITE_HOST = "portal.example.org"
AROUND = [
    "",
    "@",
    "\\@",
    ":443@",
    ".",
    "..",
    "%2e",
    "#",
    "?",
    "/",
    "\\",
    ":",
    ":0",
    ":65536",
    ":443",
    ":80",
    "%00",
    "\x00",
    " ",
    "\t",
    "\n",
    "[",
    "]",
    "@evil.example",
    "evil.example@",
    "user:pw@",
    "\u3002",
    "\uff0e",
    "\uff30\uff2f\uff32\uff34\uff21\uff2c",
]
around = st.one_of(st.just(""), st.sampled_from(AROUND), hostile_text)
url_near_site = st.builds(
    lambda scheme, before, after: f"{scheme}{before}{SITE_HOST}{after}",
    st.sampled_from(
        ["https://", "http://", "HTTPS://", "https:/", "https:", "//", "https:\\\\", " https://"]
    ),
    around,
    around,
)


def _connects_to(url: str) -> tuple[str, str, int] | None:
    """Where requests itself would send the request: its own URL preparation and urllib3."""
    try:
        prepared = requests.Request("POST", url).prepare().url or ""
        parts = urllib3.util.parse_url(prepared)
    except (requests.RequestException, ValueError, urllib3.exceptions.HTTPError):
        return None
    scheme = (parts.scheme or "").lower()
    port = parts.port or DEFAULT_PORTS.get(scheme, 0)
    return scheme, (parts.host or "").lower().strip("[]").rstrip("."), port


@given(url=st.one_of(url_near_site, hostile_text))
def test_origin_normalisation_never_raises_and_is_stable(url):
    origin = origin_of(url)
    if origin is None:
        return
    assert origin.scheme in DEFAULT_PORTS and 0 <= origin.port <= 65535
    assert origin.host and origin.host == origin.host.lower() and not origin.host.endswith(".")
    assert origin_of(str(origin)) == origin  # normalising twice changes nothing


@given(url=url_near_site)
def test_a_trusted_url_is_sent_where_the_origin_check_says(url):
    trusted = TrustedOrigins.build(f"https://{SITE_HOST}/portal")
    if not trusted.allows(url):
        return
    # The check and the HTTP library agree on the host: credentials go to the portal only
    # (or nowhere: a URL requests cannot prepare is a failed report, kept for a retry).
    target = _connects_to(url)
    event("allowed, sent" if target else "allowed, requests refuses it")
    assert target in (None, ("https", SITE_HOST, 443)), url


# -- the real spawn: the words arrive as they were sent ----------------------------


@pytest.mark.parametrize("cmdline", ["echo \ud800", "echo a\x00b", "\ud800"])
def test_a_command_no_exec_can_take_fails_the_job_instead_of_the_poller(tmp_path, cmdline):
    # Found by the properties above: a lone surrogate (a JSON escape) or a NUL
    # raised out of the executor and took the poller down.
    with live_lifecycle() as life:
        outcome = Executor(tmp_path, life).execute(Job(id="j", cmdline=cmdline), {})
    assert not outcome.ok and outcome.stage == "run" and "cannot start" in outcome.detail


ECHO_ARGV = "import json, sys; print('ARGV=' + json.dumps(sys.argv[1:]))"
plain_word = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)


@settings(max_examples=max(10, EXAMPLES // 20))
@given(
    words=st.lists(
        st.one_of(
            plain_word,
            st.sampled_from(
                [t for t in TOKENS if _encodable(t)]
                + ["$(touch pwned)", "; touch pwned", "`touch pwned`"]
            ),
        ),
        max_size=6,
    )
)
def test_real_job_receives_its_words_verbatim_and_no_shell_runs(words):
    spawned = []
    real_popen = subprocess.Popen

    def spy(args, *rest, **kwargs):
        spawned.append((args, kwargs.get("shell", False)))
        return real_popen(args, *rest, **kwargs)

    job = Job(id="hostile words", cmdline=shlex.join([sys.executable, "-c", ECHO_ARGV, *words]))
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch.object(subprocess, "Popen", spy),
        live_lifecycle() as life,
    ):
        workdir = Path(tmp)
        ex = Executor(workdir, life, grace=1, job_timeout=30)
        outcome = ex.execute(job, {})
        _, logpath = ex.paths(job)
        log = logpath.read_text("utf-8", "surrogateescape")
        assert outcome.ok, (outcome, log)
        printed = next(line for line in log.splitlines() if line.startswith("ARGV="))
        assert json.loads(printed[5:]) == words
        assert not list(workdir.rglob("pwned"))
    assert spawned and all(isinstance(a, list) and shell is False for a, shell in spawned)


# -- no shell anywhere in the poller's code ----------------------------------------

SHELL_CALLS = {
    "system",
    "popen",
    "getoutput",
    "getstatusoutput",
    "spawnl",
    "spawnlp",
    "spawnv",
    "spawnvp",
    "create_subprocess_shell",
}


def shell_uses(source: str, filename: str = "<source>") -> list[str]:
    """Calls that run a shell: shell= anything but a literal False, os.system and kin."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
        if name in SHELL_CALLS:
            found.append(f"{filename}:{node.lineno} {name}()")
        for kw in node.keywords:
            if kw.arg == "shell" and not (
                isinstance(kw.value, ast.Constant) and kw.value.value is False
            ):
                found.append(f"{filename}:{node.lineno} shell=")
    return found


def test_the_scan_finds_shell_uses():
    source = (
        "import os, subprocess\nsubprocess.run('x', shell=True)\nos.system('x')\n"
        "subprocess.Popen(['x'], shell=flag)\nos.popen('x')\nsubprocess.run(['x'])\n"
    )
    assert [f.split()[1] for f in shell_uses(source)] == ["shell=", "system()", "shell=", "popen()"]


@pytest.mark.parametrize(
    "path",
    sorted(
        [
            *ROOT.glob("leampoll/*.py"),
            *ROOT.glob("roles/*/files/*.py"),
            *ROOT.glob("plugins/*/*.py"),
            *ROOT.glob("playbooks/filter_plugins/*.py"),
        ]
    ),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_shell_in_shipped_code(path):
    assert shell_uses(path.read_text(), str(path.relative_to(ROOT))) == []

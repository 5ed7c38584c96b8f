"""Unit tests for the pure parts: sizes, configuration, run directory names,
backoff, the portal answer parser, outcomes and log tails.

No network, no subprocesses; the whole file runs in well under a second.
"""

from __future__ import annotations

import json
import random
import re
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from leampoll.backoff import IDLE_JITTER, Backoff, idle_wait
from leampoll.config import ConfigError, Size, human, load, parse_size
from leampoll.executor import MAX_NAME, Outcome, rundir_name, tail
from leampoll.portal import LEGACY_CMDLINE, MAX_BODY, Empty, Job, Refused, parse_answer

K, M, G, T = 1024, 1024**2, 1024**3, 1024**4
SITE = "https://portal.example.org"
CREDS = {"PORTAL_USER": "poller", "PORTAL_PASSWORD": "s3cret"}


# ---------------------------------------------------------------------------
# config.parse_size / Size / human
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5G", 5 * G),
        ("512M", 512 * M),
        ("1.5T", 1.5 * T),
        ("100", 100),
        ("0", 0),
        ("64K", 64 * K),
        ("5g", 5 * G),
        ("512m", 512 * M),
        ("1.5t", 1.5 * T),
        ("64k", 64 * K),
        (" 5G ", 5 * G),
        ("\t512M\n", 512 * M),
        ("5 G", 5 * G),
        ("5GB", 5 * G),
        ("5GiB", 5 * G),
        ("2.25G", 2.25 * G),
    ],
)
def test_parse_size_absolute(text, expected):
    size = parse_size(text)
    assert not size.percent
    assert size.value == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("15%", 15.0), ("0%", 0.0), ("100%", 100.0), ("2.5%", 2.5), (" 15 % ", 15.0)],
)
def test_parse_size_percent(text, expected):
    size = parse_size(text)
    assert size.percent
    assert size.value == expected


@pytest.mark.parametrize(
    "text",
    ["abc", "-1G", "5X", "150%", "100.5%", "", "   ", "G", "%", "5G5", "1e3", "5 G B x",
     "-5%", "1,5G", "0x10", "5KG", "nan", "inf"],
)
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("text", ["10000", "15%", " 42 "])
def test_parse_size_without_units_accepts_counts(text):
    assert parse_size(text, units=False).value == float(text.strip().rstrip("%"))


@pytest.mark.parametrize("text", ["5G", "1K", "2t"])
def test_parse_size_without_units_rejects_suffixes(text):
    with pytest.raises(ValueError):
        parse_size(text, units=False)


@pytest.mark.parametrize(
    ("size", "total", "expected"),
    [
        (Size(5 * G), 100 * G, 5 * G),
        (Size(5 * G), 1, 5 * G),  # absolute ignores the total
        (Size(100), 0, 100),
        (Size(15, percent=True), 1000, 150),
        (Size(15, percent=True), 200 * G, 30 * G),
        (Size(100, percent=True), 12345, 12345),
        (Size(0, percent=True), 12345, 0),
        (Size(2.5, percent=True), 1000, 25),
        (Size(10, percent=True), 0, 0),
    ],
)
def test_size_bytes_of(size, total, expected):
    result = size.bytes_of(total)
    assert isinstance(result, int)
    assert result == expected


def test_size_bytes_of_from_parsed_text():
    assert parse_size("15%").bytes_of(10_000) == 1500
    assert parse_size("1.5T").bytes_of(1) == int(1.5 * T)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0"),
        (100, "100"),
        (1023, "1023"),
        (1024, "1.0K"),
        (1536, "1.5K"),
        (512 * M, "512.0M"),
        (5 * G, "5.0G"),
        (1.5 * T, "1.5T"),
        (2048 * T, "2048.0T"),  # T is the largest unit
    ],
)
def test_human(n, expected):
    assert human(n) == expected


@pytest.mark.parametrize(("text", "shown"), [("5G", "5.0G"), ("15%", "15%"), ("100", "100")])
def test_size_str(text, shown):
    assert str(parse_size(text)) == shown


def test_parse_size_huge_number_is_rejected_or_usable():
    huge = "9" * 400
    try:
        size = parse_size(huge)
    except ValueError:
        return
    assert isinstance(size.bytes_of(100 * G), int)


# ---------------------------------------------------------------------------
# config.load
# ---------------------------------------------------------------------------


def test_load_without_url_is_a_config_error():
    with pytest.raises(ConfigError, match="URL"):
        load([], CREDS)


@pytest.mark.parametrize(
    "env",
    [{}, {"PORTAL_USER": "poller"}, {"PORTAL_PASSWORD": "s3cret"},
     {"PORTAL_USER": "", "PORTAL_PASSWORD": "s3cret"},
     {"PORTAL_USER": "poller", "PORTAL_PASSWORD": ""}],
)
def test_load_missing_credentials(env):
    with pytest.raises(ConfigError) as excinfo:
        load([SITE], env)
    assert "PORTAL_USER" in str(excinfo.value)
    assert "PORTAL_PASSWORD" in str(excinfo.value)


@pytest.mark.parametrize(
    "argv",
    [[SITE, "-U", "alice"], [SITE, "-X", "pw"], ["-U", "", "-X", "pw", SITE]],
)
def test_load_partial_credentials_on_command_line(argv):
    with pytest.raises(ConfigError, match="PORTAL_USER"):
        load(argv, {})


@pytest.mark.parametrize(
    "argv",
    [["-U", "alice", "-X", "pw", SITE], [SITE, "--user", "alice", "--password", "pw"]],
)
def test_load_credentials_from_command_line(argv):
    config = load(argv, {})
    assert (config.user, config.password) == ("alice", "pw")


def test_load_credentials_from_environment():
    config = load([SITE], CREDS)
    assert (config.user, config.password) == ("poller", "s3cret")


def test_load_command_line_credentials_win_over_environment():
    config = load([SITE, "-U", "alice", "-X", "pw"], CREDS)
    assert (config.user, config.password) == ("alice", "pw")


def test_load_mixes_command_line_user_and_environment_password():
    config = load([SITE, "-U", "alice"], {"PORTAL_PASSWORD": "s3cret"})
    assert (config.user, config.password) == ("alice", "s3cret")


@pytest.mark.parametrize(
    "url",
    ["ftp://portal.example.org", "portal.example.org", "portal.example.org/region",
     "file:///etc/passwd", "http://", "https:///pop_queue", "javascript:alert(1)",
     "//portal.example.org", "gopher://portal.example.org/"],
)
def test_load_rejects_non_http_urls(url):
    with pytest.raises(ConfigError, match="http"):
        load([url], CREDS)


@pytest.mark.parametrize(
    "url",
    ["https://bob:secret@portal.example.org", "https://bob@portal.example.org",
     "http://bob:secret@portal.example.org:8080/region", "https://:secret@portal.example.org"],
)
def test_load_rejects_credentials_in_url(url):
    with pytest.raises(ConfigError, match="PORTAL_USER"):
        load([url], CREDS)


@pytest.mark.parametrize(
    "url",
    ["http://localhost:8080/portal", "https://portal.example.org", "HTTPS://portal.example.org",
     "https://portal.example.org:8443/region", "http://127.0.0.1:8080/"],
)
def test_load_accepts_http_urls(url):
    assert load([url], CREDS).site == url.rstrip("/")


def test_load_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load([SITE], CREDS)
    assert config.speed == 20.0
    assert config.popq == "/pop_queue"
    assert config.min_free_disk == Size(5 * G)
    assert not config.min_free_disk.percent
    assert config.min_free_disk.bytes_of(T) == 5 * G
    assert config.min_free_mem == Size(G)
    assert config.min_free_mem.bytes_of(T) == G
    assert config.max_backoff == 600.0
    assert 0 < config.checkout_timeout < 3600
    assert config.idle == 0
    assert config.job_timeout == 0.0
    assert not (config.preserve or config.debug or config.once or config.check)
    assert config.pop_url == SITE + "/pop_queue"


def test_load_workdir_defaults_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load([SITE], CREDS)
    assert config.workdir.is_absolute()
    assert config.workdir == Path.cwd()
    assert config.workdir.resolve() == tmp_path.resolve()
    assert config.state_dir == config.workdir / ".leampoll"
    assert config.project == tmp_path.name


def test_load_workdir_option(tmp_path):
    config = load([SITE, "--workdir", str(tmp_path / "jobs")], CREDS)
    assert config.workdir == tmp_path / "jobs"


def test_load_relative_workdir_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load([SITE, "--workdir", "jobs"], CREDS)
    assert config.workdir.is_absolute()
    assert config.workdir == Path.cwd() / "jobs"


@pytest.mark.parametrize(
    ("site", "popq", "pop_url"),
    [
        ("https://example.org/region/", "/pop_queue", "https://example.org/region/pop_queue"),
        ("https://example.org/region", "pop_queue", "https://example.org/region/pop_queue"),
        ("https://example.org", "/luc/pop", "https://example.org/luc/pop"),
    ],
)
def test_load_pop_url(site, popq, pop_url):
    config = load([site, "-q", popq], CREDS)
    assert config.pop_url == pop_url
    assert not config.site.endswith("/")


def test_load_old_flags():
    config = load(["-s", "5", "-i", "3", "-q", "/pq", "-p", "-d", "-u", SITE], CREDS)
    assert config.speed == 5.0
    assert config.idle == 3
    assert config.popq == "/pq"
    assert config.preserve
    assert config.debug


def test_load_sizes():
    config = load([SITE, "--min-free-disk", "10%", "--min-free-mem", "512M",
                   "--min-free-inodes", "5%"], CREDS)
    assert config.min_free_disk == Size(10, percent=True)
    assert config.min_free_mem == Size(512 * M)
    assert config.min_free_inodes == Size(5, percent=True)


@pytest.mark.parametrize("value", ["abc", "5X", "150%", "-1G", "", "G", "1,5G"])
def test_load_bad_min_free_disk_exits_2(value, capsys):
    with pytest.raises(SystemExit) as excinfo:
        load([SITE, f"--min-free-disk={value}"], CREDS)
    assert excinfo.value.code == 2
    assert "min-free-disk" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["--min-free-mem=lots"], ["--min-free-inodes=5G"], ["--speed=-1"], ["--speed=nan"],
     ["--idle=-2"], ["--idle=1.5"], ["--max-backoff=x"], ["--job-timeout=-5"],
     ["--once", "--check"], ["--no-such-option"]],
)
def test_load_bad_options_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as excinfo:
        load([SITE, *argv], CREDS)
    assert excinfo.value.code == 2
    capsys.readouterr()


def test_load_zero_speed_is_refused_unless_once():
    with pytest.raises(ConfigError, match="speed"):
        load([SITE, "--speed", "0"], CREDS)
    assert load([SITE, "--speed", "0", "--once"], CREDS).speed == 0


def test_load_version_exits_0(capsys):
    with pytest.raises(SystemExit) as excinfo:
        load(["-v"], {})
    assert excinfo.value.code == 0
    assert "leampoll" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# executor.rundir_name
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# backoff
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "cap", "floor"),
    [(20, 600, 1), (1, 600, 1), (1, 60, 5), (0.5, 10, 1), (3, 3, 1), (10, 0.5, 1), (2, 100, 0)],
)
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_backoff_bounds(base, cap, floor, seed):
    b = Backoff(base=base, cap=cap, floor=floor, rng=random.Random(seed))
    for n in range(60):
        ceiling = min(cap, base * 2**n)
        wait = b.next()
        assert min(floor, ceiling) <= wait <= cap
        assert wait <= max(ceiling, min(floor, ceiling))
    assert b.failures == 60


@pytest.mark.parametrize(("base", "cap"), [(1, 600), (20, 600), (2, 1000)])
def test_backoff_ceiling_grows_until_cap(base, cap):
    rng = random.Random(42)
    previous = 0.0
    for n in range(12):
        draws = [Backoff(base=base, cap=cap, failures=n, rng=rng).next() for _ in range(400)]
        ceiling = min(cap, base * 2**n)
        top = max(draws)
        assert top <= ceiling
        assert top >= 0.95 * ceiling
        assert top >= previous * 0.95
        previous = top
    assert previous >= 0.95 * cap


def test_backoff_is_jittered():
    b = Backoff(base=10, cap=600, rng=random.Random(3))
    draws = []
    for _ in range(50):
        b.failures = 4
        draws.append(b.next())
    assert len(set(draws)) > 40


def test_backoff_counts_failures_and_reset_returns_to_start():
    b = Backoff(base=4, cap=600, floor=1, rng=random.Random(5))
    for _ in range(8):
        b.next()
    assert b.failures == 8
    b.reset()
    assert b.failures == 0
    assert 1 <= b.next() <= 4
    assert b.failures == 1


def test_backoff_reset_sequence_matches_fresh():
    first = Backoff(base=2, cap=300, rng=random.Random(9))
    fresh = Backoff(base=2, cap=300, rng=random.Random(9))
    for _ in range(10):
        first.next()
    first.reset()
    fresh_bounds = [min(300, 2 * 2**n) for n in range(10)]
    for bound in fresh_bounds:
        assert first.next() <= bound
    assert fresh.failures == 0


@pytest.mark.parametrize("retry_after", [0.0, 5.0, 100.0, 599.0, 600.0, 601.0, 10_000.0, 1e12])
@pytest.mark.parametrize("failures", [0, 3, 20])
def test_backoff_retry_after_raises_wait_within_cap(retry_after, failures):
    cap = 600.0
    b = Backoff(base=1, cap=cap, failures=failures, rng=random.Random(11))
    wait = b.next(retry_after)
    assert wait <= cap
    assert wait >= min(retry_after, cap)
    assert b.failures == failures + 1


def test_backoff_retry_after_does_not_lower_wait():
    for seed in range(20):
        plain = Backoff(base=100, cap=600, failures=2, rng=random.Random(seed)).next()
        with_header = Backoff(base=100, cap=600, failures=2, rng=random.Random(seed)).next(1.0)
        assert with_header == plain


def test_backoff_many_failures_does_not_overflow():
    b = Backoff(base=1, cap=600, failures=10_000, rng=random.Random(0))
    assert 1 <= b.next() <= 600


@pytest.mark.parametrize("speed", [0.5, 1, 20, 3600])
def test_idle_wait_within_bounds(speed):
    rng = random.Random(speed)
    draws = [idle_wait(speed, rng) for _ in range(500)]
    assert all(0.9 * speed <= w <= speed for w in draws)
    assert min(draws) < 0.92 * speed  # it is jittered, not constant
    assert max(draws) > 0.98 * speed
    assert pytest.approx(0.1) == IDLE_JITTER


def test_idle_wait_without_rng():
    for _ in range(100):
        assert 18 <= idle_wait(20) <= 20


# ---------------------------------------------------------------------------
# portal.parse_answer
# ---------------------------------------------------------------------------

JSON = "application/json"
FULL_JOB = {
    "status": "OK",
    "id": "chicago-2040-base",
    "title": "Chicago 2040 baseline",
    "url": "https://portal.example.org/luc/chicago-2040-base",
    "repository": "svn co https://svn.example.org/luc/trunk",
    "cmdline": "python startup.py -c config.xml",
    "on_success": "https://portal.example.org/luc/chicago-2040-base/success",
    "on_error": "https://portal.example.org/luc/chicago-2040-base/error",
}
SCENARIO_XML = (b"<job><scenario><id>s1</id><title>T</title>"
                b"<repository>https://svn.example.org/x</repository></scenario></job>")
LOGIN_PAGE = (b"<!DOCTYPE html><html><head><title>Log in</title></head><body>"
              b"<form action='login_form' method='post'><input name='__ac_name'/>"
              b"<input name='__ac_password' type='password'/></form></body></html>")


def answer(data, status=200, ctype=JSON, retry_after=None):
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    return parse_answer(status, ctype, body, retry_after)


def test_ok_json_is_a_job_with_all_fields():
    job = answer(FULL_JOB)
    assert isinstance(job, Job)
    assert job.id == "chicago-2040-base"
    assert job.title == "Chicago 2040 baseline"
    assert job.url == FULL_JOB["url"]
    assert job.repository == "svn co https://svn.example.org/luc/trunk"
    assert job.cmdline == "python startup.py -c config.xml"
    assert job.on_success == FULL_JOB["on_success"]
    assert job.on_error == FULL_JOB["on_error"]
    assert job.problem == ""
    assert job.legacy_xml is None
    assert job.requeue_url == FULL_JOB["url"] + "/requeue"


def test_ok_json_minimal_job():
    job = answer({"status": "OK", "id": "j1", "cmdline": "true"})
    assert isinstance(job, Job)
    assert (job.id, job.cmdline, job.repository, job.problem) == ("j1", "true", "", "")
    assert job.requeue_url == ""


def test_unknown_fields_are_ignored():
    job = answer({**FULL_JOB, "extra": {"nested": [1, 2]}, "legacy_xml": "x", "problem": "p"})
    assert isinstance(job, Job)
    assert job.problem == ""
    assert job.legacy_xml is None


def test_job_dict_round_trip():
    job = answer(FULL_JOB)
    assert Job.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    legacy = parse_answer(200, "application/xml", SCENARIO_XML)
    assert Job.from_dict(json.loads(json.dumps(legacy.to_dict()))) == legacy


def test_empty_json():
    assert answer({"status": "EMPTY"}) == Empty()


@pytest.mark.parametrize(
    "ctype",
    ["application/json; charset=utf-8", "application/json;charset=UTF-8", "Application/JSON",
     " application/json ", "application/json; charset=iso-8859-1"],
)
def test_json_content_type_variants(ctype):
    assert isinstance(answer(FULL_JOB, ctype=ctype), Job)
    assert answer({"status": "EMPTY"}, ctype=ctype) == Empty()


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-32"])
def test_json_body_encodings(encoding):
    body = json.dumps({**FULL_JOB, "title": "Chicago \u00e9t\u00e9"}).encode(encoding)
    job = answer(body)
    assert isinstance(job, Job)
    assert job.title == "Chicago \u00e9t\u00e9"


@pytest.mark.parametrize("ctype", ["text/html", "text/html; charset=utf-8", "TEXT/HTML"])
def test_html_login_page_with_200_is_refused(ctype):
    result = answer(LOGIN_PAGE, ctype=ctype)
    assert isinstance(result, Refused)
    assert "login" in result.reason.lower()
    assert "credentials" in result.reason


def test_other_html_is_refused_without_login_hint():
    result = answer(b"<html><body>Maintenance</body></html>", ctype="text/html")
    assert isinstance(result, Refused)
    assert "login" not in result.reason.lower()


@pytest.mark.parametrize("status", [401, 403, 302, 500, 502, 503, 504, 404, 201, 204, 0])
@pytest.mark.parametrize("body", [LOGIN_PAGE, b"", json.dumps(FULL_JOB).encode()])
def test_non_200_is_refused(status, body):
    result = answer(body, status=status, ctype="text/html")
    assert isinstance(result, Refused)
    assert f"HTTP {status}" in result.reason
    as_json = answer(body, status=status, ctype=JSON)
    assert isinstance(as_json, Refused) and as_json.retry_after is None
    assert as_json.reason == result.reason.replace("text/html", JSON)


def test_non_200_reason_is_short():
    result = answer(b"x" * 100_000, status=500, ctype="text/html")
    assert isinstance(result, Refused)
    assert len(result.reason) < 200


@pytest.mark.parametrize(
    ("header", "expected"),
    [("30", 30.0), (" 30 ", 30.0), ("0", 0.0), ("3600", 3600.0), (None, None), ("", None),
     ("soon", None), ("-5", None), ("1.5", None), ("Fri, 31 Foo 2020 00:00:00 GMT", None)],
)
@pytest.mark.parametrize("status", [429, 502, 503])
def test_retry_after_seconds(header, expected, status):
    result = answer(b"busy", status=status, ctype="text/plain", retry_after=header)
    assert isinstance(result, Refused)
    assert result.retry_after == expected


def test_retry_after_http_date_in_future():
    header = formatdate(time.time() + 120, usegmt=True)
    result = answer(b"", status=503, ctype="text/html", retry_after=header)
    assert isinstance(result, Refused)
    assert 100 <= result.retry_after <= 121


@pytest.mark.parametrize(
    "header",
    ["Wed, 21 Oct 2015 07:28:00 GMT", "Sun, 06 Nov 1994 08:49:37 GMT"],
)
def test_retry_after_http_date_in_past_is_zero(header):
    result = answer(b"", status=503, ctype="text/html", retry_after=header)
    assert result.retry_after == 0.0


@pytest.mark.parametrize("header", ["\u00b2", "3\u00b9", "\u00b3"])
@pytest.mark.parametrize("status", [200, 503])
def test_retry_after_superscript_digits_do_not_raise(header, status):
    result = answer(FULL_JOB, status=status, retry_after=header)
    assert isinstance(result, (Job, Refused))


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"{'status': 'OK'}", b"not json", b'{"status": "OK",}', b"\xff\xfe\x00",
     b"[" * 100_000, b'{"status": "EMPTY"} trailing', b"NaN-ish", b"1" * 5000],
)
def test_malformed_json_is_refused(body):
    result = answer(body)
    assert isinstance(result, Refused)
    assert len(result.reason) < 200


@pytest.mark.parametrize(
    ("data", "word"),
    [([FULL_JOB], "list"), ("OK", "str"), ("EMPTY", "str"), (42, "int"), (None, "NoneType"),
     (True, "bool"), ([], "list")],
)
def test_json_non_object_is_refused(data, word):
    result = answer(data)
    assert isinstance(result, Refused)
    assert word in result.reason


@pytest.mark.parametrize(
    "data",
    [{"status": "ERROR"}, {"status": "error"}, {"status": "ok", "id": "a", "cmdline": "b"},
     {"status": "empty"}, {}, {"id": "a", "cmdline": "b"}, {"status": None},
     {"status": ["OK"]}, {"status": {"OK": 1}}, {"status": 1}, {"status": "QUEUED"},
     {"status": "x" * 10_000}],
)
def test_json_other_status_is_refused(data):
    result = answer(data)
    assert isinstance(result, Refused)
    assert "status" in result.reason
    assert len(result.reason) < 100


@pytest.mark.parametrize(
    "ctype",
    ["text/plain", "application/octet-stream", "", "application/jsonp", "application/x-json",
     "text/json", "multipart/form-data", "json"],
)
def test_unknown_content_type_is_refused(ctype):
    result = answer(FULL_JOB, ctype=ctype)
    assert isinstance(result, Refused)
    assert "content type" in result.reason


def test_none_content_type_is_refused():
    result = parse_answer(200, None, json.dumps(FULL_JOB).encode())
    assert isinstance(result, Refused)


@pytest.mark.parametrize("ctype", [JSON, "application/xml", "text/html"])
def test_body_over_one_mib_is_refused(ctype):
    body = b'{"status": "EMPTY"}' + b" " * MAX_BODY
    assert len(body) > 1024 * 1024
    result = answer(body, ctype=ctype)
    assert isinstance(result, Refused)
    assert "too large" in result.reason


def test_body_of_exactly_one_mib_is_parsed():
    head = b'{"status": "EMPTY"}'
    body = head + b" " * (MAX_BODY - len(head))
    assert len(body) == MAX_BODY == 1024 * 1024
    assert answer(body) == Empty()


@pytest.mark.parametrize(
    ("data", "missing"),
    [
        ({"status": "OK", "cmdline": "run"}, ["id"]),
        ({"status": "OK", "id": "j1"}, ["cmdline"]),
        ({"status": "OK"}, ["id", "cmdline"]),
        ({"status": "OK", "id": "", "cmdline": "run"}, ["id"]),
        ({"status": "OK", "id": "   ", "cmdline": "run"}, ["id"]),
        ({"status": "OK", "id": "j1", "cmdline": " \t\n"}, ["cmdline"]),
        ({"status": "OK", "id": 5, "cmdline": "run"}, ["id"]),
        ({"status": "OK", "id": "j1", "cmdline": ["x"]}, ["cmdline"]),
        ({"status": "OK", "id": 5, "cmdline": ["x"]}, ["id", "cmdline"]),
        ({"status": "OK", "id": None, "cmdline": "run"}, ["id"]),
        ({"status": "OK", "id": True, "cmdline": "run"}, ["id"]),
        ({"status": "OK", "id": {"a": 1}, "cmdline": "run"}, ["id"]),
        ({"status": "OK", "id": "j1", "cmdline": 1.5}, ["cmdline"]),
        ({"status": "OK", "id": "j\x001", "cmdline": "run"}, ["id"]),
        ({"status": "OK", "id": "j1", "cmdline": "run\x00evil"}, ["cmdline"]),
        ({"status": "OK", "id": "j1", "cmdline": "x" * (64 * 1024 + 1)}, ["cmdline"]),
    ],
)
def test_ok_without_id_or_cmdline_is_a_job_with_a_problem(data, missing):
    job = answer({**{k: v for k, v in FULL_JOB.items() if k not in ("id", "cmdline")}, **data})
    assert isinstance(job, Job)  # popped all the same: it must be reported, never run
    assert job.problem
    for key in missing:
        assert key in job.problem
    for key in {"id", "cmdline"} - set(missing):
        assert key not in job.problem
    assert job.on_error == FULL_JOB["on_error"]  # so the error report can go out


@pytest.mark.parametrize("key", ["repository", "title", "url", "on_success", "on_error"])
@pytest.mark.parametrize("value", [5, ["x"], {"a": "b"}, None, False, "a\x00b"])
def test_non_string_optional_fields_are_empty(key, value):
    job = answer({**FULL_JOB, key: value})
    assert isinstance(job, Job)
    assert getattr(job, key) == ""
    assert job.problem == ""


# -- legacy XML ---------------------------------------------------------------


@pytest.mark.parametrize("ctype", ["application/xml", "text/xml", "text/xml; charset=utf-8"])
@pytest.mark.parametrize(
    "body",
    [b"<job>EMPTY</job>", b"<?xml version='1.0'?><queue>EMPTY</queue>", b"<r>\n  EMPTY \n</r>"],
)
def test_legacy_xml_empty(ctype, body):
    assert parse_answer(200, ctype, body) == Empty()


@pytest.mark.parametrize("body", [b"<job>ERROR</job>", b"<r> ERROR </r>"])
def test_legacy_xml_error_is_refused(body):
    result = parse_answer(200, "application/xml", body)
    assert isinstance(result, Refused)
    assert "ERROR" in result.reason


@pytest.mark.parametrize("ctype", ["application/xml", "text/xml"])
def test_legacy_xml_scenario_is_a_job(ctype):
    job = parse_answer(200, ctype, SCENARIO_XML)
    assert isinstance(job, Job)
    assert job.id == "s1"
    assert job.title == "T"
    assert job.cmdline == "python startup.py -c config.xml" == LEGACY_CMDLINE
    assert job.repository == "svn co https://svn.example.org/x"
    assert job.legacy_xml == SCENARIO_XML
    assert job.problem == ""
    assert job.url == job.on_success == job.on_error == ""


def test_legacy_xml_scenario_without_repository():
    body = b"<job><scenario><id> s2 </id></scenario></job>"
    job = parse_answer(200, "application/xml", body)
    assert isinstance(job, Job)
    assert (job.id, job.repository, job.title) == ("s2", "", "")


@pytest.mark.parametrize(
    "body",
    [b"<job/>", b"<job><scenario><title>T</title></scenario></job>",
     b"<job><scenario><id>  </id></scenario></job>", b"<job><id>s1</id></job>"],
)
def test_legacy_xml_without_scenario_id_is_refused(body):
    assert isinstance(parse_answer(200, "application/xml", body), Refused)


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
               for i in range(1, 10))
    + b"]><job>&lol9;</job>"
)


@pytest.mark.parametrize(
    "body",
    [
        BILLION_LAUGHS,
        b'<!DOCTYPE job [<!ENTITY x SYSTEM "file:///etc/passwd">]><job>&x;</job>',
        b'<!DOCTYPE job [<!ENTITY x "EMPTY">]><job>&x;</job>',
        b"<!DOCTYPE job><job>EMPTY</job>",
        b'<?xml version="1.0"?>\n<!DOCTYPE job SYSTEM "http://evil.example/x.dtd">'
        + SCENARIO_XML,
        b'<!ENTITY x "y"><job>EMPTY</job>',
    ],
)
def test_legacy_xml_with_doctype_or_entity_is_refused_quickly(body):
    start = time.perf_counter()
    result = parse_answer(200, "application/xml", body)
    assert time.perf_counter() - start < 0.5
    assert isinstance(result, Refused)
    assert "DOCTYPE" in result.reason


def test_legacy_xml_utf16_doctype_is_refused():
    doc = ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE job [<!ENTITY x "s1">]>'
           "<job><scenario><id>&x;</id></scenario></job>")
    result = parse_answer(200, "application/xml", doc.encode("utf-16"))
    assert isinstance(result, Refused)


@pytest.mark.parametrize(
    "body",
    [b"", b"<job>", b"<job><scenario></job>", b"not xml", b"<a></b>", b"<job>EMPTY</job><x/>",
     b"\xff\xfe\x00<", b"<job>\x00</job>", b"<?xml version='1.0' encoding='utf-8'?>",
     b"<job attr=>EMPTY</job>"],
)
def test_legacy_xml_malformed_is_refused(body):
    result = parse_answer(200, "application/xml", body)
    assert isinstance(result, Refused)
    assert "XML" in result.reason


@pytest.mark.parametrize("encoding", ["utf-7", "shift_jis", "big5", "no-such-codec"])
def test_legacy_xml_unsupported_encoding_does_not_raise(encoding):
    body = f'<?xml version="1.0" encoding="{encoding}"?><job>EMPTY</job>'.encode()
    result = parse_answer(200, "application/xml", body)
    assert isinstance(result, (Empty, Refused))


# -- never raises -------------------------------------------------------------

FUZZ_TYPES = ["application/json", "application/json; charset=utf-8", "application/xml",
              "text/xml", "text/html", "", "text/plain", "APPLICATION/JSON;;;", ";", "\x00"]
FUZZ_PREFIXES = [b"", b'{"status": "OK", "id": ', b'{"status": "EMPTY"', b"<?xml version='1.0'?>",
                 b"<job>", b"<job><scenario><id>", b"\xff\xfe", b"\xef\xbb\xbf", b"[", b'"',
                 b"<!DOCTYPE"]
FUZZ_RETRY = [None, "", "30", "x", "Wed, 21 Oct 2015 07:28:00 GMT", "Thu, 31 Dec 9999 23:59:59 GMT",
              "Fri, 13 Foo 2020 99:99:99 GMT", "Mon, 01 Jan 2020 00:00:00 +9999", "9" * 50]


def test_parse_answer_never_raises_on_random_input():
    rng = random.Random(20240601)
    kinds = {Job: 0, Empty: 0, Refused: 0}
    for _ in range(400):
        body = rng.choice(FUZZ_PREFIXES) + rng.randbytes(rng.randrange(0, 80))
        status = rng.choice([200, 200, 200, 200, 302, 401, 500, 503])
        result = parse_answer(status, rng.choice(FUZZ_TYPES), body, rng.choice(FUZZ_RETRY))
        assert type(result) in kinds
        kinds[type(result)] += 1
        if isinstance(result, Job):
            assert result.problem or (result.id.strip() and result.cmdline.strip())
        if isinstance(result, Refused):
            assert isinstance(result.reason, str)
            assert result.reason
    assert kinds[Refused] > 300


def test_parse_answer_never_raises_on_random_json_objects():
    rng = random.Random(7)
    values = [None, True, 0, -1, 1.5, "", "OK", "EMPTY", "x" * 70_000, [], {}, ["OK"], {"id": 1},
              "\x00", "\ud800"]
    for _ in range(300):
        data = {k: rng.choice(values) for k in ("status", "id", "cmdline", "repository", "title",
                                                 "url", "on_success", "on_error")
                if rng.random() < 0.8}
        if rng.random() < 0.5:
            data["status"] = "OK"
        body = json.dumps(data).encode()
        result = parse_answer(200, JSON, body)
        assert isinstance(result, (Job, Empty, Refused))
        if isinstance(result, Job):
            assert data.get("status") == "OK"
            assert result.problem or (result.id and result.cmdline)
            for key in ("id", "cmdline", "repository", "title", "url", "on_success", "on_error"):
                value = getattr(result, key)
                assert isinstance(value, str)
                assert "\x00" not in value
                assert len(value) <= 64 * 1024


def test_deeply_nested_json_is_refused():
    for depth in (500, 990, 1000, 5000, 100_000):
        body = b'{"status": ' + b"[" * depth + b"]" * depth + b"}"
        assert isinstance(answer(body), Refused)


# ---------------------------------------------------------------------------
# executor.Outcome.describe
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# executor.tail
# ---------------------------------------------------------------------------


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

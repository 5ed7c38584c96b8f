"""Unit tests of config: sizes (parse_size, Size, human) and the options load() makes
of a command line and an environment.

No network, no subprocesses.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from leampoll.config import ConfigError
from leampoll.loading import load
from leampoll.units import Size, human, parse_size

K, M, G, T = 1024, 1024**2, 1024**3, 1024**4
SITE = "https://portal.example.org"
LUC = SITE + "/luc"
CREDS = {"PORTAL_USER": "poller", "PORTAL_PASSWORD": "s3cret"}


# -- config.parse_size / Size / human ----------------------------------------------------


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
    [
        "abc",
        "-1G",
        "5X",
        "150%",
        "100.5%",
        "",
        "   ",
        "G",
        "%",
        "5G5",
        "1e3",
        "5 G B x",
        "-5%",
        "1,5G",
        "0x10",
        "5KG",
        "nan",
        "inf",
    ],
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


# -- config.load -------------------------------------------------------------------------


def test_load_without_url_is_a_config_error():
    with pytest.raises(ConfigError, match="URL"):
        load([], CREDS)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"PORTAL_USER": "poller"},
        {"PORTAL_PASSWORD": "s3cret"},
        {"PORTAL_USER": "", "PORTAL_PASSWORD": "s3cret"},
        {"PORTAL_USER": "poller", "PORTAL_PASSWORD": ""},
    ],
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
    [
        "ftp://portal.example.org",
        "portal.example.org",
        "portal.example.org/region",
        "file:///etc/passwd",
        "http://",
        "https:///pop_queue",
        "javascript:alert(1)",
        "//portal.example.org",
        "gopher://portal.example.org/",
    ],
)
def test_load_rejects_non_http_urls(url):
    with pytest.raises(ConfigError, match="http"):
        load([url], CREDS)


@pytest.mark.parametrize(
    "url",
    [
        "https://bob:secret@portal.example.org",
        "https://bob@portal.example.org",
        "http://bob:secret@portal.example.org:8080/region",
        "https://:secret@portal.example.org",
    ],
)
def test_load_rejects_credentials_in_url(url):
    with pytest.raises(ConfigError, match="PORTAL_USER"):
        load([url], CREDS)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8080/portal",
        "https://portal.example.org",
        "HTTPS://portal.example.org",
        "https://portal.example.org:8443/region",
        "http://127.0.0.1:8080/",
    ],
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
    config = load(
        [SITE, "--min-free-disk", "10%", "--min-free-mem", "512M", "--min-free-inodes", "5%"], CREDS
    )
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
    [
        ["--min-free-mem=lots"],
        ["--min-free-inodes=5G"],
        ["--speed=-1"],
        ["--speed=nan"],
        ["--idle=-2"],
        ["--idle=1.5"],
        ["--max-backoff=x"],
        ["--job-timeout=-5"],
        ["--once", "--check"],
        ["--no-such-option"],
    ],
)
def test_load_bad_options_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as excinfo:
        load([SITE, *argv], CREDS)
    assert excinfo.value.code == 2
    capsys.readouterr()


@pytest.mark.parametrize(
    "argv",
    [
        ["--job-timeout", "inf"],  # time.sleep(inf) is an OverflowError
        ["--speed", "inf"],
        ["--tasks-max", "5.0"],
        ["--tasks-max", str(2**22)],  # the unit gets one more: job-unit refuses > 2^22
    ],
)
def test_load_refuses_what_a_job_or_the_helper_cannot_take(argv, capsys):
    with pytest.raises(SystemExit) as excinfo:
        load([SITE, *argv], CREDS)
    assert excinfo.value.code == 2
    capsys.readouterr()


def test_load_tasks_max_up_to_the_helpers_bound():
    assert load([SITE, "--tasks-max", str(2**22 - 1)], CREDS).tasks_max == 2**22 - 1


def test_load_zero_speed_is_refused_unless_once():
    with pytest.raises(ConfigError, match="speed"):
        load([SITE, "--speed", "0"], CREDS)
    assert load([SITE, "--speed", "0", "--once"], CREDS).speed == 0


def test_load_version_exits_0(capsys):
    with pytest.raises(SystemExit) as excinfo:
        load(["-v"], {})
    assert excinfo.value.code == 0
    assert "leampoll" in capsys.readouterr().out


def test_trusted_origin_option(tmp_path):
    config = load(
        [
            "--trusted-origin",
            "https://public.example.org",
            "--trusted-origin",
            "http://localhost:8080",
            "--workdir",
            str(tmp_path),
            LUC,
        ],
        CREDS,
    )
    assert config.trusted.allows("http://localhost:8080/luc/x")
    assert config.trusted.allows("https://public.example.org/luc/x")
    with pytest.raises(ConfigError, match="--trusted-origin"):
        load(["--trusted-origin", "public.example.org", LUC], CREDS)


def test_new_options_defaults(tmp_path):
    config = load(["--workdir", str(tmp_path), LUC], CREDS)
    assert config.auth_check_interval == 600 and not config.keep_failed_running
    assert config.trusted_origins == ()
    config = load(
        ["--workdir", str(tmp_path), "--keep-failed-running", "--auth-check-interval", "60", LUC],
        CREDS,
    )
    assert config.auth_check_interval == 60 and config.keep_failed_running

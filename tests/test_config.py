"""Configuration sources: LEAMPOLL_* environment, --config TOML file, precedence,
the password file and SIGHUP. Through the real `leampoll` command against the
portal stand-in; the generic layer also against a parser of other options.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
from pathlib import Path

import pytest

from leampoll import sources
from leampoll.config import ConfigError
from leampoll.loading import load
from leampoll.options import build_parser
from testing.pollers import poller_flags
from tests.conftest import LEAMPOLL, PASSWORD, USER, password_file

pytestmark = pytest.mark.timeout(120)

NEW_PASSWORD = "r0tated-Pa55word"


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LEAMPOLL, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )


# -- the real command -------------------------------------------------------------------


def test_environment_sets_options_and_site(portal, workdir, env, tmp_path):
    env.update(
        LEAMPOLL_SITE=portal.url,
        LEAMPOLL_IDLE="2",
        LEAMPOLL_WORKDIR=str(workdir),
        LEAMPOLL_MIN_FREE_DISK="1M",
        LEAMPOLL_MIN_FREE_MEM="1M",
        LEAMPOLL_SPEED="0.2",
        LEAMPOLL_PRESERVE="true",
    )
    portal.queue("j1", "true")
    out = run([], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert portal.status["j1"] == "complete"
    assert (workdir / "j1").is_dir()  # LEAMPOLL_PRESERVE kept the run directory
    assert len(portal.requests_of("pop")) == 3  # the job, then LEAMPOLL_IDLE empty polls


def test_config_file_sets_options(portal, workdir, env, tmp_path):
    config = tmp_path / "leampoll.toml"
    config.write_text(
        f'site = "{portal.url}"\nidle = 2\nworkdir = "{workdir}"\n'
        'min-free-disk = "1M"\nmin_free_mem = "1M"\nspeed = 0.2\n'
        "preserve = true\n"
    )
    portal.queue("j1", "true")
    out = run(["--config", str(config)], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert portal.status["j1"] == "complete" and (workdir / "j1").is_dir()
    assert len(portal.requests_of("pop")) == 3


@pytest.mark.parametrize(
    ("flag", "environ", "file", "popped"),
    [
        (True, True, True, "/flag"),
        (False, True, True, "/env"),
        (False, False, True, "/file"),
        (False, False, False, "/pop_queue"),
    ],
)
def test_precedence_flags_environment_file_defaults(
    portal, workdir, env, tmp_path, flag, environ, file, popped
):
    """The pop view path each layer names is the one the portal sees popped."""
    config = tmp_path / "leampoll.toml"
    config.write_text('popq = "/file"\n' if file else "")
    env["LEAMPOLL_CONFIG"] = str(config)
    if environ:
        env["LEAMPOLL_POPQ"] = "/env"
    args = [*poller_flags(workdir), "--once", *(["--popq", "/flag"] if flag else []), portal.url]
    run(args, env, tmp_path)
    assert [r.path for r in portal.requests_of("pop") + portal.requests_of("other")] == [
        "/portal" + popped
    ]


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ({"LEAMPOLL_SPEDE": "1"}, "environment variable LEAMPOLL_SPEDE matches no option"),
        ({"LEAMPOLL_SPEED": "fast"}, "LEAMPOLL_SPEED: invalid value 'fast' for --speed"),
        ({"LEAMPOLL_MIN_FREE_DISK": "lots"}, "LEAMPOLL_MIN_FREE_DISK: 'lots' is not a size"),
        ({"LEAMPOLL_PRESERVE": "maybe"}, "LEAMPOLL_PRESERVE: expects a boolean"),
        ({"file": "spede = 1\n"}, "key 'spede' matches no option (did you mean 'speed'?)"),
        ({"file": "[speed]\nx = 1\n"}, "key 'speed': expects a value as --speed takes it"),
        ({"file": "speed = [1, 2]\n"}, "key 'speed': expects one value, got a list"),
        ({"file": "speed = = 1\n"}, "not valid TOML"),
        ({"file": 'password = "x"\n'}, "key 'password': a config file may not hold the password"),
    ],
)
def test_bad_settings_exit_2_naming_the_variable_or_key(
    portal, workdir, env, tmp_path, setting, needle
):
    config = tmp_path / "leampoll.toml"
    config.write_text(setting.pop("file", ""))
    env.update(setting)
    out = run([*poller_flags(workdir), "--config", str(config), portal.url], env, tmp_path)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert needle in last
    if "key" in needle:
        assert str(config) in last
    assert not portal.received


def test_missing_config_file_exits_2(portal, env, tmp_path):
    out = run(["--config", str(tmp_path / "nope.toml"), portal.url], env, tmp_path)
    assert out.returncode == 2 and "nope.toml: No such file" in out.stderr


def test_once_from_environment_and_check_flag(portal, workdir, env, tmp_path):
    """A flag of an exclusive group overrides the group's setting from the environment."""
    env["LEAMPOLL_ONCE"] = "1"
    portal.queue("j", "true")
    out = run([*poller_flags(workdir), "--check", portal.url], env, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not portal.requests_of("pop")
    env["LEAMPOLL_CHECK"] = "yes"
    out = run([*poller_flags(workdir), portal.url], env, tmp_path)
    assert out.returncode == 2
    assert "LEAMPOLL_ONCE and LEAMPOLL_CHECK cannot be used together" in out.stderr


# -- the password file ---------------------------------------------------------------


@pytest.fixture
def file_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    del env["PORTAL_PASSWORD"]
    env["PORTAL_PASSWORD_FILE"] = str(password_file(tmp_path / "portal.password", PASSWORD))
    return env


def test_password_file_rotated_is_used_after_sighup_without_restart(
    portal, start_poller, file_env, tmp_path
):
    go = tmp_path / "go"
    # The job checks the password it was given, and waits (bounded) for the test.
    portal.queue(
        "j1",
        "sh -c "
        + repr(
            f'test "$PORTAL_PASSWORD" = "{PASSWORD}" || exit 3; '
            f"for i in $(seq 600); do [ -e {go} ] && exit 0; sleep 0.05; done; exit 1"
        ),
    )
    p = start_poller()
    portal.wait_for(lambda pt: pt.status.get("j1") == "running")
    pid = p.proc.pid

    # Rotation: the portal takes the new password only; the file gets it; HUP.
    with portal.lock:
        portal.password = NEW_PASSWORD
    password_file(Path(file_env["PORTAL_PASSWORD_FILE"]), NEW_PASSWORD)
    p.signal(signal.SIGHUP)
    p.wait_log("SIGHUP: reloading credentials")
    assert portal.status["j1"] == "running"  # the job is not stopped by a reload
    go.touch()
    portal.wait_for(lambda pt: pt.status.get("j1") == "complete")

    p.wait_log("the new password is in use")
    portal.queue("j2", "sh -c " + repr(f'test "$PORTAL_PASSWORD" = "{NEW_PASSWORD}"'))
    portal.wait_for(lambda pt: pt.status.get("j2") == "complete")
    assert p.proc.poll() is None and p.proc.pid == pid  # the same poller, never restarted
    # j1's report left before the reload (between cycles), with the old password:
    # Plone takes end_run from anyone. j2's carries the new one.
    assert [r.user for r in portal.reports() if r.answer == 204][-1:] == [USER]
    assert portal.requests_of("pop")[-1].user == USER
    assert PASSWORD not in p.log and NEW_PASSWORD not in p.log


def test_unusable_password_file_on_sighup_keeps_the_current_password(
    portal, start_poller, file_env
):
    p = start_poller()
    portal.wait_for(lambda pt: pt.requests_of("pop"))
    path = Path(file_env["PORTAL_PASSWORD_FILE"])
    password_file(path, NEW_PASSWORD, mode=0o644)
    p.signal(signal.SIGHUP)
    p.wait_log("the current password stays in use")
    assert "readable by everybody" in p.log
    seen = len(portal.requests_of("pop"))
    portal.wait_for(lambda pt: len(pt.requests_of("pop")) > seen + 1)
    assert {r.user for r in portal.requests_of("pop")} == {USER}
    assert p.proc.poll() is None


@pytest.mark.parametrize(
    ("mode", "code", "needle"),
    [
        (0o644, 1, "is readable by everybody (mode 0644)"),
        (0o640, 0, "readable by its group (mode 0640)"),
    ],
)
def test_password_file_permissions_at_start(
    portal, workdir, file_env, tmp_path, mode, code, needle
):
    os.chmod(file_env["PORTAL_PASSWORD_FILE"], mode)
    out = run([*poller_flags(workdir), "--check", portal.url], file_env, tmp_path)
    assert out.returncode == code, out.stdout + out.stderr
    assert needle in out.stderr and PASSWORD not in out.stdout + out.stderr


def test_password_and_password_file_together_are_refused(portal, file_env, tmp_path):
    file_env["PORTAL_PASSWORD"] = PASSWORD
    out = run([portal.url], file_env, tmp_path)
    assert out.returncode == 1 and "not both" in out.stderr


def test_password_file_from_config_file(portal, workdir, file_env, tmp_path):
    config = tmp_path / "leampoll.toml"
    config.write_text(f'password_file = "{file_env.pop("PORTAL_PASSWORD_FILE")}"\n')
    out = run(
        [*poller_flags(workdir), "--config", str(config), "--idle", "1", portal.url],
        file_env,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert [r.user for r in portal.requests_of("pop")] == [USER]


# -- the generic layer: options other modules add get the same support ----------------


def other_parser() -> sources.Parser:
    p = sources.Parser(prog="x")
    p.add_argument("--config", type=Path)
    p.add_argument("--trusted-origin", action="append", default=[])
    p.add_argument("--allow-insecure-http", action="store_true")
    p.add_argument("--no-verify", dest="verify", action="store_false")
    p.add_argument("--ca-file", type=Path)
    p.add_argument("--interval", type=int, default=5)
    p.add_argument("--mode", choices=["a", "b"], default="a")
    p.add_argument("--token", required=True)
    return p


def parse(argv: list[str], environ: dict[str, str]) -> argparse.Namespace:
    return sources.parse(other_parser(), argv, sources.Sources(environ=environ))


def test_generic_environment_values_of_each_kind():
    ns = parse(
        [],
        {
            "X": "1",
            "LEAMPOLL_TOKEN": "t",
            "LEAMPOLL_TRUSTED_ORIGIN": "https://a, https://b",
            "LEAMPOLL_ALLOW_INSECURE_HTTP": "on",
            "LEAMPOLL_VERIFY": "false",
            "LEAMPOLL_CA_FILE": "/etc/ca.pem",
            "LEAMPOLL_INTERVAL": "7",
            "LEAMPOLL_MODE": "b",
        },
    )
    assert ns.trusted_origin == ["https://a", "https://b"]
    assert ns.allow_insecure_http is True and ns.verify is False
    assert ns.ca_file == Path("/etc/ca.pem") and ns.interval == 7 and ns.mode == "b"


def test_generic_list_one_item_a_line_may_hold_commas():
    ns = parse([], {"LEAMPOLL_TOKEN": "t", "LEAMPOLL_TRUSTED_ORIGIN": "https://a,b\nhttps://c\n"})
    assert ns.trusted_origin == ["https://a,b", "https://c"]


def test_generic_file_arrays_and_flags_replace_lists(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        'token = "t"\ntrusted_origin = ["https://a", "https://b"]\n'
        "allow-insecure-http = true\ninterval = 9\n"
    )
    ns = parse(["--config", str(config)], {})
    assert ns.trusted_origin == ["https://a", "https://b"] and ns.interval == 9
    ns = parse(
        ["--config", str(config), "--trusted-origin", "https://c"], {"LEAMPOLL_INTERVAL": "8"}
    )
    assert ns.trusted_origin == ["https://c"] and ns.interval == 8
    assert ns.allow_insecure_http is True


def test_generic_defaults_and_required(capsys):
    ns = parse(["--token", "t"], {})
    assert (ns.trusted_origin, ns.allow_insecure_http, ns.verify, ns.interval) == (
        [],
        False,
        True,
        5,
    )
    with pytest.raises(SystemExit) as exc:
        parse([], {})
    assert exc.value.code == 2 and "--token" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("environ", "needle"),
    [
        ({"LEAMPOLL_MODE": "c"}, "LEAMPOLL_MODE: 'c' is not one of a, b"),
        ({"LEAMPOLL_INTERVAL": "x"}, "LEAMPOLL_INTERVAL: invalid value 'x' for --interval"),
        (
            {"LEAMPOLL_TOKENS": "t"},
            "LEAMPOLL_TOKENS matches no option (did you mean LEAMPOLL_TOKEN?)",
        ),
    ],
)
def test_generic_errors_name_the_variable(environ, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(["--token", "t"], environ)
    assert exc.value.code == 2 and needle in capsys.readouterr().err


def test_every_poller_option_has_a_variable_and_a_key():
    names = {a.dest for a in build_parser()._actions if a.option_strings}
    configurable = sources.configurable(build_parser())
    hidden = {"help", "version", "userdata"}
    assert names - hidden <= set(configurable)
    assert "site" in configurable


@pytest.mark.parametrize(
    ("content", "mode", "needle"),
    [
        ("", 0o600, "is empty"),
        ("\n", 0o400, "is empty"),
        (None, 0o600, "No such file"),
        ("dir", 0o700, "not a regular file"),
        ("fifo", 0o600, "not a regular file"),
    ],
)
def test_unusable_password_files_are_config_errors_naming_the_file(tmp_path, content, mode, needle):
    path = tmp_path / "pw"
    if content == "dir":
        path.mkdir()
    elif content == "fifo":
        os.mkfifo(path)
    elif content is not None:
        path.write_text(content)
    if path.exists():
        path.chmod(mode)
    with pytest.raises(ConfigError) as exc:
        load(["http://127.0.0.1:9/p"], {"PORTAL_USER": "u", "PORTAL_PASSWORD_FILE": str(path)})
    assert needle in str(exc.value) and str(path) in str(exc.value)


def test_password_file_first_line_is_the_password(tmp_path):
    path = password_file(tmp_path / "pw", "first line \twith spaces\r\nsecond")
    config = load(
        ["http://127.0.0.1:9/p"], {"PORTAL_USER": "u", "LEAMPOLL_PASSWORD_FILE": str(path)}
    )
    assert config.password == "first line \twith spaces" and config.password_file == path
    assert "first line" not in repr(config)


# The http rule and the CA check hold whatever source the settings come from.
CREDENTIALS = {"PORTAL_USER": "u", "PORTAL_PASSWORD": "p"}


def test_plain_http_portal_from_environment_or_file_is_refused_off_loopback(tmp_path):
    with pytest.raises(ConfigError, match="--allow-insecure-http"):
        load([], {**CREDENTIALS, "LEAMPOLL_SITE": "http://portal.example/p"})
    config = tmp_path / "leampoll.toml"
    config.write_text('site = "http://portal.example/p"\n')
    with pytest.raises(ConfigError, match="--allow-insecure-http"):
        load([], {**CREDENTIALS, "LEAMPOLL_CONFIG": str(config)})
    config.write_text('site = "http://portal.example/p"\nallow_insecure_http = true\n')
    assert load([], {**CREDENTIALS, "LEAMPOLL_CONFIG": str(config)}).allow_insecure_http
    assert load(
        [],
        {
            **CREDENTIALS,
            "LEAMPOLL_SITE": "http://portal.example/p",
            "LEAMPOLL_ALLOW_INSECURE_HTTP": "yes",
        },
    ).allow_insecure_http


def test_plain_http_trusted_origin_from_environment_is_refused_off_loopback():
    with pytest.raises(ConfigError, match="--allow-insecure-http"):
        load(
            ["https://portal.example/p"],
            {**CREDENTIALS, "LEAMPOLL_TRUSTED_ORIGIN": "http://reports.example"},
        )


def test_ca_file_from_environment_or_file_must_be_readable(tmp_path):
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=f"--ca-file {missing}: not a readable file"):
        load(["https://portal.example/p"], {**CREDENTIALS, "LEAMPOLL_CA_FILE": str(missing)})
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    config = tmp_path / "leampoll.toml"
    config.write_text(f'ca_file = "{ca}"\n')
    assert (
        load(["https://portal.example/p"], {**CREDENTIALS, "LEAMPOLL_CONFIG": str(config)}).ca_file
        == ca
    )

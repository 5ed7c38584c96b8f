"""The security promises, as tests: nobody is let in, no secret shows.

First the poller on this machine: plain http:// only to loopback unless
--allow-insecure-http, TLS always verified (a real TLS stand-in with a
throwaway CA on 127.0.0.1; --ca-file or REQUESTS_CA_BUNDLE to trust it).
Then one sandbox host converged by the real site.yml over SSH, audited from
inside: the password in no argv, no log, no Ansible output (-v, -vvv --diff),
no file but the root-only program files; pollers and jobs as the non-root
account, which cannot write the poller's code or its program file;
node_exporter on loopback unless the inventory names an address.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from leampoll import security
from leampoll.config import ConfigError
from leampoll.loading import load
from leampoll.origins import TrustedOrigins
from leampoll.portal import PortalClient, ReportError
from testing import playbook
from testing.fleet import Inventory, leam_project
from testing.marks import sandbox_hosts
from testing.playbook import recap
from testing.pollers import samples
from testing.portal_standin import PortalStandin
from testing.sandbox import TEST_STATE_DIR, Host, Sandbox
from testing.tls import ServerCert, private_ca, self_signed
from tests.conftest import LEAMPOLL, PASSWORD, USER, leampoll_check, wait_until

ROOT = Path(__file__).resolve().parent.parent
CREDS = {"PORTAL_USER": USER, "PORTAL_PASSWORD": PASSWORD}

pytestmark = pytest.mark.timeout(120)

# -- plain http only to loopback -------------------------------------------------

LOOPBACK = [
    "127.0.0.1",
    "127.0.0.53",
    "127.255.255.254",
    "localhost",
    "LOCALHOST",
    "[::1]",
    "localhost.",
    "[::ffff:127.0.0.1]",
]
REMOTE = [
    "portal.example.org",
    "10.0.0.1",
    "192.168.1.10",
    "[::2]",
    "[fe80::1]",
    "128.0.0.1",
    "localhost.example.org",
    "127.0.0.1.example.org",
    "0.0.0.0",
]


def _role_filter():
    """The role's rule (the validation filter), applied as its validation applies it."""
    spec = importlib.util.spec_from_file_location(
        "validation", ROOT / "plugins" / "filter" / "validation.py"
    )
    validation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(validation)

    def remote_http(url: str) -> bool:
        project = {"name": "p", "portal_url": url, "portal_user": "u", "portal_password": "x"}
        problems = validation.leampoll_problems({"leam_projects": [project]}, "h")
        return any("plain http://" in line for line in problems)

    return remote_http


@pytest.mark.parametrize("host", LOOPBACK + REMOTE)
def test_poller_and_role_agree_on_what_is_loopback(host):
    url = f"http://{host}:8080/portal"
    remote = host in REMOTE
    assert bool(security.insecure_http(url)) == remote
    assert _role_filter()(url) == remote
    assert not security.insecure_http(url, allowed=True)
    assert not security.insecure_http(f"https://{host}/portal") and not _role_filter()(
        f"https://{host}/portal"
    )


def one_line_error(env: dict[str, str], *args: str) -> str:
    """The poller refusing to start: exit 1 and one line on stderr, which is returned."""
    out = subprocess.run([*LEAMPOLL, *args], capture_output=True, text=True, env=env, timeout=20)
    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()
    return line


def test_remote_http_portal_refused_with_one_line_naming_the_option(env):
    line = one_line_error(env, "http://portal.example.org/chicago")
    assert "portal.example.org" in line and "--allow-insecure-http" in line
    assert PASSWORD not in line


def test_allow_insecure_http_lets_a_remote_http_portal_through():
    with pytest.raises(ConfigError, match="--allow-insecure-http"):
        load(["http://10.1.2.3/portal"], CREDS)
    config = load(["--allow-insecure-http", "http://10.1.2.3/portal"], CREDS)
    assert config.allow_insecure_http and config.site == "http://10.1.2.3/portal"
    assert load(["http://[::1]:8080/portal"], CREDS).site == "http://[::1]:8080/portal"


@pytest.mark.parametrize(
    "origin", ["http://portal.example.org", "http://10.0.0.5:8080", "HTTP://[fe80::1]"]
)
def test_trusted_origin_on_remote_http_needs_allow_insecure_http(origin):
    site = "https://portal.example.org/portal"
    with pytest.raises(ConfigError, match="--allow-insecure-http") as err:
        load(["--trusted-origin", origin, site], CREDS)
    assert "--trusted-origin" in str(err.value) and PASSWORD not in str(err.value)
    config = load(["--allow-insecure-http", "--trusted-origin", origin, site], CREDS)
    assert config.trusted_origins == (origin,)


@pytest.mark.parametrize(
    "origin", ["http://127.0.0.2:8080", "http://localhost", "https://portal.example.org"]
)
def test_trusted_origin_on_loopback_or_https_needs_nothing(origin):
    config = load(["--trusted-origin", origin, "http://127.0.0.1/portal"], CREDS)
    assert config.trusted.allows(origin + "/portal/jobs/j/end_run")


def test_trusted_remote_http_report_url_is_still_refused_by_the_client():
    client = PortalClient(
        "http://127.0.0.1:9/portal",
        "http://127.0.0.1:9/portal/pop_queue",
        USER,
        PASSWORD,
        trusted=TrustedOrigins.build("http://127.0.0.1:9/portal", ["http://portal.example.org"]),
    )
    with pytest.raises(ReportError, match="--allow-insecure-http") as err:
        client.post("http://portal.example.org/portal/jobs/j/end_run", {"message": "done"})
    assert err.value.permanent
    with pytest.raises(ValueError, match="--allow-insecure-http"):
        client.probe("http://portal.example.org/portal/portal_membership/isAnonymousUser")
    client.close()


def test_report_url_on_remote_http_is_refused_before_anything_is_sent():
    client = PortalClient(
        "http://127.0.0.1:9/portal", "http://127.0.0.1:9/portal/pop_queue", USER, PASSWORD
    )
    with pytest.raises(ReportError, match="--allow-insecure-http") as err:
        client.post("http://portal.example.org/portal/jobs/j/success", {"message": "done"})
    assert err.value.permanent
    client.close()


def test_poller_sets_aside_a_report_to_remote_http_and_says_why(portal, start_poller):
    job_url = f"{portal.url}/jobs/leaky"
    portal.queue(
        "leaky", "true", on_success="http://portal.example.org/jobs/leaky/success", url=job_url
    )
    p = start_poller("-i", "2")
    assert p.wait(30) == 0
    line = next(x for x in p.log.splitlines() if "set aside as undeliverable" in x)
    assert "portal.example.org" in line and "--allow-insecure-http" in line
    assert not portal.reports("success")


# -- TLS always verified ---------------------------------------------------------


@dataclass
class TLSPortal:
    portal: PortalStandin
    cert: ServerCert


@pytest.fixture(params=["self-signed", "private CA"])
def tls_portal(request, tmp_path) -> Iterator[TLSPortal]:
    cert = (self_signed if request.param == "self-signed" else private_ca)(tmp_path)
    with PortalStandin(USER, PASSWORD, tls=(str(cert.cert), str(cert.key))) as p:
        yield TLSPortal(p, cert)


def test_untrusted_certificate_fails_with_a_clear_line_and_pops_nothing(
    tls_portal, start_poller, tmp_path
):
    portal = tls_portal.portal
    portal.queue("tls-job", "true")
    metrics = tmp_path / "m.prom"
    p = start_poller("--once", "--metrics-file", str(metrics), "--project", "p", url=portal.url)
    assert p.wait(30) == 1
    line = next(x for x in p.log.splitlines() if "TLS certificate" in x)
    assert "not trusted" in line and "--ca-file" in line, line
    assert portal.status["tls-job"] == "queued" and not portal.received  # no request got through
    # Its own reason in the metrics, not "unreachable".
    assert (
        samples(metrics).get(("leampoll_portal_errors_total", ("project", "p"), ("reason", "tls")))
        == 1
    )


def test_check_fails_on_an_untrusted_certificate(tls_portal, workdir, env):
    out = leampoll_check(tls_portal.portal.url, workdir, env)
    assert out.returncode == 1
    fails = [x for x in out.stdout.splitlines() if x.startswith("FAIL")]
    assert len(fails) == 1 and fails[0].split()[1] == "tls" and "--ca-file" in fails[0], out.stdout


def test_ca_file_trusts_the_portal(tls_portal, start_poller, workdir, env):
    # The machine's own REQUESTS_CA_BUNDLE (if any) stays set: --ca-file wins over it.
    portal, ca = tls_portal.portal, str(tls_portal.cert.ca)
    check = leampoll_check(portal.url, workdir, env, "--ca-file", ca)
    assert check.returncode == 0, check.stdout
    portal.queue("tls-ok", "true")
    p = start_poller("-i", "1", "--ca-file", ca, url=portal.url)
    assert p.wait(30) == 0
    # A real portal's end_run, reached over the same verified TLS as the pop.
    assert portal.status["tls-ok"] == "complete" and portal.outcome("tls-ok") == "success"
    assert [(r.kind, r.user) for r in portal.reports()] == [("success", USER), ("end_run", USER)]


def test_requests_ca_bundle_trusts_the_portal(tls_portal, start_poller, env):
    env["REQUESTS_CA_BUNDLE"] = str(tls_portal.cert.ca)
    tls_portal.portal.queue("tls-env", "true")
    p = start_poller("-i", "1", url=tls_portal.portal.url)
    assert p.wait(30) == 0
    assert tls_portal.portal.status["tls-env"] == "complete"
    assert tls_portal.portal.outcome("tls-env") == "success"


def test_a_certificate_for_another_host_fails_even_with_its_ca(tmp_path, start_poller):
    cert = private_ca(tmp_path, hosts=("127.0.0.2", "portal.example.org"))
    with PortalStandin(USER, PASSWORD, tls=(str(cert.cert), str(cert.key))) as portal:
        portal.queue("wrong-host", "true")
        p = start_poller("--once", "--ca-file", str(cert.ca), url=portal.url)
        assert p.wait(30) == 1
        assert re.search(r"TLS certificate .*not trusted .*mismatch", p.log, re.I), p.log
        assert portal.status["wrong-host"] == "queued"


def test_missing_ca_file_is_a_one_line_error(env, tmp_path):
    line = one_line_error(
        env, "--ca-file", str(tmp_path / "nope.pem"), "https://127.0.0.1:9/portal"
    )
    assert "--ca-file" in line and "nope.pem" in line


# -- the role's validation (no host is contacted by it) ----------------------------

VALIDATION_ONLY = ("--tags", "leam-validation-only")  # no such tag: only the always-run checks


def _remote_project(**extra) -> dict:
    return {
        "name": "remote",
        "portal_url": "http://portal.example.org/remote",
        "portal_user": "poller",
        "portal_password": PASSWORD,
        **extra,
    }


def _validate(tmp_path: Path, project: dict, **more) -> subprocess.CompletedProcess:
    inventory = tmp_path / "inventory.json"
    # Unreachable on purpose: the validation play checks variables without connecting.
    inventory.write_text(
        json.dumps(
            {
                "leam_jobservers": {
                    "hosts": {
                        "jobserver-a": {
                            "ansible_host": "127.0.0.251",
                            "leam_projects": [project],
                            **more,
                        }
                    }
                }
            }
        )
    )
    return playbook.run(inventory, "site.yml", *VALIDATION_ONLY, log_dir=tmp_path)


def test_role_rejects_remote_http_naming_host_and_project(tmp_path):
    out = _validate(tmp_path, _remote_project())
    assert out.returncode != 0
    line = next(x for x in out.stdout.splitlines() if "plain http://" in x)
    assert "jobserver-a" in line and "project remote" in line and "allow_insecure_http" in line
    assert recap(out.stdout)["jobserver-a"]["failed"] == 1
    assert PASSWORD not in out.stdout + out.stderr


def test_role_accepts_remote_http_with_allow_insecure_http(tmp_path):
    out = _validate(tmp_path, _remote_project(allow_insecure_http=True, ca_file="/etc/ca.pem"))
    # Validation passed; the next play then finds the host unreachable.
    assert "plain http://" not in out.stdout, out.stdout[-3000:]
    rc = recap(out.stdout)["jobserver-a"]
    assert rc["failed"] == 0 and rc["unreachable"] == 1, out.stdout[-3000:]


def test_role_rejects_a_remote_http_trusted_origin_naming_host_and_project(tmp_path):
    project = _remote_project(
        portal_url="https://portal.example.org/remote",
        trusted_origins=["https://www.example.org", "http://10.0.0.5:8080"],
    )
    out = _validate(tmp_path, project)
    assert out.returncode != 0
    line = next(x for x in out.stdout.splitlines() if "trusted_origins has a plain http://" in x)
    assert "jobserver-a" in line and "project remote" in line and "allow_insecure_http" in line
    assert PASSWORD not in out.stdout + out.stderr


@pytest.mark.parametrize(
    "extra",
    [
        {"trusted_origins": ["http://10.0.0.5:8080"], "allow_insecure_http": True},
        {
            "trusted_origins": [
                "http://127.0.0.2:8080",
                "http://localhost",
                "https://www.example.org",
            ]
        },
    ],
)
def test_role_accepts_trusted_origins_by_the_http_rule(tmp_path, extra):
    out = _validate(
        tmp_path, _remote_project(portal_url="https://portal.example.org/remote", **extra)
    )
    assert "plain http://" not in out.stdout, out.stdout[-3000:]
    rc = recap(out.stdout)["jobserver-a"]
    assert rc["failed"] == 0 and rc["unreachable"] == 1, out.stdout[-3000:]


@pytest.mark.parametrize(
    "extra,variable",
    [
        ({"allow_insecure_http": "yes please"}, "allow_insecure_http"),
        ({"ca_file": "relative/ca.pem"}, "ca_file"),
    ],
)
def test_role_rejects_bad_security_settings(tmp_path, extra, variable):
    project = {**_remote_project(portal_url="https://portal.example.org/remote"), **extra}
    out = _validate(tmp_path, project)
    assert out.returncode != 0 and variable in out.stdout, out.stdout[-3000:]


# -- one converged sandbox host, audited ---------------------------------------------

HOST = "audited"
# Supervisor's specials (space, %, ;) and nothing else of it appears anywhere by chance.
SECRET = "aUd1t S3cret%x-9f;q"
SCANNED = "/etc /opt/leampoll /var/log /mnt/jobdir /var/lib/leampoll /root /home /tmp"
HOST_CA = "/usr/local/share/leam-test-ca.pem"

sandbox_only = sandbox_hosts(900)


def _listening(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((address, port)) == 0


@dataclass
class Audit:
    host: Host
    sandbox: Sandbox
    portals: dict[str, PortalStandin]
    inventory: Path
    dir: Path
    first: subprocess.CompletedProcess
    default_metrics_address: bool

    def ssh(self, command: str, **kw) -> str:
        out = self.host.ssh(command, **kw)
        assert out.returncode == 0, (command, out.stderr)
        return out.stdout

    def write(self, group_vars: dict | None = None, **overrides: dict) -> None:
        projects = [
            leam_project("plain", self.portals["plain"].url, SECRET),
            leam_project("tlsca", self.portals["tlsca"].url, SECRET, ca_file=HOST_CA),
            leam_project("tlsnoca", self.portals["tlsnoca"].url, SECRET),
        ]
        projects = [{**p, **overrides.get(p["name"], {})} for p in projects]
        metrics: dict[str, object] = {"leampoll_metrics": True}
        if not self.default_metrics_address:  # 127.0.0.1:9100 is taken on this machine
            metrics["leampoll_node_exporter_listen_address"] = f"{self.host.address}:9100"
        Inventory(
            self.sandbox,
            self.inventory,
            projects={HOST: projects},
            group_vars={**metrics, **(group_vars or {})},
        ).write()

    def play(self, *args: str) -> subprocess.CompletedProcess:
        return playbook.run(self.inventory, "site.yml", *args, log_dir=self.dir)


@pytest.fixture(scope="module")
def audit(tmp_path_factory) -> Iterator[Audit]:
    workdir = tmp_path_factory.mktemp("audit")
    cert = private_ca(workdir, hosts=("127.0.0.1",))
    tls = (str(cert.cert), str(cert.key))
    portals = {
        "plain": PortalStandin("poller", SECRET, base_path="/plain"),
        "tlsca": PortalStandin("poller", SECRET, base_path="/tlsca", tls=tls),
        "tlsnoca": PortalStandin("poller", SECRET, base_path="/tlsnoca", tls=tls),
    }
    sandbox = Sandbox(TEST_STATE_DIR)
    sandbox.down(HOST)  # left over from an interrupted run
    try:
        for p in portals.values():
            p.start()
        with sandbox.hosts_up([HOST]) as (host,):
            host.ssh(f"cat > {HOST_CA}", input=cert.ca.read_text(), check=True)
            a = Audit(
                host,
                sandbox,
                portals,
                workdir / "inventory.yml",
                workdir,
                None,
                not _listening("127.0.0.1", 9100),
            )
            a.write()
            a.first = a.play("-v")
            assert a.first.returncode == 0, a.first.stdout[-4000:]
            yield a
    finally:
        for p in portals.values():
            p.stop()


@pytest.fixture
def audit_restored(audit) -> Iterator[Audit]:
    """For a test that converges the host to other settings: as first converged afterwards,
    whatever runs next."""
    yield audit
    audit.write()
    out = audit.play()
    assert out.returncode == 0, out.stdout[-4000:]


@pytest.fixture
def plain_job_ran(audit) -> None:
    """The job whose logs the password search reads: the argv test runs it; queued here
    where that test has not run."""
    if "audit-long" not in audit.portals["plain"].status:
        audit.portals["plain"].queue("audit-long", "sleep 7.25")


def on_sandbox(test):
    """Marks of the tests that need the audited host."""
    for mark in reversed(sandbox_only):
        test = mark(test)
    return test


def _no_secret(text: str) -> None:
    assert SECRET not in text and "S3cret" not in text


@on_sandbox
def test_converge_with_v_shows_no_password(audit):
    _no_secret(audit.first.stdout + audit.first.stderr)
    assert recap(audit.first.stdout)[HOST]["changed"] > 0


@on_sandbox
def test_pollers_and_jobs_run_as_leam_and_no_argv_holds_the_password(audit):
    plain, tlsca = audit.portals["plain"], audit.portals["tlsca"]
    plain.queue("audit-long", "sleep 7.25")
    tlsca.queue("audit-tls", "true")  # over TLS, trusted through the project's ca_file
    plain.wait_for(lambda p: p.status.get("audit-long") == "running", timeout=60)

    def job_started() -> list[str] | None:
        # `running` in the portal comes at the pop, before the job's cgroup and process.
        procs = audit.ssh("ps -eo user=,args=").splitlines()
        return procs if any(x.split()[1:] == ["sleep", "7.25"] for x in procs) else None

    procs = wait_until(job_started, 30, "the job's process")
    pollers = [x.split()[0] for x in procs if "/usr/local/bin/leampoll --workdir" in x]
    jobs = [x.split()[0] for x in procs if x.split()[1:] == ["sleep", "7.25"]]
    assert pollers == ["leam"] * 3 and jobs == ["leam"], procs
    argv = audit.ssh(r"cat /proc/[0-9]*/cmdline | tr '\0' '\n'")
    assert "/usr/local/bin/leampoll" in argv
    _no_secret(argv)
    plain.wait_for(lambda p: p.outcome("audit-long") == "success", timeout=60)
    tlsca.wait_for(lambda p: p.outcome("audit-tls") == "success", timeout=60)


@on_sandbox
def test_untrusted_portal_certificate_is_a_clear_line_in_the_pollers_log(audit):
    log = "/var/log/supervisor/leampoll-tlsnoca.log"
    line = wait_until(
        lambda: next(
            (x for x in audit.ssh(f"cat {log}").splitlines() if "TLS certificate" in x), None
        ),
        60,
        "the TLS line in the poller's log",
    )
    assert "not trusted" in line and "--ca-file" in line
    assert not audit.portals["tlsnoca"].received


@on_sandbox
def test_program_files_root_only_and_leam_cannot_change_code_or_programs(audit):
    modes = audit.ssh("stat -c '%n %a %U %G' /etc/supervisor/conf.d/leampoll-*.conf").splitlines()
    assert len(modes) == 3 and all(m.split()[1:] == ["600", "root", "root"] for m in modes), modes
    as_leam = "runuser -u leam -- "
    writable = audit.host.ssh(
        as_leam + "find /opt/leampoll /etc/supervisor /usr/local/bin "
        "/etc/leampoll /etc/default -writable"
    )
    assert writable.stdout.strip() == "", writable.stdout
    for path in ("/opt/leampoll/venv/bin/leampoll", "/etc/supervisor/conf.d/leampoll-plain.conf"):
        out = audit.host.ssh(f"{as_leam} sh -c 'echo x >> {path}'")
        assert out.returncode != 0, path
    assert audit.host.ssh(as_leam + "cat /etc/supervisor/conf.d/leampoll-plain.conf").returncode
    # Nor can it ask Supervisor to run something else (its socket is root's).
    assert audit.host.ssh(as_leam + "supervisorctl status").returncode != 0


@on_sandbox
@pytest.mark.usefixtures("plain_job_ran")
def test_password_only_in_the_root_only_program_files(audit):
    # After jobs ran and logs were written: the poller's, Supervisor's, the jobs'.
    audit.portals["plain"].wait_for(lambda p: p.outcome("audit-long") == "success", 60)
    logs = audit.ssh("ls /var/log/supervisor/").split()
    assert {"leampoll-plain.log", "leampoll-tlsca.log", "supervisord.log"} <= set(logs), logs
    assert audit.ssh("ls /mnt/jobdir/plain/").count(".log")  # job logs are kept
    # Any form of it: plain, as Supervisor's file writes it (%%), or JSON-escaped all
    # contain S3cret; a basic-auth header would hold the base64 of user:password.
    # The patterns come in on stdin, so the search itself puts them in no argv.
    patterns = "S3cret\n" + base64.b64encode(f"poller:{SECRET}".encode()).decode() + "\n"
    found = audit.host.ssh(f"grep -rlsF -f /dev/stdin {SCANNED}", input=patterns).stdout.split()
    assert sorted(found) == [
        f"/etc/supervisor/conf.d/leampoll-{p}.conf" for p in ("plain", "tlsca", "tlsnoca")
    ], found
    readable = audit.ssh(f"find {' '.join(found)} -perm /o=r,g=r")
    assert readable.strip() == ""


@on_sandbox
def test_check_diff_of_a_changed_program_shows_no_password(audit):
    audit.write(plain={"speed": 3})
    try:
        out = audit.play("--check", "--diff", "-vvv")
        assert out.returncode == 0, out.stdout[-4000:]
        assert recap(out.stdout)[HOST]["changed"] > 0  # the program file would change
        _no_secret(out.stdout + out.stderr)
    finally:
        audit.write()


def _node_exporter_listens(audit: Audit) -> list[str]:
    """Local addresses of node_exporter's listening sockets, as `ss` inside the host sees them."""
    lines = audit.ssh("ss -Hltnp").splitlines()
    return [x.split()[3] for x in lines if '"prometheus-node' in x]


@on_sandbox
def test_node_exporter_on_loopback_when_no_address_is_given(audit):
    if not audit.default_metrics_address:
        pytest.skip("127.0.0.1:9100 was taken on this machine before the host converged")
    assert wait_until(lambda: _node_exporter_listens(audit), 30, "node_exporter listening") == [
        "127.0.0.1:9100"
    ]


@on_sandbox
@pytest.mark.usefixtures("audit_restored")
def test_node_exporter_on_the_address_the_inventory_gives(audit):
    wanted = f"{audit.host.address}:9100"
    # A real run with --diff that rewrites a program file, too.
    audit.write(group_vars={"leampoll_node_exporter_listen_address": wanted}, plain={"speed": 2})
    out = audit.play("--diff", "-v")
    assert out.returncode == 0, out.stdout[-4000:]
    _no_secret(out.stdout + out.stderr)
    pid = audit.ssh("supervisorctl pid leampoll-plain").strip()
    assert "--speed 2" in audit.ssh(f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    assert wait_until(
        lambda: _node_exporter_listens(audit) == [wanted], 30, f"node_exporter on {wanted}"
    )

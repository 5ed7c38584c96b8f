"""`make demo`: the whole toolkit working on this machine, in a few minutes.

Portal stand-ins on loopback with queued demo jobs, two sandbox hosts, the
real `site.yml` with a demo inventory (two hosts, three projects), then the
jobs are popped, run and reported, and the fleet's status is shown.
With LEAM_DEMO_PORTAL=real the portals are real LEAM portals (leam.luc on
Plone 4.3, testing/real_portal; built on first use) instead of stand-ins.
`make demo-clean` ends every process, host and mount the demo started.

    python -m testing.demo up      # idempotent: a second run reuses what is there
    python -m testing.demo queue chicago ID 'CMDLINE'
    python -m testing.demo clean
    python -m testing.demo leftovers   # exit 1 if anything the demo started is left
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from testing.demo_real import RealPortals
from testing.fleet import Inventory, leam_project
from testing.playbook import ANSIBLE_PLAYBOOK, ROOT
from testing.real_portal.leftovers import leftovers as real_portal_leftovers
from testing.sandbox import Sandbox

STATE = Path(os.environ.get("LEAM_DEMO_STATE", "/run/leam-demo"))
PORT0 = int(os.environ.get("LEAM_DEMO_PORT", "8780"))
HOSTS = {"demo-a": ["chicago", "peoria"], "demo-b": ["stlouis"]}
PORTS = {"chicago": PORT0 + 1, "peoria": PORT0 + 2, "stlouis": PORT0 + 3}
JOBS = [  # project, id, cmdline
    ("chicago", "quick-success", "true"),
    ("chicago", "model-fails", "sh -c 'echo model diverged >&2; exit 3'"),
    ("peoria", "long-run", "sleep 20"),
    ("stlouis", "writes-output", "sh -c 'seq 1 1000 > result.txt; wc -l result.txt'"),
]
PORTAL_KINDS = ("standin", "real")
T0 = time.monotonic()
REAL = RealPortals(STATE, PORTS)


def real() -> bool:
    """LEAM_DEMO_PORTAL: `standin` (the default) or `real`; unset, the portals a running
    demo was started with, so `queue` needs no switch repeated."""
    kind = os.environ.get("LEAM_DEMO_PORTAL") or _started_kind() or "standin"
    if kind not in PORTAL_KINDS:
        raise SystemExit(f"LEAM_DEMO_PORTAL={kind!r}: one of {', '.join(PORTAL_KINDS)}")
    return kind == "real"


def _started_kind() -> str | None:
    try:
        return (STATE / "portal-kind").read_text().strip()
    except OSError:
        return None


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {text}", flush=True)


def _alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _password() -> str:
    path = STATE / "portal-password"
    if not path.exists():
        STATE.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(secrets.token_urlsafe(12))
        path.chmod(0o600)
    return path.read_text()


def portal_url(project: str, admin: bool = False) -> str:
    if real() and not admin:
        return REAL.url(project)
    root = f"http://127.0.0.1:{PORTS[project]}"
    return root if admin else f"{root}/{project}"


def start_portals() -> None:
    env = {**os.environ, "PORTAL_PASSWORD": _password(), "PYTHONPATH": str(ROOT)}
    for project, port in PORTS.items():
        pidfile = STATE / f"portal-{project}.pid"
        if _alive(pidfile):
            say(f"portal stand-in for {project} already up on 127.0.0.1:{port}")
            continue
        log = open(STATE / f"portal-{project}.log", "ab")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "testing.portal_standin",
                "serve",
                "--mode",
                "plone",
                "--port",
                str(port),
                "--base-path",
                f"/{project}",
            ],
            env=env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=ROOT,
        )
        pidfile.write_text(str(proc.pid))
        deadline = time.monotonic() + 15
        while not _state(project):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"portal stand-in for {project} did not start: see {log.name}")
            time.sleep(0.1)
        say(f"portal stand-in for {project} up at {portal_url(project)}")


def _state(project: str) -> dict | None:
    try:
        with urllib.request.urlopen(portal_url(project, True) + "/_standin/state", timeout=5) as r:
            return json.load(r)
    except OSError:
        return None


def statuses(project: str) -> dict[str, str]:
    """Every job's runstatus on the project's portal."""
    return REAL.status(project) if real() else (_state(project) or {}).get("status", {})


def queue(project: str, job_id: str, cmdline: str) -> None:
    if real():
        REAL.queue(project, job_id, cmdline)
        return
    subprocess.run(
        [
            sys.executable,
            "-m",
            "testing.portal_standin",
            "queue",
            "--url",
            portal_url(project, True),
            "--id",
            job_id,
            "--cmdline",
            cmdline,
        ],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )


def metrics_address(sandbox: Sandbox, host: str) -> str:
    """node_exporter of a demo host: on the host's own loopback address."""
    return f"{sandbox.host(host).address}:9100"


def inventory(sandbox: Sandbox, password: str) -> Path:
    settings = {"speed": 2, "min_free_disk": "100M", "min_free_mem": "50M", "job_timeout": 600}
    demo = Inventory(
        sandbox,
        STATE / "inventory.yml",
        projects={
            host: [leam_project(p, portal_url(p), password, **settings) for p in projects]
            for host, projects in HOSTS.items()
        },
        host_vars={
            host: {"node_exporter_listen_address": metrics_address(sandbox, host)} for host in HOSTS
        },
        group_vars={"leampoll_metrics": True, "leam_jobdir_min_free": "100M"},
    )
    path = demo.write()
    path.chmod(0o600)
    return path


def up() -> int:
    if os.geteuid() != 0:
        raise SystemExit("the demo builds sandbox hosts: run it as root")
    STATE.mkdir(parents=True, exist_ok=True, mode=0o700)
    # `make demo` has run `make deps`; started directly, the demo runs the same
    # script (the one list of what the machine needs) where a tool is missing.
    if any(not shutil.which(t) for t in ("debootstrap", "unshare", "ssh", "git")):
        say("installing what the sandbox hosts need: tools/setup-machine.sh")
        subprocess.run([ROOT / "tools" / "setup-machine.sh"], check=True)
    (STATE / "portal-kind").write_text("real\n" if real() else "standin\n")
    password = REAL.start(say) if real() else _password()
    if not real():
        start_portals()
    sandbox = Sandbox(STATE / "sandbox", log=lambda m: say(f"sandbox: {m}"))
    say("root filesystem for the sandbox hosts (built once, ~1 min; cached after)")
    sandbox.ensure_rootfs()
    running = {h.name for h in sandbox.hosts() if h.alive}
    for name in HOSTS:
        if name not in running:
            sandbox.down(name)
    todo = [n for n in HOSTS if n not in running]
    if todo:
        sandbox.up_many(todo)
    say(f"sandbox hosts up: {', '.join(f'{h.name} {h.address}' for h in sandbox.hosts())}")
    inv = inventory(sandbox, password)
    for project, job_id, cmdline in JOBS:
        if job_id not in statuses(project):
            queue(project, job_id, cmdline)
    say(f"queued {len(JOBS)} demo jobs; running ansible-playbook -i {inv} site.yml")
    if play(inv, "site.yml") != 0:
        say("site.yml failed (see above)")
        return 1
    say("waiting for the jobs to be popped, run and ended (runstatus complete)")
    wanted = {(p, j) for p, j, _ in JOBS}
    deadline = time.monotonic() + 180
    done: set = set()
    while time.monotonic() < deadline and done != wanted:
        done = {(p, j) for p, j in wanted if statuses(p).get(j) == "complete"}
        time.sleep(1)
    say(f"the fleet's status: ansible-playbook -i {inv} playbooks/status.yml")
    play(inv, "playbooks/status.yml", table=True)
    if real():
        say("what the real portals hold (runstatus) and took (reports, from their Z2.log):")
        for project in PORTS:
            for job_id, status in statuses(project).items():
                taken = ", ".join(REAL.requests(project, job_id))
                print(f"  {project:8} {job_id:16} {status:9} {taken}")
    else:
        say("what the portal stand-ins received (runstatus, outcome reported, requests):")
        for project in PORTS:
            state = _state(project) or {}
            for job_id, status in sorted(state.get("status", {}).items()):
                told = state.get("outcome", {}).get(job_id) or "-"
                history = ", ".join(state.get("history", {}).get(job_id, []))
                print(f"  {project:8} {job_id:16} {status:9} {told:8} {history}")
    for host in HOSTS:
        address = metrics_address(sandbox, host)
        say(
            f"node_exporter on {host}: curl -s http://{address}/metrics | grep ^leampoll_jobs_total"
        )
        for line in _scrape(address):
            if line.startswith("leampoll_jobs_total"):
                print(f"  {line}")
    say("queue more with: python -m testing.demo queue chicago my-job 'sleep 5'")
    say("tear down with: make demo-clean")
    return 0 if done == wanted else 1


def play(inv: Path, playbook: str, table: bool = False) -> int:
    """Run a playbook, echoing its progress, or only the table it prints."""
    proc = subprocess.Popen(
        [str(ANSIBLE_PLAYBOOK), "-i", str(inv), playbook],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if table:
            if line.startswith('        "'):  # a row of the table, in debug's output
                print("  " + line.strip().removesuffix(",").strip('"'), flush=True)
        elif line.startswith(("TASK", "PLAY", "fatal", "failed")) or " : ok=" in line:
            say("  " + line.rstrip())
    return proc.wait()


def _scrape(address: str) -> list[str]:
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
            return r.read().decode().splitlines()
    except OSError as exc:
        return [f"(no answer: {exc})"]


def clean() -> int:
    sandbox = Sandbox(STATE / "sandbox", log=lambda m: say(f"sandbox: {m}"))
    for name in sandbox.down_all():
        say(f"host {name} removed")
    REAL.stop(say)  # whichever kind the demo ran with
    for pidfile in STATE.glob("portal-*.pid"):
        pid = _alive(pidfile)
        if pid:
            os.kill(pid, signal.SIGTERM)
            say(f"portal stand-in pid {pid} stopped")
        pidfile.unlink()
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(STATE)
    say("demo cleaned (the root filesystem cache stays in /var/cache/leam-sandbox)")
    return 0


def leftovers() -> int:
    """Exit 1 naming whatever of the demo is still there: processes, mounts, ports;
    and any real portal still running, or its mounts."""
    found = []
    marker = str(STATE).encode()
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes()
            if marker in cmdline:
                found.append(f"process {proc.name}: {cmdline.replace(bytes(1), b' ').decode()}")
    found += [
        f"mount {line.split()[1]}"
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1].startswith(str(STATE))
    ]
    tag = Sandbox(STATE / "sandbox", log=lambda m: None).tag
    found += [f"cgroup {path}" for path in Path("/sys/fs/cgroup").glob(f"*/leam-sandbox-{tag}-*")]
    for project, port in PORTS.items():
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            found.append(f"port 127.0.0.1:{port} ({project}'s demo portal) still open")
    if STATE.exists():
        found.append(f"directory {STATE}")
    found += real_portal_leftovers()
    for item in found:
        say(f"left over: {item}")
    say("nothing of the demo is left" if not found else f"{len(found)} things left over")
    return 1 if found else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["up"]:
        return up()
    if argv[:1] == ["clean"]:
        return clean()
    if argv[:1] == ["leftovers"]:
        return leftovers()
    if argv[:1] == ["queue"] and len(argv) == 4:
        queue(argv[1], argv[2], argv[3])
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

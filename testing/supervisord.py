"""A real supervisord on this machine, running real `leampoll` pollers, for tests.

Its own configuration, socket and logs in a temporary folder; the programs
are configured as roles/leampoll/templates/program.conf.j2 configures them on
a host (autorestart=unexpected, exit 0 expected, TERM to stop, as a group).
`env()` gives what `leampoll status`/`retire` need to find this Supervisor and
its projects.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from testing.pollers import poller_flags
from testing.wait import wait_until

BIN = Path(sys.executable).parent


class Supervisord:
    """supervisord with one program `leampoll-<name>` per project."""

    def __init__(
        self,
        base: Path,
        projects: dict[str, tuple[str, Path]],
        env: dict[str, str],
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.base = base
        self.projects = projects  # name -> (portal url, workdir)
        self.conf = base / "supervisord.conf"
        self.projects_file = base / "projects.json"
        self.proc: subprocess.Popen | None = None
        environment = ",".join(
            f"{k}={shlex.quote(v)}"
            for k, v in env.items()
            if k in ("PORTAL_USER", "PORTAL_PASSWORD", "PYTHONPATH", "PATH")
        )
        lines = [
            "[unix_http_server]",
            f"file={base}/supervisor.sock",
            "chmod=0700",
            "[supervisord]",
            "nodaemon=true",
            f"logfile={base}/supervisord.log",
            f"pidfile={base}/supervisord.pid",
            f"childlogdir={base}",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "[supervisorctl]",
            f"serverurl=unix://{base}/supervisor.sock",
        ]
        listed = []
        for name, (url, workdir) in projects.items():
            workdir.mkdir(parents=True, exist_ok=True)
            command = [
                sys.executable,
                "-m",
                "leampoll",
                *poller_flags(workdir),
                "--grace",
                "2",
                "--project",
                name,
                *extra_args,
                url,
            ]
            lines += [
                f"[program:leampoll-{name}]",
                f"command={shlex.join(command)}",
                f"directory={workdir}",
                f"environment={environment}",
                "autorestart=unexpected",
                "exitcodes=0",
                "startsecs=1",
                "stopsignal=TERM",
                "stopwaitsecs=30",
                "stopasgroup=true",
                "killasgroup=true",
                f"stderr_logfile={self.log(name)}",
                "stdout_logfile=NONE",
            ]
            listed.append(
                {
                    "name": name,
                    "workdir": str(workdir),
                    "program": f"leampoll-{name}",
                    "log": str(self.log(name)),
                }
            )
        self.conf.write_text("\n".join(lines) + "\n")
        self.projects_file.write_text(json.dumps(listed))

    def log(self, name: str) -> Path:
        return self.base / f"leampoll-{name}.log"

    def ctl_argv(self) -> list[str]:
        return [str(BIN / "supervisorctl"), "-c", str(self.conf)]

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """An environment in which leampoll finds this Supervisor and its projects."""
        return {
            **base,
            "LEAMPOLL_SUPERVISORCTL": shlex.join(self.ctl_argv()),
            "LEAMPOLL_PROJECTS_FILE": str(self.projects_file),
        }

    def states(self) -> dict[str, str]:
        out = subprocess.run(
            [*self.ctl_argv(), "status"], capture_output=True, text=True, timeout=30
        )
        return {
            line.split()[0]: line.split()[1]
            for line in out.stdout.splitlines()
            if len(line.split()) >= 2
        }

    def start(self) -> Supervisord:
        self.proc = subprocess.Popen(
            [str(BIN / "supervisord"), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            lambda: all(self.states().get(f"leampoll-{n}") == "RUNNING" for n in self.projects),
            30,
            "the pollers RUNNING",
        )
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        subprocess.run([*self.ctl_argv(), "shutdown"], capture_output=True, timeout=60)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, 9)
            self.proc.wait(10)

    def __enter__(self) -> Supervisord:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""The demo's portals as real LEAM portals (`LEAM_DEMO_PORTAL=real make demo`).

One real portal (leam.luc on Plone 4.3, testing/real_portal) per demo project, on the
project's demo port, each with an instance home of its own in the build's chroot. A
real portal has one command for all its jobs (the site's `scenario_cmd`), so the
demo's per-job command lines become one `case` on the job's id, set again whenever
a job is queued; the repository is blank (no checkout). What was started is kept in
the demo's state directory, so `clean` stops it without building or finding anything.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path

from testing.real_portal import build as builder
from testing.real_portal.portal import RealPortal

BLANK_REPO = " "  # no checkout (an unset repository makes every pop answer 500)
_REQUEST = re.compile(r'"(\w+) (.+?) HTTP/[\d.]+" (\d{3})')


class RealPortals:
    """The demo's real portals, by project; their records in `state`."""

    def __init__(self, state: Path, ports: dict[str, int]) -> None:
        self.state, self.ports = state, ports
        self.record = state / "real-portals.json"

    def _saved(self) -> dict:
        return json.loads(self.record.read_text()) if self.record.exists() else {}

    def portal(self, project: str) -> RealPortal:
        saved = self._saved()
        if "build" not in saved or project not in self.ports:
            raise SystemExit(f"no real demo portal for {project}: run `make demo` first")
        return RealPortal(
            builder.Build(Path(saved["build"])), port=self.ports[project], name=f"demo-{project}"
        )

    def start(self, say: Callable[[str], None]) -> str:
        """Build (or find) the portal, start one per project; returns the poller's password."""
        builder.use_shipped_luc()
        say("the real LEAM portal: leam.luc on Plone 4.3 (built once, ~4 min; cached after)")
        b = builder.build(log=lambda m: say(f"real portal: {m}"))
        self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.record.write_text(json.dumps({"build": str(b.dir), "jobs": self.jobs()}))
        for project in self.ports:
            p = self.portal(project)
            if p.pid():
                say(f"real portal for {project} already up at {p.url}")
                continue
            p.reset().start()
            p.set_settings(BLANK_REPO, self.command(project))
            say(f"real portal for {project} up at {p.url}")
        return b.credentials["poller"]

    def url(self, project: str) -> str:
        return self.portal(project).url

    def jobs(self) -> dict[str, dict[str, str]]:
        return self._saved().get("jobs", {})

    def command(self, project: str) -> str:
        """The site's scenario_cmd: each known job's command line, by job id."""
        cases = " ".join(
            f"{shlex.quote(job_id)}) exec {cmdline};;"
            for job_id, cmdline in self.jobs().get(project, {}).items()
        )
        # One line: the setting is a text line.
        script = f'case "$LEAM_JOB_ID" in {cases} *) echo "no demo command for $LEAM_JOB_ID";; esac'
        # The portal fills in {id} and {url} with str.format: braces of the script doubled.
        return shlex.join(["sh", "-c", script]).replace("{", "{{").replace("}", "}}")

    def queue(self, project: str, job_id: str, cmdline: str) -> None:
        saved = self._saved()
        saved.setdefault("jobs", {}).setdefault(project, {})[job_id] = cmdline
        self.record.write_text(json.dumps(saved))
        p = self.portal(project)
        p.set_settings(BLANK_REPO, self.command(project))
        p.queue(job_id)

    def status(self, project: str) -> dict[str, str]:
        p = self.portal(project)
        return p.status() if p.pid() else {}

    def requests(self, project: str, job_id: str) -> list[str]:
        """The reports the portal took on a job ("end_run 204", ...), from its access log."""
        log = self.portal(project).home / "var" / "log" / "Z2.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return [
            f"{m.group(2).rsplit('/', 1)[-1]} {m.group(3)}"
            for m in _REQUEST.finditer(text)
            if f"/{job_id}/" in m.group(2)
        ]

    def stop(self, say: Callable[[str], None]) -> None:
        if not self.record.exists():
            return
        for project in self.ports:
            p = self.portal(project)
            if p.pid():
                say(f"real portal for {project} stopped (pid {p.pid()})")
            p.close()
        self.record.unlink()

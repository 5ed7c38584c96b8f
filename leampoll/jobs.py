"""What the poller passes between its parts: a popped job and a report on its way back.

Plain data, in a module of its own, so the executor and the state folder need
not import the HTTP client to speak of a job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Job:
    """A popped job. `legacy_xml` is set for the deprecated XML answer."""

    id: str
    cmdline: str
    repository: str = ""
    title: str = ""
    url: str = ""
    on_success: str = ""
    on_error: str = ""
    legacy_xml: bytes | None = None
    problem: str = ""  # why this popped job cannot run; it is reported, never executed

    @property
    def requeue_url(self) -> str:
        return self.url.rstrip("/") + "/requeue" if self.url else ""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {k: v for k, v in self.__dict__.items() if k != "legacy_xml"}
        if self.legacy_xml is not None:
            data["legacy_xml"] = self.legacy_xml.decode("utf-8", "replace")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if isinstance(fields.get("legacy_xml"), str):
            fields["legacy_xml"] = fields["legacy_xml"].encode()
        return cls(**fields)


@dataclass
class Report:
    """An outcome on its way to the portal."""

    kind: str  # success, error, requeue
    url: str
    message: str
    job_id: str
    fallback: str = ""  # where to send it if `url` refuses (requeue -> on_error)
    created: float = 0.0
    job_url: str = ""  # the job's own URL, for <url>/end_run

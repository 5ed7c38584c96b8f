"""The history file is the contract between a job's accounting and the guards."""

from __future__ import annotations

from pathlib import Path

from leampoll.usage import ENDED_OOM, JobUsage, append_history, read_history


def run(n: int, **kw: object) -> JobUsage:
    return JobUsage(job_id=f"job-{n}", started=1000.0 + n, **kw)  # type: ignore[arg-type]


def test_history_keeps_the_newest_runs_in_order(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    for n in range(7):
        append_history(path, run(n, peak_disk_bytes=n), keep=5)
    runs = read_history(path)
    assert [r.job_id for r in runs] == [f"job-{n}" for n in range(2, 7)]
    assert [r.job_id for r in read_history(path, last=2)] == ["job-5", "job-6"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_damaged_line_is_skipped_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    append_history(path, run(1, ended=ENDED_OOM, peak_memory_bytes=5))
    with path.open("a") as f:
        f.write('{"job_id": 3, "started": "x"}\nnot json\n{"no": "id"}\n')
    append_history(path, run(2, exit_code=0))
    runs = read_history(path)
    assert [r.job_id for r in runs] == ["job-1", "job-2"]
    assert runs[0].short_of_resources and not runs[0].ok
    assert runs[1].ok


def test_no_history_is_an_empty_one(tmp_path: Path) -> None:
    assert read_history(tmp_path / "missing.jsonl") == []

"""Unit tests of the job data passed between the client, the executor and the state."""

from __future__ import annotations

import json

from leampoll.jobs import Job


def test_job_record_of_another_version_loads_without_its_unknown_keys():
    job = Job.from_dict(
        {"id": "j", "cmdline": "true", "url": "https://p.example.org/j", "added_later": 1}
    )
    assert job == Job("j", "true", url="https://p.example.org/j")


def test_legacy_xml_survives_the_record_as_bytes():
    job = Job("s1", "python startup.py -c config.xml", legacy_xml=b"<job/>")
    record = json.loads(json.dumps(job.to_dict()))
    assert record["legacy_xml"] == "<job/>"
    assert Job.from_dict(record) == job


def test_requeue_url_is_below_the_job_url_or_none():
    assert (
        Job("j", "x", url="https://p.example.org/j/").requeue_url
        == "https://p.example.org/j/requeue"
    )
    assert Job("j", "x").requeue_url == ""

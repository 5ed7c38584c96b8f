"""Unit tests of the portal answer parser: every shape a pop may answer, the
deprecated XML, hostile and random input, and the answers of a real Plone portal.

No network, no subprocesses.
"""

from __future__ import annotations

import json
import random
import time
from email.utils import formatdate

import pytest

from leampoll.answers import (
    LEGACY_CMDLINE,
    MAX_BODY,
    Empty,
    Refused,
    error_page_summary,
    parse_answer,
)
from leampoll.jobs import Job
from testing.portal_standin import LEGACY_XML_TYPE, TRACEBACK_PAGE

LOGIN = "https://portal.example.org/luc/require_login?came_from=x"


# -- answers.parse_answer ----------------------------------------------------------------

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
SCENARIO_XML = (
    b"<job><scenario><id>s1</id><title>T</title>"
    b"<repository>https://svn.example.org/x</repository></scenario></job>"
)
LOGIN_PAGE = (
    b"<!DOCTYPE html><html><head><title>Log in</title></head><body>"
    b"<form action='login_form' method='post'><input name='__ac_name'/>"
    b"<input name='__ac_password' type='password'/></form></body></html>"
)


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
    [
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "Application/JSON",
        " application/json ",
        "application/json; charset=iso-8859-1",
    ],
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
    [
        ("30", 30.0),
        (" 30 ", 30.0),
        ("0", 0.0),
        ("3600", 3600.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("Fri, 31 Foo 2020 00:00:00 GMT", None),
    ],
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
    [
        b"",
        b"{",
        b"{'status': 'OK'}",
        b"not json",
        b'{"status": "OK",}',
        b"\xff\xfe\x00",
        b"[" * 100_000,
        b'{"status": "EMPTY"} trailing',
        b"NaN-ish",
        b"1" * 5000,
    ],
)
def test_malformed_json_is_refused(body):
    result = answer(body)
    assert isinstance(result, Refused)
    assert len(result.reason) < 200


@pytest.mark.parametrize(
    ("data", "word"),
    [
        ([FULL_JOB], "list"),
        ("OK", "str"),
        ("EMPTY", "str"),
        (42, "int"),
        (None, "NoneType"),
        (True, "bool"),
        ([], "list"),
    ],
)
def test_json_non_object_is_refused(data, word):
    result = answer(data)
    assert isinstance(result, Refused)
    assert word in result.reason


@pytest.mark.parametrize(
    "data",
    [
        {"status": "ERROR"},
        {"status": "error"},
        {"status": "ok", "id": "a", "cmdline": "b"},
        {"status": "empty"},
        {},
        {"id": "a", "cmdline": "b"},
        {"status": None},
        {"status": ["OK"]},
        {"status": {"OK": 1}},
        {"status": 1},
        {"status": "QUEUED"},
        {"status": "x" * 10_000},
    ],
)
def test_json_other_status_is_refused(data):
    result = answer(data)
    assert isinstance(result, Refused)
    assert "status" in result.reason
    assert len(result.reason) < 100


@pytest.mark.parametrize(
    "ctype",
    [
        "text/plain",
        "application/octet-stream",
        "",
        "application/jsonp",
        "application/x-json",
        "text/json",
        "multipart/form-data",
        "json",
    ],
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
    [
        b"<job/>",
        b"<job><scenario><title>T</title></scenario></job>",
        b"<job><scenario><id>  </id></scenario></job>",
        b"<job><id>s1</id></job>",
    ],
)
def test_legacy_xml_without_scenario_id_is_refused(body):
    assert isinstance(parse_answer(200, "application/xml", body), Refused)


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b"]><job>&lol9;</job>"
)


@pytest.mark.parametrize(
    "body",
    [
        BILLION_LAUGHS,
        b'<!DOCTYPE job [<!ENTITY x SYSTEM "file:///etc/passwd">]><job>&x;</job>',
        b'<!DOCTYPE job [<!ENTITY x "EMPTY">]><job>&x;</job>',
        b"<!DOCTYPE job><job>EMPTY</job>",
        b'<?xml version="1.0"?>\n<!DOCTYPE job SYSTEM "http://evil.example/x.dtd">' + SCENARIO_XML,
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
    doc = (
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE job [<!ENTITY x "s1">]>'
        "<job><scenario><id>&x;</id></scenario></job>"
    )
    result = parse_answer(200, "application/xml", doc.encode("utf-16"))
    assert isinstance(result, Refused)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<job>",
        b"<job><scenario></job>",
        b"not xml",
        b"<a></b>",
        b"<job>EMPTY</job><x/>",
        b"\xff\xfe\x00<",
        b"<job>\x00</job>",
        b"<?xml version='1.0' encoding='utf-8'?>",
        b"<job attr=>EMPTY</job>",
    ],
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

FUZZ_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/xml",
    "text/xml",
    "text/html",
    "",
    "text/plain",
    "APPLICATION/JSON;;;",
    ";",
    "\x00",
]
FUZZ_PREFIXES = [
    b"",
    b'{"status": "OK", "id": ',
    b'{"status": "EMPTY"',
    b"<?xml version='1.0'?>",
    b"<job>",
    b"<job><scenario><id>",
    b"\xff\xfe",
    b"\xef\xbb\xbf",
    b"[",
    b'"',
    b"<!DOCTYPE",
]
FUZZ_RETRY = [
    None,
    "",
    "30",
    "x",
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "Thu, 31 Dec 9999 23:59:59 GMT",
    "Fri, 13 Foo 2020 99:99:99 GMT",
    "Mon, 01 Jan 2020 00:00:00 +9999",
    "9" * 50,
]


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
    values = [
        None,
        True,
        0,
        -1,
        1.5,
        "",
        "OK",
        "EMPTY",
        "x" * 70_000,
        [],
        {},
        ["OK"],
        {"id": 1},
        "\x00",
        "\ud800",
    ]
    for _ in range(300):
        data = {
            k: rng.choice(values)
            for k in (
                "status",
                "id",
                "cmdline",
                "repository",
                "title",
                "url",
                "on_success",
                "on_error",
            )
            if rng.random() < 0.8
        }
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


# -- Plone's pop answers -----------------------------------------------------------------


def test_login_redirect_of_a_private_site():
    answer = parse_answer(302, "text/html", b"", location=LOGIN)
    assert isinstance(answer, Refused) and answer.login_redirect
    assert "require_login" in answer.reason


def test_other_redirect_is_not_a_login():
    answer = parse_answer(301, "text/html", b"", location="https://portal.example.org/luc/")
    assert isinstance(answer, Refused) and answer.kind == "redirect"


@pytest.mark.parametrize(
    ("status", "kind"), [(500, "http_5xx"), (503, "http_5xx"), (404, "http_4xx"), (401, "http_4xx")]
)
def test_error_kinds(status, kind):
    assert parse_answer(status, "text/plain", b"x").kind == kind


def test_traceback_page_names_the_exception():
    answer = parse_answer(500, "text/html;charset=utf-8", TRACEBACK_PAGE)
    assert isinstance(answer, Refused) and "AttributeError: repository" in answer.reason
    assert (
        error_page_summary(b"<html><h1>Down for maintenance</h1></html>") == "Down for maintenance"
    )


def test_legacy_xml_type_with_two_semicolons():
    doc = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<model><scenario><id>s1</id>'
        b"<repository>https://svn.example.org/luc</repository></scenario></model>"
    )
    job = parse_answer(200, LEGACY_XML_TYPE, doc)
    assert isinstance(job, Job) and job.id == "s1"
    assert isinstance(parse_answer(200, LEGACY_XML_TYPE, b"<model>EMPTY</model>"), Empty)

"""monitoring/: the alert rules under promtool, and every query of rules and dashboard
against the series a real poller writes.

The rules and the dashboard name series by hand; a renamed metric or a typo
would leave an alert that never fires and a panel that stays empty without
anyone noticing. So the names are taken out of every PromQL expression and
compared with what `leampoll --metrics-file` writes (run for real against the
portal stand-in) plus the few node_exporter series they use.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "monitoring"
RULES = MONITORING / "leampoll.rules.yml"
RULE_TESTS = sorted((MONITORING / "tests").glob("*.yml"))
DASHBOARD = MONITORING / "leampoll-dashboard.json"
PROMTOOL = shutil.which("promtool")

# node_exporter's series the rules and the dashboard may use, with their labels.
NODE_EXPORTER = {
    "node_textfile_mtime_seconds": {"file"},
    "node_filesystem_avail_bytes": {"device", "fstype", "mountpoint"},
    "node_memory_MemAvailable_bytes": set(),
}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (make deps installs it from Debian's prometheus package)",
)

_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "atan2",
    "inf",
    "nan",
}
_STRING = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`""")
_NAME = re.compile(r"(?<![\w.$:])[A-Za-z_:][A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"(?<![\w.$:])([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def selectors(expr: str) -> dict[str, set[str]]:
    """Metric name -> label names its matchers use, for every series an expression reads."""
    text = _STRING.sub('""', expr)
    found: dict[str, set[str]] = {}
    for m in _SELECTOR.finditer(text):
        labels = set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", m.group(2)))
        found.setdefault(m.group(1), set()).update(labels)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = _LABEL_LIST.sub(" ", text)  # by (...), on (...)
    for m in _NAME.finditer(text):
        word = m.group()
        if word.lower() in _KEYWORDS or text[m.end() :].lstrip().startswith("("):
            continue  # an operator, or a function's name
        found.setdefault(word, set())
    return found


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r.get("alert") or r["record"]: r["expr"] for g in groups for r in g["rules"]}


def dashboard_expressions() -> dict[str, str]:
    """Panel title (and target) -> PromQL; template queries give their selector."""
    dash = json.loads(DASHBOARD.read_text())
    found = {
        f"{p['title']} {t['refId']}": t["expr"]
        for p in dash["panels"]
        for t in p.get("targets", [])
    }
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
        assert m, f"template variable {var['name']}: unexpected query {query!r}"
        found[f"variable {var['name']}"] = m.group(1)
    return found


def test_selector_parsing_finds_names_and_matcher_labels():
    expr = (
        "sum by (le, project) (increase(leampoll_job_duration_seconds_bucket"
        '{instance=~"$instance",project=~"a|b"}[6h])) / on (instance) group_left '
        'time() - label_replace(node_textfile_mtime_seconds{file=~"x{1}"}, "p", "$1", '
        '"file", "leampoll-(.+)") > 24 * 3600 and bool up offset 5m'
    )
    assert selectors(expr) == {
        "leampoll_job_duration_seconds_bucket": {"instance", "project"},
        "node_textfile_mtime_seconds": {"file"},
        "up": set(),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, set[str]]:
    """Series name -> label names, as the real poller writes its metrics file."""
    from testing.pollers import LEAMPOLL, poller_flags
    from testing.portal_standin import PortalStandin
    from tests.conftest import PASSWORD, USER

    tmp = tmp_path_factory.mktemp("exported")
    metrics, workdir = tmp / "leampoll-chicago.prom", tmp / "jobdir"
    env = {
        "PATH": "/usr/bin:/bin",
        "PORTAL_USER": USER,
        "PORTAL_PASSWORD": PASSWORD,
        "PYTHONPATH": str(ROOT),
    }
    with PortalStandin(USER, PASSWORD) as portal:
        portal.queue("ok", "true")
        portal.queue("ko", "false")
        done = subprocess.run(
            [
                *LEAMPOLL,
                *poller_flags(workdir, max_backoff=None),
                "--project",
                "chicago",
                "--idle",
                "1",
                "--metrics-file",
                str(metrics),
                portal.url,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.read_text()):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_queries_name_only_series_the_poller_and_node_exporter_export(exported, source):
    assert "leampoll_state" in exported and "leampoll_jobs_total" in exported
    known = {**exported, **NODE_EXPORTER}
    expressions = rule_expressions() if source == "rules" else dashboard_expressions()
    assert len(expressions) >= 7
    problems = []
    for where, expr in expressions.items():
        used = selectors(expr)
        if not used:
            problems.append(f"{where}: no series found in {expr!r}")
        for name, labels in used.items():
            if name not in known:
                problems.append(f"{where}: {name} is not exported")
            elif labels - known[name] - TARGET_LABELS:
                problems.append(f"{where}: {name} has no label {sorted(labels - known[name])}")
    assert not problems, "\n".join(problems)


@needs_promtool
def test_promtool_check_rules():
    out = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in out.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_rules_pass():
    assert RULE_TESTS
    out = subprocess.run(
        [PROMTOOL, "test", "rules", *map(str, RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not():
    fires, quiet = set(), set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(rule_expressions())
    assert alerts - fires == set(), "alerts no test sees firing"
    assert alerts - quiet == set(), "alerts no test sees quiet"


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses each query as the expression of a recording rule."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, expr in enumerate(dashboard_expressions().values())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboard_panels_use_the_datasource_variable():
    dash = json.loads(DASHBOARD.read_text())
    assert {v["name"] for v in dash["templating"]["list"]} >= {"datasource", "instance", "project"}
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))

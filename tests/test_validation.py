"""plugins/filter/validation.py: the roles' checks beyond the argument specs.

Each rule case by case, as the roles' validate tasks call the filters; the
playbook runs (tests/test_provisioning.py, tests/test_security.py) show the
same messages failing a host before it is changed.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from testing.playbook import ROOT

_spec = importlib.util.spec_from_file_location(
    "validation", ROOT / "plugins" / "filter" / "validation.py"
)
val = importlib.util.module_from_spec(_spec)
sys.modules["validation"] = val
_spec.loader.exec_module(val)

PASSWORD = "pa55-w0rd"


def project(**over):
    base = {
        "name": "chicago",
        "portal_url": "https://portal.example.org/chicago",
        "portal_user": "poller",
        "portal_password": PASSWORD,
    }
    return {**base, **over}


def poll(projects=(), **settings):
    return val.leampoll_problems({"leam_projects": list(projects), **settings}, "alpha")


def test_good_variables_have_no_problem():
    assert (
        val.leam_problems(
            {
                "leam_user": "leam",
                "leam_jobdir_root": "/mnt/jobdir",
                "leam_jobdir_min_free": "15%",
                "leam_projects": [project()],
            },
            "alpha",
        )
        == []
    )
    good = {
        "leampoll_speed": 20,
        "leampoll_min_free_disk": "5G",
        "leampoll_job_timeout": 0,
        "leampoll_grace": "10",
        "leampoll_stop_margin": 30,
        "leampoll_drain_timeout": 3600,
        "leampoll_log_maxbytes": "50MB",
        "leampoll_log_backups": 0,
        "leampoll_extra_args": ["--checkout-timeout", "1800"],
        "leampoll_ca_file": "",
        "leampoll_retire_action": ["systemctl", "poweroff"],
    }
    assert poll([project(trusted_origins=["https://www.example.org"])], **good) == []


@pytest.mark.parametrize(
    "key,value",
    [
        ("leampoll_speed", 0),
        ("leampoll_speed", "nan"),
        ("leampoll_min_free_disk", "10Q"),
        ("leampoll_min_free_mem", "101%"),
        ("leampoll_job_timeout", -1),
        ("leampoll_stop_margin", 1.5),
        ("leampoll_drain_poll", 0),
        ("leampoll_retire_timeout", "soon"),
        ("leampoll_log_maxbytes", "50 MB"),
        ("leampoll_password_dir", "/etc/../passwords"),
        ("leampoll_prefix", "opt/leampoll"),
        ("leampoll_ca_file", "ca.pem"),
        ("leampoll_extra_args", ["--password=x"]),
        ("leampoll_extra_args", ["-U", "poller"]),
        ("leampoll_extra_args", ["a ;comment"]),
        ("leampoll_extra_args", "--x"),
        ("leampoll_retire_action", ["echo", "%(here)s"]),
    ],
)
def test_a_bad_setting_is_named_with_the_host(key, value):
    problems = poll(**{key: value})
    assert len(problems) == 1 and problems[0].startswith(f"alpha: {key}")


def test_sizes_are_the_pollers():
    # What the poller accepts (leampoll.units.parse_size), the role accepts.
    for size in ("5G", "512M", "1.5T", "100", "15%", "5GiB"):
        assert poll(leampoll_min_free_disk=size) == []
    assert val.leam_problems({"leam_jobdir_min_free": "plenty"}, "a")[0].startswith(
        "a: leam_jobdir_min_free must be a size"
    )


def test_credential_options_come_from_the_pollers_parser():
    assert val.credential_options() == ["--password", "--user", "-U", "-X"]


@pytest.mark.parametrize(
    "over,key",
    [
        ({"portal_url": "ftp://portal.example.org"}, "portal_url"),
        ({"portal_url": "https://user:pw@portal.example.org"}, "portal_url"),
        ({"portal_url": "https://portal.example.org/a b"}, "portal_url"),
        ({"portal_user": ""}, "portal_user"),
        ({"portal_password": "'quoted'"}, "portal_password"),
        ({"portal_password": "a ;b"}, "portal_password"),
        ({"ca_file": "relative/ca.pem"}, "ca_file"),
        ({"speed": 0}, "speed"),
        ({"min_free_mem": "lots"}, "min_free_mem"),
        ({"job_timeout": -5}, "job_timeout"),
        ({"trusted_origins": ["portal.example.org"]}, "trusted_origins"),
        ({"trusted_origins": "https://x.example.org"}, "trusted_origins"),
        ({"memory_max": "50%"}, "memory_max"),
        ({"tasks_max": -1}, "tasks_max"),
        ({"cpu_weight": 0}, "cpu_weight"),
        ({"learn_runs": 0}, "learn_runs"),
        ({"learn_margin": 0.5}, "learn_margin"),
        ({"need_disk": "big"}, "need_disk"),
        ({"need_memory": "-1G"}, "need_memory"),
        ({"need_inodes": "1G"}, "need_inodes"),
    ],
)
def test_a_bad_project_key_names_host_project_and_key(over, key):
    problems = poll([project(**over)])
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"alpha: leam_projects[0] (project chicago).{key} must")
    assert PASSWORD not in problems[0]


def test_an_absent_project_needs_no_portal_keys():
    assert poll([{"name": "gone", "state": "absent"}]) == []
    assert len(poll([{"name": "drained", "state": "drained"}])) == 3


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.3.2.1", "localhost", "[::1]", "[::ffff:127.0.0.1]"]
)
def test_plain_http_to_loopback_is_fine(host):
    assert (
        poll([project(portal_url=f"http://{host}:8080/p", trusted_origins=[f"http://{host}"])])
        == []
    )


def test_plain_http_to_a_remote_host_names_the_project_and_the_way_out():
    (line,) = poll([project(portal_url="http://10.0.0.1/p")])
    assert line.startswith("alpha: leam_projects[0] (project chicago): portal_url is plain http://")
    assert "allow_insecure_http" in line
    (line,) = poll([project(trusted_origins=["https://www.example.org", "http://10.0.0.5:8080"])])
    assert "trusted_origins has a plain http://" in line and "project chicago" in line
    allowed = project(portal_url="http://10.0.0.1/p", trusted_origins=["http://10.0.0.5"])
    assert poll([{**allowed, "allow_insecure_http": True}]) == []
    assert poll([{**allowed, "allow_insecure_http": "yes"}]) == []


def test_project_names_and_duplicates():
    problems = val.leam_problems(
        {"leam_projects": [project(name="../etc"), project(), project()]}, "alpha"
    )
    assert problems == [
        "alpha: leam_projects[0] (project ../etc).name must match ^[a-z0-9][a-z0-9_-]*$",
        "alpha: leam_projects has duplicate names (chicago); each project needs its own",
    ]


@pytest.mark.parametrize(
    "value",
    ["root", "Leam", "le am", 5],
)
def test_bad_user(value):
    assert val.leam_problems({"leam_user": value}, "h") == [
        "h: leam_user must be a user name ([a-z_][a-z0-9_-]*) other than root"
    ]


@pytest.mark.parametrize("value", ["/", "/etc", "/mnt/", "relative", "/mnt/./x"])
def test_bad_jobdir_root(value):
    (line,) = val.leam_problems({"leam_jobdir_root": value}, "h")
    assert line.startswith("h: leam_jobdir_root must be an absolute path")


@pytest.mark.parametrize(
    "key,value,ok",
    [
        ("node_exporter_listen_address", "127.0.0.1:9100", True),
        ("node_exporter_listen_address", ":9100", True),
        ("node_exporter_listen_address", "[::1]:9100", True),
        ("node_exporter_listen_address", "9100", False),
        ("node_exporter_extra_args", ["--no-collector.wifi"], True),
        ("node_exporter_extra_args", ["--x=$(id)"], False),
        ("node_exporter_textfile_dir", "/var/lib/leampoll/metrics", True),
        ("node_exporter_textfile_dir", "metrics", False),
    ],
)
def test_node_exporter(key, value, ok):
    problems = val.node_exporter_problems({key: value}, "h")
    assert problems == [] if ok else problems[0].startswith(f"h: {key} must")


def test_without_an_installed_poller_the_filter_uses_the_source_it_ships_with(tmp_path):
    # The installed collection: leampoll/ beside plugins/, no poller in site-packages
    # (-S leaves them out, the editable install of the checkout included).
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('v', {str(_spec.origin)!r})\n"
        "v = importlib.util.module_from_spec(spec); spec.loader.exec_module(v)\n"
        "print(sys.modules['leampoll'].__file__)\n"
        "print(v.leampoll_problems({'leampoll_min_free_disk': '10Q'}, 'h')[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert out.returncode == 0, out.stderr
    found, problem = out.stdout.splitlines()
    assert found == str(ROOT / "leampoll" / "__init__.py")
    assert problem.startswith("h: leampoll_min_free_disk must be a size")


@pytest.mark.parametrize(
    "key,value",
    [
        ("tasks_max", 5.0),  # the poller's int() refuses "5.0"
        ("tasks_max", 2**22),  # beyond what job-unit takes (with the keeper's one more)
        ("job_timeout", "inf"),  # the poller refuses it too (time.sleep(inf) fails)
        ("speed", "inf"),
    ],
)
def test_a_project_key_is_refused_as_the_poller_refuses_it(key, value):
    (line,) = poll([project(**{key: value})])
    assert line.startswith(f"alpha: leam_projects[0] (project chicago).{key} must be ")
    with pytest.raises(SystemExit):
        val.options.build_parser().parse_args([f"--{key.replace('_', '-')}", str(value)])


@pytest.mark.parametrize("key,value", [("tasks_max", 2**22 - 1), ("tasks_max", "0")])
def test_a_project_key_is_taken_as_the_poller_takes_it(key, value):
    assert poll([project(**{key: value})]) == []


def test_every_option_key_is_checked_with_words_for_what_it_takes():
    kinds = val.option_kinds()
    # The keys a project or leampoll_<key> may set: each has its conversion's words.
    for key in ("speed", "min_free_disk", "min_free_mem", "job_timeout", "memory_max"):
        assert key in kinds and not kinds[key].startswith("a value of")
    for key in ("tasks_max", "cpu_weight", "learn_runs", "learn_margin", "grace"):
        assert key in kinds and not kinds[key].startswith("a value of")
    assert "ca_file" not in kinds  # a path: the roles' own path rule
    (line,) = poll(leampoll_grace="-1")
    assert line == "alpha: leampoll_grace must be a number of seconds (0 or more)"


def test_truth_is_the_pollers_words_and_ansibles():
    for text in ("yes", "On", "1", "true", "y", "t"):
        assert val.truth(text)
    for value in ("no", "off", "0", "", "n", False, 0, None):
        assert not val.truth(value)


@pytest.mark.parametrize("mode,ok", [("0755", True), ("0750", True), ("755", False), (493, False)])
def test_jobdir_mode(mode, ok):
    problems = val.jobdir_problems({"jobdir_mode": mode}, "h")
    assert problems == ([] if ok else ['h: jobdir_mode must be a quoted octal mode such as "0755"'])


SUPERVISOR = {
    "supervisor_packages": ["supervisor"],
    "supervisor_conf": "/etc/supervisor/supervisord.conf",
    "supervisor_conf_dir": "/etc/supervisor/conf.d",
    "supervisor_include_files": "/etc/supervisor/conf.d/*.conf",
    "supervisor_programs_stopwaitsecs": [40, 40],
    "supervisor_stop_margin": 30,
    "supervisor_stop_timeout_max": 1740,
}


@pytest.mark.parametrize(
    "over",
    [
        {"supervisor_packages": []},
        {"supervisor_conf": "etc/supervisor/supervisord.conf"},
        {"supervisor_conf_dir": "/etc/../conf.d"},
        {"supervisor_include_files": ""},
    ],
)
def test_supervisor_paths_and_packages(over):
    assert val.supervisor_problems(SUPERVISOR, "alpha") == []
    (line,) = val.supervisor_problems({**SUPERVISOR, **over}, "alpha")
    assert line.startswith("alpha: supervisor_packages must not be empty, and supervisor_conf")


def test_supervisor_stop_timeout_and_its_bound():
    assert val.supervisor_stop_timeout([40, "40"], 30) == 110
    assert val.supervisor_stop_timeout([], 30) == 90  # never below Debian's 90 s
    many = {**SUPERVISOR, "supervisor_programs_stopwaitsecs": [600, 600, 600]}
    (line,) = val.supervisor_problems(many, "alpha")
    assert line.startswith("alpha: Supervisor would need up to 1830 s to stop")
    assert "600 + 600 + 600 s" in line and "supervisor_stop_timeout_max (1740 s)" in line

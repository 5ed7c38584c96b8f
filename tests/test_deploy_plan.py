"""The leampoll role's plan (plugins/filter/deploy_plan.py) on plain data.

One case per behaviour of a deploy that tests/test_provisioning.py shows on real
hosts: first install, a re-run, a changed setting, drained and absent projects,
upgrades, pollers busy past the drain's bound, pollers still settling; and the
drain and resume playbooks' choices.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from testing.playbook import ROOT

_spec = importlib.util.spec_from_file_location(
    "deploy_plan", ROOT / "plugins" / "filter" / "deploy_plan.py"
)
dp = importlib.util.module_from_spec(_spec)
sys.modules["deploy_plan"] = dp  # dataclasses look their module up there
_spec.loader.exec_module(dp)

BUILD = dp.Build("/cache/k/leampoll-3.0.0-py3-none-any.whl", "ab12", "/cache/k")
INSTALLED = dp.sha1(BUILD.marker)
FILES = {"chicago": "c1", "peoria": "p1", "stlouis": "s1"}


def wanted(*projects: str | tuple[str, str], files: dict | None = None, **settings) -> dp.Wanted:
    """Projects by name, or (name, state)."""
    listed = [dp.Project(*((p,) if isinstance(p, str) else p)) for p in projects]
    sums = {p.name: FILES[p.name] for p in listed if p.state != "absent"}
    return dp.Wanted(
        projects=listed, files={**sums, **(files or {})}, **{"build": BUILD, **settings}
    )


def host(
    states: dict[str, str] | None = None,
    files: dict | None = None,
    installed: str | None = INSTALLED,
    **more,
) -> dp.Host:
    """A host whose program files are as wanted unless `files` says otherwise."""
    states = states if states is not None else {}
    on_disk = {n: dp.ProgramFile(FILES[n]) for n in states if n in FILES}
    on_disk.update(files or {})
    return dp.Host(states=states, files=on_disk, installed=installed, **more)


def steps(plan: dp.Plan) -> dict[str, list[str]]:
    """The lists of what the tasks change, without the empty ones."""
    names = ("drain", "wait", "busy", "remove_files", "remove", "write", "add", "start")
    return {n: getattr(plan, n) for n in names if getattr(plan, n)}


def test_first_install_writes_adds_and_installs_everything():
    plan = dp.deploy(dp.Host(), wanted("chicago", "peoria"))
    assert plan.upgrade and plan.install and plan.link
    assert plan.changed == ["chicago", "peoria"]
    assert steps(plan) == {"write": ["chicago", "peoria"], "add": ["chicago", "peoria"]}
    assert plan.build["version"] == "3.0.0"
    assert plan.build["wheel_name"] == "leampoll-3.0.0-py3-none-any.whl"


def test_first_install_in_check_mode_links_nothing_not_yet_installed():
    plan = dp.deploy(dp.Host(supervisor=False), wanted("chicago", check_mode=True))
    assert plan.upgrade and plan.install and not plan.link
    assert steps(plan) == {}  # no Supervisor yet: nothing to ask it


def test_a_re_run_changes_nothing_and_touches_no_poller():
    plan = dp.deploy(host({"chicago": "RUNNING", "peoria": "RUNNING"}), wanted("chicago", "peoria"))
    assert not plan.upgrade and not plan.install and plan.link
    assert plan.changed == [] and steps(plan) == {}
    assert plan.left_running == ["chicago", "peoria"]


def test_a_changed_setting_drains_and_replaces_only_that_poller():
    plan = dp.deploy(
        host({"chicago": "RUNNING", "peoria": "RUNNING"}),
        wanted("chicago", "peoria", files={"chicago": "c2"}),
    )
    assert plan.changed == ["chicago"] and not plan.upgrade
    assert steps(plan) == {
        "drain": ["chicago"],
        "wait": ["chicago"],
        "remove": ["chicago"],
        "write": ["chicago"],
        "add": ["chicago"],
        "start": ["chicago"],
    }
    assert plan.left_running == ["peoria"]  # a new password reaches it by SIGHUP


@pytest.mark.parametrize(
    "found",
    [
        dp.ProgramFile("c1", mode="0644"),
        dp.ProgramFile("c1", owner="leam"),
        dp.ProgramFile("c1", group="leam"),
    ],
    ids=["mode", "owner", "group"],
)
def test_a_program_file_readable_beyond_root_is_rewritten(found):
    plan = dp.deploy(host({"chicago": "EXITED"}, files={"chicago": found}), wanted("chicago"))
    assert plan.changed == ["chicago"]
    assert steps(plan) == {
        "remove": ["chicago"],
        "write": ["chicago"],
        "add": ["chicago"],
        "start": ["chicago"],
    }


def test_a_missing_program_of_a_known_file_is_added_again():
    plan = dp.deploy(
        host({"chicago": "RUNNING"}, files={"peoria": dp.ProgramFile("p1")}),
        wanted("chicago", "peoria"),
    )
    assert plan.changed == [] and steps(plan) == {"add": ["peoria"]}


def test_a_stopped_poller_of_a_present_project_is_started():
    plan = dp.deploy(host({"chicago": "EXITED", "peoria": "STOPPED"}), wanted("chicago", "peoria"))
    assert steps(plan) == {"start": ["chicago", "peoria"]}


def test_a_drained_project_is_drained_and_its_program_kept_stopped():
    # Its program file changes to autostart=false: it is replaced, and not started.
    plan = dp.deploy(
        host({"chicago": "RUNNING", "peoria": "RUNNING"}),
        wanted("chicago", ("peoria", "drained"), files={"peoria": "p-drained"}),
    )
    assert plan.drained == ["peoria"] and plan.present == ["chicago"]
    assert steps(plan) == {
        "drain": ["peoria"],
        "wait": ["peoria"],
        "remove": ["peoria"],
        "write": ["peoria"],
        "add": ["peoria"],
    }


def test_a_drained_project_found_running_is_drained_again_but_not_rewritten():
    plan = dp.deploy(host({"peoria": "RUNNING"}), wanted(("peoria", "drained")))
    assert steps(plan) == {"drain": ["peoria"], "wait": ["peoria"]}
    plan = dp.deploy(host({"peoria": "EXITED"}), wanted(("peoria", "drained")))
    assert steps(plan) == {}


def test_a_new_drained_project_gets_its_program_but_no_start():
    plan = dp.deploy(host({"chicago": "RUNNING"}), wanted("chicago", ("peoria", "drained")))
    assert steps(plan) == {"write": ["peoria"], "add": ["peoria"]}


def test_an_absent_project_is_drained_and_removed():
    plan = dp.deploy(
        host({"chicago": "RUNNING", "peoria": "RUNNING"}), wanted("chicago", ("peoria", "absent"))
    )
    assert plan.absent == ["peoria"] and plan.present == ["chicago"]
    assert steps(plan) == {
        "drain": ["peoria"],
        "wait": ["peoria"],
        "remove_files": ["peoria"],
        "remove": ["peoria"],
    }
    assert plan.left_running == ["chicago"]


def test_an_absent_project_already_gone_only_has_its_file_made_sure_of():
    plan = dp.deploy(host({"chicago": "RUNNING"}), wanted("chicago", ("peoria", "absent")))
    assert steps(plan) == {"remove_files": ["peoria"]}


def test_an_absent_project_busy_past_the_bound_is_left_for_a_later_run():
    before = host({"chicago": "RUNNING", "peoria": "RUNNING"})
    plan = dp.deploy(before, wanted("chicago", ("peoria", "absent")))
    before.busy = ["peoria"]  # still RUNNING when the wait ended
    after = dp.deploy(before, wanted("chicago", ("peoria", "absent")))
    assert after.drain == plan.drain == ["peoria"]
    assert steps(after) == {"drain": ["peoria"], "wait": ["peoria"], "busy": ["peoria"]}


def test_a_changed_setting_busy_past_the_bound_changes_nothing_there():
    busy_host = host({"chicago": "RUNNING", "peoria": "RUNNING"}, busy=["chicago"])
    plan = dp.deploy(busy_host, wanted("chicago", "peoria", files={"chicago": "c2"}))
    assert plan.busy == ["chicago"] and plan.changed == ["chicago"]
    assert steps(plan) == {"drain": ["chicago"], "wait": ["chicago"], "busy": ["chicago"]}
    assert plan.left_running == ["peoria"]


def test_an_upgrade_drains_every_running_poller_and_starts_them_again():
    plan = dp.deploy(
        host({"chicago": "RUNNING", "peoria": "EXITED"}, installed="old"),
        wanted("chicago", "peoria"),
    )
    assert plan.upgrade and plan.install and plan.link
    assert steps(plan) == {
        "drain": ["chicago"],
        "wait": ["chicago"],
        "start": ["chicago", "peoria"],
    }
    assert plan.build["marker"] == "leampoll-3.0.0-py3-none-any.whl sha256:ab12\n"


def test_an_upgrade_with_a_busy_poller_is_postponed_the_others_start_again():
    fleet = host({"chicago": "RUNNING", "stlouis": "RUNNING"}, installed="old", busy=["chicago"])
    plan = dp.deploy(fleet, wanted("chicago", "stlouis"))
    assert plan.upgrade and not plan.install and plan.link  # the old build stays linked
    assert plan.busy == ["chicago"]
    assert steps(plan) == {
        "drain": ["chicago", "stlouis"],
        "wait": ["chicago", "stlouis"],
        "busy": ["chicago"],
        "start": ["stlouis"],
    }


def test_the_metrics_extra_is_part_of_the_installed_build():
    with_metrics = dp.Build(BUILD.wheel, BUILD.sha256, extras="[metrics]")
    plan = dp.deploy(host({"chicago": "RUNNING"}), wanted("chicago", build=with_metrics))
    assert plan.upgrade and plan.drain == ["chicago"]
    assert plan.build["marker"].startswith("leampoll-3.0.0-py3-none-any.whl[metrics] ")


def test_pollers_starting_or_backing_off_are_not_drained_and_are_started():
    plan = dp.deploy(
        host({"chicago": "STARTING", "peoria": "BACKOFF"}, installed="old"),
        wanted("chicago", "peoria", files={"peoria": "p2"}),
    )
    assert plan.drain == [] and plan.left_running == []
    assert steps(plan) == {
        "remove": ["peoria"],
        "write": ["peoria"],
        "add": ["peoria"],
        "start": ["chicago", "peoria"],
    }


def test_programs_unknown_to_the_inventory_are_left_alone():
    plan = dp.deploy(host({"chicago": "RUNNING", "old": "RUNNING"}), wanted("chicago"))
    assert steps(plan) == {} and plan.left_running == ["chicago", "old"]


def test_check_mode_waits_for_nothing_and_sees_no_busy_poller():
    plan = dp.deploy(
        host({"chicago": "RUNNING"}, busy=["chicago"], installed="old"),
        wanted("chicago", check_mode=True),
    )
    assert plan.drain == ["chicago"] and plan.wait == [] and plan.busy == []
    assert plan.install


def test_the_wait_is_bounded_in_polls():
    plan = dp.deploy(
        host({"chicago": "RUNNING"}), wanted("chicago", files={"chicago": "x"}, timeout=25, poll=10)
    )
    assert (plan.wait_retries, plan.wait_delay, plan.wait_timeout) == (3, 10, 25)


def test_without_supervisor_no_program_is_touched():
    plan = dp.deploy(dp.Host(supervisor=False), wanted("chicago", ("peoria", "absent")))
    assert steps(plan) == {} and plan.install


# -- the ops playbooks ----------------------------------------------------------------


def test_drain_chooses_the_running_pollers_named():
    states = {"chicago": "RUNNING", "peoria": "EXITED", "old": "RUNNING", "x": "STARTING"}
    plan = dp.drain(host(states), dp.Wanted(chosen=["chicago", "peoria"]))
    assert steps(plan) == {"drain": ["chicago"], "wait": ["chicago"]}
    plan = dp.drain(host(states), dp.Wanted())  # all, in the inventory or not
    assert steps(plan) == {"drain": ["chicago", "old"], "wait": ["chicago", "old"]}


def test_drain_without_waiting_and_with_a_busy_poller():
    running = {"chicago": "RUNNING", "stlouis": "RUNNING"}
    assert steps(dp.drain(host(running), dp.Wanted(wait=False))) == {
        "drain": ["chicago", "stlouis"]
    }
    plan = dp.drain(host(running, busy=["stlouis"]), dp.Wanted(timeout=120, poll=10))
    assert plan.busy == ["stlouis"] and plan.wait_retries == 12


def test_resume_starts_exited_pollers_of_present_projects_named():
    states = {
        "chicago": "EXITED",
        "peoria": "STOPPED",
        "stlouis": "RUNNING",
        "drained": "EXITED",
        "fatal": "FATAL",
        "old": "EXITED",
        "back": "BACKOFF",
    }
    every = dp.Wanted(
        projects=[
            dp.Project("chicago"),
            dp.Project("peoria"),
            dp.Project("stlouis"),
            dp.Project("drained", "drained"),
            dp.Project("fatal"),
            dp.Project("back"),
        ]
    )
    assert dp.resume(host(states), every).start == ["chicago", "peoria", "fatal"]
    every.chosen = ["peoria", "drained"]
    assert dp.resume(host(states), every).start == ["peoria"]


# -- what Ansible hands over -------------------------------------------------------


STATUS = """leam-idle-shutdown               RUNNING   pid 12, uptime 0:01:00
leampoll-chicago                 RUNNING   pid 40, uptime 0:10:00
leampoll-peoria                  EXITED    Nov 27 11:00 AM
leampoll-stlouis                 BACKOFF   Exited too quickly (process log may have details)
leampoll-tinyproj                FATAL     Exited too quickly (process log may have details)
"""


def test_supervisor_status_is_read_per_project():
    assert dp.states(STATUS) == {
        "chicago": "RUNNING",
        "peoria": "EXITED",
        "stlouis": "BACKOFF",
        "tinyproj": "FATAL",
    }
    assert dp.settling(STATUS) == ["stlouis"]
    assert dp.states("") == {} and dp.states(None) == {}


def test_busy_pollers_are_read_from_the_drain_waits_results():
    waited = {
        "results": [
            {"item": "chicago", "stdout": "leampoll-chicago  RUNNING  pid 40"},
            {"item": "peoria", "stdout": "leampoll-peoria  EXITED  Nov 27"},
            {"item": "stlouis", "skipped": True},
        ]
    }
    assert dp.busy(waited) == ["chicago"]
    assert dp.busy({"results": [], "skipped": True}) == [] and dp.busy(None) == []


def test_the_filter_takes_what_the_role_registered():
    found = [
        {
            "path": "/etc/supervisor/conf.d/leampoll-chicago.conf",
            "checksum": "c1",
            "mode": "0600",
            "pw_name": "root",
            "gr_name": "root",
        },
        {
            "path": "/etc/supervisor/conf.d/leampoll-peoria.conf",
            "checksum": "p1",
            "mode": "0600",
            "pw_name": "root",
            "gr_name": "root",
        },
    ]
    plan = dp.leampoll_plan(
        {
            "states": STATUS,
            "files": found,
            "supervisor": True,
            "installed": {"exists": True, "checksum": INSTALLED},
        },
        {
            "projects": [
                {"name": "chicago", "portal_url": "https://x"},
                {"name": "peoria", "state": "absent"},
                {"name": "stlouis"},
            ],
            "files": {"chicago": "c1", "stlouis": "s1"},
            "build": {"wheel": BUILD.wheel, "sha256": "ab12", "dir": "/cache/k"},
            "extras": "",
            "timeout": "300",
            "poll": 10,
            "wait": True,
            "check_mode": False,
        },
    )
    assert isinstance(plan, dict) and plan["upgrade"] is False
    assert {
        k: v
        for k, v in plan.items()
        if k in ("remove_files", "remove", "write", "add", "start", "drain")
    } == {
        "drain": [],
        "remove_files": ["peoria"],
        "remove": ["peoria", "stlouis"],
        "write": ["stlouis"],
        "add": ["stlouis"],
        "start": ["stlouis"],
    }
    assert plan["wait_retries"] == 30


def test_a_new_password_file_signals_only_the_pollers_left_running():
    running = {"chicago": "RUNNING", "peoria": "RUNNING", "stlouis": "EXITED"}
    plan = dp.deploy(
        host(running, passwords={"chicago": "old", "peoria": "same", "stlouis": "old"}),
        wanted(
            "chicago",
            "peoria",
            "stlouis",
            files={"peoria": "p2"},  # drained and restarted: reads the file anew
            passwords={"chicago": "new", "peoria": "new", "stlouis": "new"},
        ),
    )
    assert plan.left_running == ["chicago"] and plan.signal == ["chicago"]
    same = dp.deploy(
        host(running, passwords={"chicago": "x"}), wanted("chicago", passwords={"chicago": "x"})
    )
    assert same.signal == []
    # env mode: no password file, no signal.
    assert dp.deploy(host(running), wanted("chicago")).signal == []


@pytest.mark.parametrize(
    "on_host,wanted_idle,remove,add",
    [
        (None, "i1", True, True),  # first time: added (removing a missing program is harmless)
        ("i1", "i1", False, False),  # unchanged: not touched
        ("i1", "i2", True, True),  # changed: read anew
        ("i1", None, True, False),  # no longer wanted
        (None, None, False, False),
    ],
)
def test_the_idle_shutdown_program_is_touched_only_when_it_changes(
    on_host, wanted_idle, remove, add
):
    plan = dp.deploy(host(idle=on_host), wanted("chicago", idle=wanted_idle))
    assert (plan.idle_remove, plan.idle_add) == (remove, add)
    bare = dp.deploy(host(idle=on_host, supervisor=False), wanted("chicago", idle=wanted_idle))
    assert (bare.idle_remove, bare.idle_add) == (False, False)


def test_the_filter_hashes_the_rendered_files_and_reads_the_found_ones():
    found = [
        {
            "path": "/etc/supervisor/conf.d/leampoll-chicago.conf",
            "checksum": dp.sha1("c"),
            "mode": "0600",
            "pw_name": "root",
            "gr_name": "root",
        },
        {"path": "/etc/supervisor/conf.d/leam-idle-shutdown.conf", "checksum": dp.sha1("i")},
    ]
    passwords = [{"path": "/etc/leampoll/passwords/chicago.password", "checksum": dp.sha1("x\n")}]
    status = "leampoll-chicago RUNNING pid 1, uptime 0:01:00\n"
    plan = dp.leampoll_plan(
        {"states": status, "files": found, "password_files": passwords},
        {
            "projects": [{"name": "chicago"}],
            "programs": {"chicago": "c2"},
            "passwords": {"chicago": "y\n"},
            "idle": "i",
        },
    )
    assert plan["changed"] == ["chicago"] and plan["drain"] == ["chicago"]
    assert plan["signal"] == [] and plan["idle_remove"] is False
    plan = dp.leampoll_plan(
        {"states": status, "files": found, "password_files": passwords},
        {
            "projects": [{"name": "chicago"}],
            "programs": {"chicago": "c"},
            "passwords": {"chicago": "y\n"},
            "idle": "",
        },
    )
    assert plan["signal"] == ["chicago"] and plan["idle_remove"] is True


def test_the_filter_reads_the_ops_playbooks_choices():
    chosen = dp.leampoll_plan({"states": STATUS}, {"chosen": "all", "wait": "false"}, "drain")
    assert chosen["drain"] == ["chicago"] and chosen["wait"] == []
    named = dp.leampoll_plan({"states": STATUS}, {"chosen": ["peoria"]}, "drain")
    assert named["drain"] == []
    listed = dp.leampoll_plan({"states": STATUS}, {"chosen": "peoria, chicago"}, "drain")
    assert listed["drain"] == ["chicago"]
    with pytest.raises(ValueError, match="action must be one of deploy, drain, resume"):
        dp.leampoll_plan({}, {}, "restart")
    with pytest.raises(ValueError, match="leam_projects must be a list of projects"):
        dp.leampoll_plan({}, {"projects": "[]"}, "resume")
    with pytest.raises(ValueError, match="timeout must be a number"):
        dp.leampoll_plan({}, {"timeout": "soon"}, "drain")


def test_not_ready_names_pollers_not_back_on_the_new_version():
    rows = [
        {
            "project": "chicago",
            "supervisor": "RUNNING",
            "version": "3.99.0",
            "last_poll_ago": 1.5,
            "uptime": 20,
        },
        {
            "project": "peoria",
            "supervisor": "RUNNING",
            "version": "3.98.0",
            "last_poll_ago": 1,
            "uptime": 20,
        },
        {
            "project": "stlouis",
            "supervisor": "RUNNING",
            "version": "3.99.0",
            "last_poll_ago": 30,
            "uptime": 20,
        },  # its last poll was before its start
        {
            "project": "quiet",
            "supervisor": "RUNNING",
            "version": "3.99.0",
            "last_poll_ago": None,
            "uptime": 5,
        },
    ]
    projects = [{"name": n} for n in ("chicago", "peoria", "stlouis", "quiet", "missing")]
    projects.append({"name": "off", "state": "drained"})
    assert dp.not_ready(projects, json.dumps(rows), "leampoll 3.99.0") == [
        "peoria",
        "stlouis",
        "quiet",
        "missing",
    ]
    assert dp.not_ready([{"name": "chicago"}], "", "leampoll 3.99.0") == ["chicago"]
    assert dp.not_ready([{"name": "chicago"}], "not json", "leampoll 3.99.0") == ["chicago"]


def test_the_failure_names_the_busy_pollers_and_what_waits_for_them():
    busy_host = {"states": STATUS, "busy": "leampoll-chicago   RUNNING   pid 1, uptime 0:10:00"}
    wanted_data = {
        "projects": [{"name": "chicago"}],
        "build": {"wheel": BUILD.wheel, "sha256": "new"},
        "timeout": 300,
    }
    plan = dp.leampoll_plan(
        {**busy_host, "installed": {"exists": True, "checksum": "old"}}, wanted_data
    )
    assert plan["failure"] == (
        "leampoll-chicago still running a job after 300 s; left as it is, and the upgrade to "
        "3.0.0 postponed. It is draining: it pops no new job and stays stopped once its job "
        "ends. Run the play again to finish the change."
    )
    drained = dp.leampoll_plan(busy_host, {"timeout": 60}, "drain")
    assert drained["failure"] == (
        "leampoll-chicago still running a job after 60 s. It is draining: it pops no new job "
        "and stops once its job ends."
    )
    assert dp.leampoll_plan({"states": STATUS}, {"timeout": 60}, "drain")["failure"] == ""


LAYOUT = dp.Layout(
    conf_dir="/etc/supervisor/conf.d",
    idle_conf="/etc/supervisor/conf.d/leam-idle-shutdown.conf",
    password_dir="/etc/leampoll/passwords",
    password_file_mode=True,
    metrics_dir="/var/lib/leampoll/metrics",
)


def test_an_absent_project_loses_its_program_password_and_metrics_files():
    plan = dp.deploy(
        host({"chicago": "RUNNING", "peoria": "EXITED"}),
        wanted("chicago", ("peoria", "absent"), idle="i1", layout=LAYOUT),
    )
    assert plan.delete == [
        "/etc/supervisor/conf.d/leampoll-peoria.conf",
        "/etc/leampoll/passwords/peoria.password",
        "/var/lib/leampoll/metrics/leampoll-peoria.prom",
    ]
    assert plan.remove_programs == ["leampoll-peoria", "leam-idle-shutdown"]


def test_features_turned_off_lose_their_files_and_a_busy_poller_keeps_its_program_file():
    env_mode = dp.Layout(LAYOUT.conf_dir, LAYOUT.idle_conf, LAYOUT.password_dir, False)
    plan = dp.deploy(
        host({"peoria": "RUNNING"}, busy=["peoria"]),
        wanted("chicago", ("peoria", "absent"), layout=env_mode),
    )
    # No idle shut-down, env mode, no metrics; peoria still busy: its file stays.
    assert plan.delete == [LAYOUT.idle_conf, LAYOUT.password_dir]
    assert dp.deploy(host(), wanted("chicago")).delete == []  # no layout: nothing named


def test_program_files_and_the_idle_shutdowns_are_written_then_added_then_pollers_started():
    plan = dp.deploy(
        host({"chicago": "EXITED", "stlouis": "RUNNING"}, files={"stlouis": dp.ProgramFile("x")}),
        wanted("chicago", "peoria", "stlouis", idle="i1", layout=LAYOUT),
    )
    assert plan.write_files == [
        {"path": "/etc/supervisor/conf.d/leampoll-peoria.conf", "name": "peoria", "mode": "0600"},
        {"path": "/etc/supervisor/conf.d/leampoll-stlouis.conf", "name": "stlouis", "mode": "0600"},
        {"path": LAYOUT.idle_conf, "name": "", "mode": "0644"},
    ]
    assert plan.supervise == [
        {"name": "leampoll-peoria", "state": "present"},
        {"name": "leampoll-stlouis", "state": "present"},
        {"name": "leam-idle-shutdown", "state": "present"},
        {"name": "leampoll-chicago", "state": "started"},
        {"name": "leampoll-stlouis", "state": "started"},  # drained, so stopped: no-op if added
    ]
    # Without Supervisor (check mode on a bare host) only the idle file is written.
    bare = dp.deploy(host(supervisor=False), wanted("chicago", idle="i1", layout=LAYOUT))
    assert [f["name"] for f in bare.write_files] == [""] and bare.supervise == []


def test_the_filter_reads_the_layout_and_the_password_files_from_the_one_find():
    found = [
        {
            "path": "/etc/supervisor/conf.d/leampoll-chicago.conf",
            "checksum": dp.sha1("c"),
            **{"mode": "0600", "pw_name": "root", "gr_name": "root"},
        },
        {"path": "/etc/leampoll/passwords/chicago.password", "checksum": dp.sha1("x\n")},
    ]
    layout = {
        "conf_dir": "/c",
        "idle_conf": "/c/leam-idle-shutdown.conf",
        "password_dir": "/p",
        "password_mode": "file",
        "metrics_dir": "/m",
        "metrics": "False",
    }
    plan = dp.leampoll_plan(
        {"states": "leampoll-chicago RUNNING pid 1, uptime 0:01:00\n", "files": found},
        {
            "projects": [{"name": "chicago"}],
            "programs": {"chicago": "c"},
            "passwords": {"chicago": "y\n"},
            "layout": layout,
        },
    )
    assert plan["signal"] == ["chicago"]
    assert plan["delete"] == ["/c/leam-idle-shutdown.conf"]  # no metrics files to clean


@pytest.mark.parametrize(
    "mode,offline",
    [("wheelhouse", ["--no-index", "--find-links", "/opt/leampoll/wheelhouse"]), ("index", [])],
)
def test_pip_installs_the_copied_wheel_with_its_extras_offline_from_a_wheelhouse(mode, offline):
    build = {"wheel_name": "leampoll-3.0.0-py3-none-any.whl", "extras": "[metrics]"}
    argv = dp.pip_argv(build, "/opt/leampoll/venv", "/opt/leampoll", mode, ["--retries", 1])
    assert argv == [
        "/opt/leampoll/venv/bin/python",
        *("-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--force-reinstall"),
        *offline,
        *("--retries", "1"),
        "/opt/leampoll/dist/leampoll-3.0.0-py3-none-any.whl[metrics]",
    ]

"""``python -m testing.sandbox``: the sandbox hosts from a shell."""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Sequence

from testing.sandbox.hosts import Sandbox
from testing.sandbox.settings import (
    DEFAULT_CACHE_DIR,
    DEFAULT_JOBDIR,
    DEFAULT_STATE_DIR,
    INIT_SYSTEMD,
    INITS,
    SUITE,
    SUITES,
)
from testing.sandbox.system import SandboxError

# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------


def _parse_pairs(items: Sequence[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{what} wants NAME=VALUE, got {item!r}")
        pairs[name] = value
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testing.sandbox",
        description="Sandbox test hosts (namespaces, systemd or sshd as PID 1, SSH on 127.0.0.N).",
    )
    parser.add_argument(
        "--state-dir",
        default=str(DEFAULT_STATE_DIR),
        help="running hosts' state (env LEAM_SANDBOX_STATE)",
    )
    parser.add_argument(
        "--cache-dir",
        default=str(DEFAULT_CACHE_DIR),
        help="root filesystem cache (env LEAM_SANDBOX_CACHE)",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)

    def variant(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--init",
            choices=INITS,
            default=INIT_SYSTEMD,
            help="PID 1 of the hosts: systemd (default) or none (sshd)",
        )
        p.add_argument(
            "--suite", choices=SUITES, default=SUITE, help=f"Debian suite (default {SUITE})"
        )
        p.add_argument(
            "--include",
            default="",
            metavar="PKG,PKG",
            help="more packages in the root filesystem (a cached variant)",
        )

    variant(sub.add_parser("build", help="build the cached root filesystem if missing"))
    p_up = sub.add_parser("up", help="boot hosts and wait until SSH works")
    p_up.add_argument("names", nargs="+", metavar="NAME")
    variant(p_up)
    p_up.add_argument(
        "--jobdir-size",
        action="append",
        default=[],
        metavar="NAME=SIZE",
        help=f"mount a tmpfs of SIZE at {DEFAULT_JOBDIR} in host NAME",
    )
    p_up.add_argument(
        "--index",
        action="append",
        default=[],
        metavar="NAME=N",
        help="put host NAME on 127.0.0.N (default: first free N >= 10)",
    )
    p_down = sub.add_parser("down", help="stop hosts and release their mounts")
    p_down.add_argument("names", nargs="*", metavar="NAME")
    p_down.add_argument("--all", action="store_true", help="every host in the state dir")
    sub.add_parser("status", help="list hosts")
    for cmd, what in (
        ("boot", "boot stopped systemd hosts again (same disk)"),
        ("reboot", "systemctl reboot inside, then boot the same disk"),
        ("power-cut", "SIGKILL the hosts' systemd; disk kept, host stays down"),
    ):
        sub.add_parser(cmd, help=what).add_argument("names", nargs="+", metavar="NAME")
    p_inv = sub.add_parser("inventory", help="write an Ansible YAML inventory")
    p_inv.add_argument("path")
    p_inv.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="GROUP=H1,H2",
        help="group membership (default: all hosts in leam_jobservers)",
    )
    p_ssh = sub.add_parser("ssh", help="run a command on a host over SSH")
    p_ssh.add_argument("name")
    p_ssh.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    sb = Sandbox(args.state_dir, args.cache_dir)
    try:
        include = [p for p in getattr(args, "include", "").split(",") if p]
        if args.cmd == "build":
            sb.log(f"root filesystem: {sb.ensure_rootfs(args.suite, args.init, include)}")
        elif args.cmd == "up":
            sizes = _parse_pairs(args.jobdir_size, "--jobdir-size")
            indexes = {k: int(v) for k, v in _parse_pairs(args.index, "--index").items()}
            hosts = sb.up_many(
                args.names,
                sizes,
                indexes,
                init=args.init,
                suites={n: args.suite for n in args.names},
                include=include,
            )
            for host in hosts:
                sb.log(f"{host.name}: up at {host.address} (root {host.root})")
            sb.log(f"ssh key: {sb.key_file}")
        elif args.cmd == "down":
            if not args.names and not args.all:
                parser.error("down wants host names or --all")
            if args.all:
                sb.log(f"down: {', '.join(sb.down_all()) or 'nothing to do'}")
            for name in args.names:
                if not sb.down(name):
                    sb.log(f"{name}: not found")
        elif args.cmd in ("boot", "reboot", "power-cut"):
            act = {"boot": sb.boot, "reboot": sb.reboot, "power-cut": sb.power_cut}[args.cmd]
            for name in args.names:
                host = act(name)
                sb.log(f"{name}: {args.cmd} done, boot {host.boot_id if host.alive else '-'}")
        elif args.cmd == "status":
            for host in sb.hosts():
                state = "running" if host.alive else "stopped"
                extra = (
                    f" jobdir {host.state['jobdir_size']}" if host.state.get("jobdir_size") else ""
                )
                print(
                    f"{host.name:20} {host.address:15} {state:8} pid1={host.pid1}"
                    f" mode={host.state.get('mode')} init={host.init} suite={host.suite}"
                    f" boots={host.state.get('boots', 1)}{extra}"
                )
        elif args.cmd == "inventory":
            groups = None
            if args.group:
                groups = {
                    g: [h for h in v.split(",") if h]
                    for g, v in _parse_pairs(args.group, "--group").items()
                }
            sb.log(f"inventory written to {sb.write_inventory(args.path, groups)}")
        elif args.cmd == "ssh":
            cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
            host = sb.host(args.name)
            argv_ssh = host.ssh_command(" ".join(cmd) if cmd else None)  # like ssh(1)
            if not cmd:  # interactive login
                argv_ssh.insert(1, "-t")
            return subprocess.call(argv_ssh)
    except SandboxError as exc:
        sb.log(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        sb.log("interrupted")
        return 130
    return 0

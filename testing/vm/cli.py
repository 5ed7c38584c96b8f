"""``python -m testing.vm``: build the image, boot a VM, run a command or the project's
tests inside it, clean up what a killed run left."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from testing.sandbox.system import SandboxError, default_log
from testing.vm.guest import GUEST_PROJECT, prepare, project_files, run_pytest
from testing.vm.image import ImageSpec, ensure_image
from testing.vm.machine import DEFAULT_STATE_PARENT, VMConfig, booted, clean, leftovers

PROJECT = Path(__file__).resolve().parents[2]


def _config(args: argparse.Namespace) -> VMConfig:
    return VMConfig(
        memory_mb=args.memory, cpus=args.cpus, network=args.network, state_parent=args.state_parent
    )


def _build(args: argparse.Namespace) -> tuple[ImageSpec, float]:
    spec = ImageSpec(suite=args.suite)
    started = time.monotonic()
    ensure_image(spec)
    return spec, round(time.monotonic() - started, 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testing.vm",
        description="VMs booting Debian's own kernel under QEMU (TCG), reached over SSH "
        "on 127.0.0.1; for what the sandbox hosts' shared kernel cannot show (cgroup v2).",
    )
    parser.add_argument("--suite", default="bookworm", choices=("bookworm", "trixie"))
    parser.add_argument("--memory", type=int, default=2048, help="guest memory in MiB")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument(
        "--network", action="store_true", help="let the guest reach what this machine reaches"
    )
    parser.add_argument(
        "--state-parent",
        type=Path,
        default=DEFAULT_STATE_PARENT,
        help="where each VM's overlay, key and console log live (env LEAM_VM_STATE)",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build the cached image (if missing), print where it is")
    run = sub.add_parser("run", help="boot, run a shell command as root, power off")
    run.add_argument(
        "--copy-project", action="store_true", help=f"copy the checkout to {GUEST_PROJECT} first"
    )
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...")
    pt = sub.add_parser("pytest", help="boot, run test modules of the checkout as root, power off")
    pt.add_argument("tests", nargs="+", help="paths relative to the checkout")
    pt.add_argument(
        "--results", type=Path, default=PROJECT / ".build/vm", help="where results land"
    )
    pt.add_argument("--pytest-arg", action="append", default=[], help="extra pytest argument")
    sub.add_parser("leftovers", help="list state directories of VMs still here")
    sub.add_parser("clean", help="kill leftover VMs by their recorded pid, remove their files")
    args = parser.parse_args(argv)
    log = default_log
    try:
        if args.cmd == "leftovers":
            found = leftovers(args.state_parent)
            for path in found:
                print(path)
            return 1 if found else 0
        if args.cmd == "clean":
            print(f"removed {clean(args.state_parent, log)} leftover VM(s)")
            return 0
        spec, build_seconds = _build(args)
        image = ensure_image(spec)
        if args.cmd == "build":
            print(
                json.dumps(
                    {"image": str(image.path), "seconds": build_seconds, **image.meta}, indent=2
                )
            )
            return 0
        with booted(image, _config(args), log) as vm:
            if args.cmd == "run":
                command = args.command[1:] if args.command[:1] == ["--"] else args.command
                if not command:
                    parser.error("run wants -- COMMAND")
                if args.copy_project:
                    vm.copy_in(PROJECT, GUEST_PROJECT, project_files(PROJECT))
                return vm.run(" ".join(command), check=False, stdout=None, timeout=3600).returncode
            started = time.monotonic()
            prepare(vm, PROJECT, spec.suite, log)
            prepare_seconds = round(time.monotonic() - started, 1)
            result = run_pytest(vm, args.tests, args.results, args.pytest_arg, log=log)
            sys.stdout.write(result.output)
            result.write_summary(
                args.results / "summary.json",
                tests=args.tests,
                image=image.path.name,
                kernel=image.meta.get("kernel"),
                build_seconds=build_seconds,
                boot_seconds=vm.boot_seconds,
                system_state=vm.system_state,
                prepare_seconds=prepare_seconds,
            )
            return result.returncode
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

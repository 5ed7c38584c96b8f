#!/usr/bin/env bash
# What the test suite, the demo and CI need of the machine itself, installed
# once: `make deps` (a step of `make test`, `make faults` and `make demo`) and
# .ci/run call this script; this is the one list. Quick and offline when
# everything is there: dpkg's own record is read first, and apt (with a
# refresh of its package lists) is run only for what is missing. Not root,
# or a package apt cannot get: a warning, and the tests that need it skip,
# naming it (pytest -rs lists every skip). Registries come from the
# machine's own apt configuration; none is named here.
set -uo pipefail

# Sandbox hosts (debootstrap, unshare, mount, ssh), job checkouts (git,
# subversion), the project's venv (python3-venv) and make itself.
PACKAGES=(git subversion make debootstrap openssh-client util-linux mount procps python3-venv)
# `tools/setup-machine.sh vm` (make test-cgroup-v2): QEMU and mkfs.ext4 for the
# VM that boots Debian's own kernel (docs/vm.md); the rest of the suite needs neither.
if [ "${1:-}" = vm ]; then
    PACKAGES+=(qemu-system-x86 qemu-utils e2fsprogs)
fi
# The libraries of Debian's cloud-init under /usr/bin/python3: its
# `cloud-init schema` checks the rendered user data (testing/cloud_init.py
# unpacks the package without installing it; its boot units have no
# business on this machine).
PACKAGES+=(python3-yaml python3-jsonschema python3-jinja2 python3-configobj python3-jsonpatch
           python3-netifaces python3-requests python3-oauthlib python3-serial)

warn() { printf 'setup-machine: %s\n' "$*" >&2; }

# One dpkg-query for all of them; a package it does not know is missing too.
installed=" $(dpkg-query --show --showformat='${Package}:${db:Status-Abbrev} ' "${PACKAGES[@]}" 2>/dev/null) "
missing=()
for pkg in "${PACKAGES[@]}"; do
    [[ $installed == *" $pkg:ii "* ]] || missing+=("$pkg")
done
command -v promtool >/dev/null || need_promtool=1

if [[ ${#missing[@]} -eq 0 && -z ${need_promtool:-} ]]; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    warn "not root (or no apt-get): not installing ${missing[*]} ${need_promtool:+promtool}"
    warn "the tests that need them will be skipped"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || warn "apt-get update failed; trying with the package lists there are"

if [[ ${#missing[@]} -gt 0 ]]; then
    echo "setup-machine: installing ${missing[*]}"
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        # One by one, so that one package apt cannot get does not keep the others out.
        for pkg in "${missing[@]}"; do
            apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null \
                || warn "cannot install $pkg; the tests that need it will be skipped"
        done
    fi
fi

# promtool (the alert rules' checks and unit tests) from Debian's prometheus
# package, taken out of the .deb: installing the package would also start a
# Prometheus server through its init script (on :9090, with its own user)
# and pull its web assets; the tests need neither.
if [[ -n ${need_promtool:-} ]]; then
    deb_dir=$(mktemp -d)
    chmod 0755 "$deb_dir"  # apt's download sandbox user must be able to write there
    chown _apt "$deb_dir" 2>/dev/null || true
    if (cd "$deb_dir" && apt-get download -qq prometheus) \
        && dpkg-deb --fsys-tarfile "$deb_dir"/prometheus_*.deb | tar -x -C "$deb_dir" ./usr/bin/promtool; then
        install -m 0755 "$deb_dir/usr/bin/promtool" /usr/local/bin/promtool
        promtool --version 2>&1 | head -n 1
    else
        warn "cannot get promtool from Debian's prometheus package; the rule tests will be skipped"
    fi
    rm -rf "$deb_dir"
fi
exit 0

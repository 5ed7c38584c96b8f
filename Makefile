# Everything runs from a project venv (.venv); `make test` creates it when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint venv deps bench demo demo-clean clean collection man faults faults-quick test-cgroup-v2

venv: $(STAMP)

# What the suite needs of the machine (apt packages, cloud-init's libraries
# under /usr/bin/python3, promtool): tools/setup-machine.sh, the one list,
# which .ci/run calls too. Quick and offline when all is there; what cannot
# be had is skipped by the tests that need it, and -rs lists every skip.
deps:
	tools/setup-machine.sh

$(STAMP): requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || tools/setup-machine.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt -e .
	touch $(STAMP)

# Two workers: most of the suite waits on hosts, Ansible and SSH rather than the CPU.
# A module (its hosts, its fleet) stays on one worker; TEST_WORKERS=0 runs all in one process.
TEST_WORKERS ?= 2
test: deps $(STAMP)
	$(BIN)/pytest -q -rs -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not faults and not vm"

# cgroup v2 as real servers boot it, in a VM booting Debian's own kernel under QEMU
# (slow: emulated; docs/vm.md). VM_TESTS: test modules of the checkout it also runs
# inside the VM as root; results and timings in .build/vm/.
VM_TESTS ?= tests/test_vm_guest.py
test-cgroup-v2: deps $(STAMP)
	tools/setup-machine.sh vm
	LEAM_VM_TESTS="$(VM_TESTS)" LEAM_VM_RESULTS=.build/vm $(BIN)/pytest -q -rs -m vm tests/test_vm_cgroup_v2.py

# The fault suite (RELIABILITY.md is written from its figures); faults-quick is
# the reduced form CI runs: fewer jobs, shorter outage and flapping.
FAULTS_JSON := .build/reliability.json
faults: deps $(STAMP)
	LEAM_RELIABILITY_JSON=$(FAULTS_JSON) $(BIN)/pytest -q -rs -m faults
	$(BIN)/python -m testing.reliability render $(FAULTS_JSON) --out RELIABILITY.md

faults-quick: deps $(STAMP)
	LEAM_FAULTS_LOAD_JOBS=300 LEAM_FAULTS_OUTAGE=20 LEAM_FAULTS_FLAP_MINUTES=0.75 \
	    $(BIN)/pytest -q -rs -m faults

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy leampoll
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint
	$(BIN)/python tools/role_docs.py check

# The man page, from the poller's own parser; committed, so building the wheel
# or deploying needs no argparse-manpage. A fixed date keeps it byte-identical
# from build to build (tests/test_manpage.py checks it is up to date).
MAN ?= man/leampoll.1
man: $(STAMP)
	SOURCE_DATE_EPOCH=315532800 $(BIN)/argparse-manpage --module leampoll.options \
	    --function build_parser --prog leampoll --project-name leampoll \
	    --version "$$($(BIN)/python -c 'import leampoll; print(leampoll.__version__)')" \
	    --manual-title "LEAM job server" \
	    --description "poll a LEAM Planning Portal for jobs, run them and report back" \
	    --output $(MAN)

# dist/leam-jobserver-VERSION.tar.gz, after checking that poller, galaxy.yml and
# CHANGELOG.md name one version.
collection: $(STAMP)
	$(BIN)/python tools/release.py build dist

bench: $(STAMP)
	$(BIN)/python -m bench

demo: deps $(STAMP)
	$(BIN)/python -m testing.demo up

demo-clean: $(STAMP)
	$(BIN)/python -m testing.demo clean

clean:
	rm -rf $(VENV) build dist .build *.egg-info

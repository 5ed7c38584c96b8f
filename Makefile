# Everything runs from a project venv (.venv); `make test` creates it when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint venv bench demo demo-clean clean collection man faults faults-quick

venv: $(STAMP)

$(STAMP): requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || apt-get install -y -qq python3-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt -e .
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q -m "not faults"

# The fault suite (RELIABILITY.md is written from its figures); faults-quick is
# the reduced form CI runs: fewer jobs, shorter outage and flapping.
FAULTS_JSON := .build/reliability.json
faults: $(STAMP)
	LEAM_RELIABILITY_JSON=$(FAULTS_JSON) $(BIN)/pytest -q -m faults
	$(BIN)/python -m testing.reliability render $(FAULTS_JSON) --out RELIABILITY.md

faults-quick: $(STAMP)
	LEAM_FAULTS_LOAD_JOBS=300 LEAM_FAULTS_OUTAGE=20 LEAM_FAULTS_FLAP_MINUTES=0.75 \
	    $(BIN)/pytest -q -m faults

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

demo: $(STAMP)
	$(BIN)/python -m testing.demo up

demo-clean: $(STAMP)
	$(BIN)/python -m testing.demo clean

clean:
	rm -rf $(VENV) build dist .build *.egg-info

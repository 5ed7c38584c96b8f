# Everything runs from a project venv (.venv); `make test` creates it when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint venv bench demo demo-clean clean collection

venv: $(STAMP)

$(STAMP): requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || apt-get install -y -qq python3-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt -e .
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint

# dist/leam-jobserver-VERSION.tar.gz, after checking that poller, galaxy.yml and
# CHANGELOG.md name one version.
collection: $(STAMP)
	$(BIN)/python tools/release.py build dist

bench: $(STAMP)
	$(BIN)/python -m bench

demo: $(STAMP)
	$(BIN)/python -m tests.demo up

demo-clean: $(STAMP)
	$(BIN)/python -m tests.demo clean

clean:
	rm -rf $(VENV) build dist .build *.egg-info

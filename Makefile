# Two commands on a fresh machine: `make quickstart` runs the embedded default sweep, `make test` the tests.
# Both create (or reuse) the virtual environment in .venv from this repository's own files.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: quickstart run lint test test-fast test-slow test-kill install clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(PY) -m clapray.sweep sweeps/quickstart.yaml

run: $(STAMP)
	$(PY) -m clapray.run

lint: $(STAMP)
	$(PY) -m ruff check clapray tests

test: lint
	$(PY) -m pytest

test-fast: lint
	$(PY) -m pytest -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

test-kill: $(STAMP)
	$(PY) -m pytest -m kill

clean-venv:
	rm -rf $(VENV)

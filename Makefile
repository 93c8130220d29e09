# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv themselves.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# pip on some machines warns about absent local mirrors; those lines are noise, not errors.
QUIET_PIP := grep -v "^WARNING: Location '" || true

.PHONY: help venv lint typecheck unit e2e test demo bench clean

help:
	@echo "make demo   - run the example pipeline through a real Airflow scheduler + triggerer against the fake Reve API"
	@echo "make test   - ruff, mypy and every test (unit, loopback HTTP, dag.test and real-Airflow end-to-end)"
	@echo "make bench  - print the benchmark tables"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install --quiet -e '.[test]' 2>&1 | $(QUIET_PIP)
	$(PY) -c "import airflow_provider_reve, airflow.sdk"
	touch $@

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest -m "not e2e"

e2e: venv
	$(VENV)/bin/pytest -m e2e

test: lint
	$(VENV)/bin/pytest

demo: venv
	$(PY) -m airflow_provider_reve.testing.demo

bench: venv
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache

# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv themselves.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Debian packages `make test-system` needs (.ci/system-deps installs the missing ones).
SYSTEM_PACKAGES ?= chromium fonts-liberation postgresql redis-server
SYSTEM_STAMP := $(VENV)/.system-stamp
# A second venv with the oldest versions pyproject.toml accepts (.ci/floor-constraints.txt).
FLOOR_VENV ?= .venv-floor
FLOOR_STAMP := $(FLOOR_VENV)/.installed-stamp
# pip on some machines warns about absent local mirrors; those lines are noise, not errors.
QUIET_PIP := { grep -v "^WARNING: Location '" || true; }

.PHONY: help venv lint unit e2e test test-latest test-floor test-system system-deps demo bench stress docs dist smoke-live clean

help:
	@echo "make demo   - run the example pipeline through a real Airflow scheduler + triggerer against the fake Reve API"
	@echo "              (make demo ARGS=--keep: then leave Airflow running to look around in its UI; Ctrl-C stops it)"
	@echo "make test   - ruff, mypy, make dist, and every test (unit, loopback HTTP, dag.test, real-Airflow"
	@echo "              end-to-end, the docs build), plus the non-E2E tests again on the oldest supported"
	@echo "              Airflow (.ci/floor-constraints.txt)"
	@echo "make docs   - build the documentation site into docs/_build/html (offline; any warning fails it)"
	@echo "make dist   - build the wheel and the sdist into dist/ and check them (twine, check-wheel-contents)"
	@echo "make smoke-live - with REVE_API_KEY set: one reve-2.0 image from the real API (12 credits)"
	@echo "make test-system - the tests that need system packages: the Reve gallery in a real browser, and"
	@echo "              the production topology (CeleryExecutor, PostgreSQL, Redis, two workers, two triggerers)."
	@echo "              Installs Debian's $(SYSTEM_PACKAGES) with apt-get when missing (as root;"
	@echo "              otherwise prints the command to run). Screenshots: tests/system/artifacts/"
	@echo "make bench  - print the benchmark tables"
	@echo "make stress - 1,000 mapped deferrable generations through a real scheduler + triggerer against the"
	@echo "              fake API with faults; checks ledger, submissions, blocked loop (ARGS=\"--n 200\": fewer)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install --quiet -e '.[test]' 2>&1 | $(QUIET_PIP)
	$(PY) -c "import airflow_provider_reve, airflow.sdk"
	touch $@

venv: $(STAMP)

# Playwright's Python package, for tests/system; it drives the system chromium, downloads no browser.
$(SYSTEM_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,system]' 2>&1 | $(QUIET_PIP)
	touch $@

$(FLOOR_STAMP): pyproject.toml .ci/floor-constraints.txt
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet --upgrade pip 2>&1 | $(QUIET_PIP)
	$(FLOOR_VENV)/bin/python -m pip install --quiet -c .ci/floor-constraints.txt -e '.[test]' 2>&1 | $(QUIET_PIP)
	$(FLOOR_VENV)/bin/python -c "import airflow_provider_reve, airflow.sdk"
	touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest -m "not e2e"

e2e: venv
	$(VENV)/bin/pytest -m e2e

# The floor run covers everything but the real-Airflow E2E tests and the docs build, which run
# once, on the latest.
test-floor: $(FLOOR_STAMP)
	$(FLOOR_VENV)/bin/pytest -m "not e2e and not docs" -p no:cacheprovider

# The latest and the floor run side by side: each is one pytest process that keeps about one core
# busy, and each has its own AIRFLOW_HOME (tests/conftest.py), so on 2 cores this saves the floor's
# 15 minutes of a serial run. -Otarget prints each one's output whole when it ends.
test: lint dist
	$(MAKE) --no-print-directory -j2 -Otarget test-latest test-floor

# The real-Airflow E2E tests run in a process of their own, after the rest: what they leave in the
# test process (configuration, imported modules, threads) must not decide another test's outcome.
test-latest: venv
	$(VENV)/bin/pytest -m "not e2e"
	$(VENV)/bin/pytest -m e2e

# Offline; -W: any warning fails the build, -n: so does a reference to our own objects that does
# not resolve. tests/unit/test_docs_site.py runs the same build on every `make test`.
docs: venv
	rm -rf docs/_build
	$(VENV)/bin/sphinx-build -W --keep-going -n -q -b html docs docs/_build/html
	@echo "Open docs/_build/html/index.html"

# The wheel and the sdist, checked as PyPI would read them (metadata, README rendering, contents).
dist: venv
	rm -rf dist
	$(PY) -m build --outdir dist . 2>&1 | $(QUIET_PIP) | tail -n 1
	$(VENV)/bin/twine check --strict dist/*
	$(VENV)/bin/check-wheel-contents dist/*.whl

# Opt-in: spends 12 credits of the account whose key is in REVE_API_KEY; without it, says so and
# exits 0. Not part of `make test`, which proves the same script against the fake API over HTTPS.
smoke-live: venv
	$(PY) scripts/smoke_live.py

system-deps:
	bash .ci/system-deps $(SYSTEM_PACKAGES)

# Not part of `make test` (which needs nothing but Python and make); .ci/run runs both.
test-system: system-deps $(SYSTEM_STAMP)
	$(VENV)/bin/pytest tests/system -p no:cacheprovider

# `make demo ARGS=--keep` leaves Airflow and the fake API running (Ctrl-C stops them).
demo: venv
	$(PY) -m airflow_provider_reve.testing.demo $(ARGS)

bench: venv
	$(PY) benchmarks/run.py

# About 8 minutes on 2 cores; stops by itself after 14 minutes (--timeout) whatever happens.
stress: venv
	$(PY) benchmarks/stress.py $(ARGS)

clean:
	rm -rf $(VENV) $(FLOOR_VENV) .demo .pytest_cache .mypy_cache .ruff_cache docs/_build dist

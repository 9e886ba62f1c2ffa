# The two commands of the README: `make demo` and `make test`.
#
# Both work in a virtual environment in the checkout (.venv) and never install into the system
# Python, so they run on a stock Debian or Ubuntu, whose Python refuses `pip install` outside a
# venv (PEP 668). Prerequisites: Python >= 3.11 with its venv module, and make
# (Debian/Ubuntu: `apt install python3-venv make`). `make PYTHON=/path/to/python3.12 demo` picks
# the interpreter that creates the venv. An install is redone only when pyproject.toml (or the
# script installing the test tools) changed: the stamp files in .venv record the last one.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra flags for `make demo`, e.g. DEMO_FLAGS=--web.listen-address=127.0.0.1:9856
DEMO_FLAGS ?=
# The venv's programs first on PATH, so the tests find the venv's okx-loan-exporter and ruff.
RUN := PATH="$(CURDIR)/$(BIN):$$PATH" VIRTUAL_ENV="$(CURDIR)/$(VENV)"
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo test lint bench install-test-deps venv

demo: $(VENV)/.installed  ## install the exporter into .venv and run it against the built-in OKX simulator on :9855
	$(BIN)/okx-loan-exporter --demo $(DEMO_FLAGS)

test: install-test-deps lint  ## install what the tests need into .venv (and Debian's tools) and run the whole suite
	$(RUN) $(BIN)/python -m pytest

install-test-deps: $(VENV)/.installed-test

# One line per linter, each the venv's own program.
lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m mypy

bench: $(VENV)/.installed-test  ## print the performance figures (not part of the test suite)
	$(RUN) $(BIN)/python -m benchmarks

venv: $(BIN)/python

# Refuses an old Python, and a Python without its venv module (Debian's python3 without the
# python3-venv package leaves a half-made .venv behind: it is removed so the next try starts clean).
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo >&2 "make: '$(PYTHON)' is missing or older than Python 3.11; install Python >= 3.11 or run make PYTHON=/path/to/python3.11"; \
	  exit 1; }
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo >&2 "make: '$(PYTHON) -m venv' failed: on Debian or Ubuntu, apt install python3-venv"; \
	  exit 1; }

# The exporter, editable: the demo always runs the checkout's code.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e .
	@touch $@

# The exporter with its [test] extra, plus the Debian programs the end-to-end tests run.
$(VENV)/.installed-test: pyproject.toml scripts/install-test-deps | $(BIN)/python
	scripts/install-test-deps $(BIN)/python
	@touch $@ $(VENV)/.installed

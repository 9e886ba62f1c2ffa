# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3

.PHONY: demo test install-test-deps lint bench

demo:  ## install the exporter and run it against the built-in OKX simulator on :9855
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore .
	okx-loan-exporter --demo

test: install-test-deps lint  ## install what the tests need and run the whole suite
	$(PYTHON) -m pytest

install-test-deps:
	scripts/install-test-deps

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

bench:  ## print the performance figures (not part of the test suite)
	$(PYTHON) -m benchmarks

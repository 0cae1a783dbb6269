# The two commands of the README: `make demo` (the pack's main job) and `make test` (the whole suite on
# every host of the compatibility matrix, what CI runs). Both set up what they need first (cached:
# seconds when it is already there). PYTEST_ARGS go to every pytest run, e.g. `make test PYTEST_ARGS=-x`.
PYTHON ?= python3
HOST_PYTHON := .host/venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test

setup:
	$(PYTHON) scripts/setup_host.py

demo: setup
	$(HOST_PYTHON) scripts/demo.py

test:
	$(PYTHON) scripts/run_tests.py $(PYTEST_ARGS)

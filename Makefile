# The two commands of the README: `make demo` (the pack's main job) and `make test` (the whole suite).
# Both set up the ComfyUI host first if needed (cached: seconds when it is already there).
PYTHON ?= python3
HOST_PYTHON := .host/venv/bin/python

.PHONY: setup demo test

setup:
	$(PYTHON) scripts/setup_host.py

demo: setup
	$(HOST_PYTHON) scripts/demo.py

test: setup
	$(HOST_PYTHON) -m pytest tests

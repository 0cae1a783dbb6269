#!/usr/bin/env python3
"""Run the test suite on every host of the compatibility matrix: what `make test` and CI run.

1. the default host (ComfyUI 0.3.75 with its frontend): the whole suite but the tests that need a newer
   ComfyUI (marker `newer_comfyui`);
2. every extra host of the matrix in scripts/host_pins.toml whose source is present (ComfyUI 0.12.1 from
   ../shared/hosts/ with its own frontend, then with the newest frontend): the tests its `tests` marker
   selects; a matrix source that is absent is reported loudly as NOT RUN;
3. a host built from PARTICLE_REPULSION_COMFYUI (your own ComfyUI checkout or archive, optionally with
   PARTICLE_REPULSION_FRONTEND), when set: every test that uses ComfyUI.

Hosts are set up first (cached). Arguments are passed to every pytest run (e.g. `-x`, `-k name`).
Exits non-zero when any run fails. Standard library only.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import setup_host
from comfy_host import DEFAULT_HOST_DIR, HOST_ENVIRONMENT_VARIABLE, REPO, venv_python

EVERY_TEST_USING_COMFYUI = "host"
BANNER = "=" * 100


@dataclass(frozen=True)
class TestRun:
    """One pytest invocation: which host, which tests."""

    title: str
    host_dir: Path
    marker: str  # the pytest marker expression selecting the tests (-m)

    def command(self, pytest_arguments: list[str]) -> list[str]:
        return [str(venv_python(self.host_dir)), "-m", "pytest", "tests", "-m", self.marker, *pytest_arguments]


@dataclass(frozen=True)
class Outcome:
    run: TestRun
    exit_code: int
    seconds: float


def log(message: str) -> None:
    print(f"[run-tests] {message}", flush=True)


def default_run(pins: dict) -> TestRun:
    frontend = next(pin.split("==")[1] for pin in pins["venv"]["comfyui"] if pin.startswith("comfyui-frontend-package=="))
    marker = pins["comfyui"]["tests"]
    return TestRun(f"ComfyUI {pins['comfyui']['version']}, frontend {frontend}: pytest -m '{marker}'", DEFAULT_HOST_DIR, marker)


def extra_run(host: setup_host.ExtraHost, marker: str) -> TestRun:
    return TestRun(f"ComfyUI {host.comfyui_version}, frontend {host.frontend_version}: pytest -m '{marker}'",
                   host.directory, marker)


def planned_runs(pins: dict, requested: setup_host.ExtraHost | None) -> tuple[list[TestRun], list[str]]:
    """The runs to make, and a line for every matrix host that cannot run because its source is absent."""
    runs, not_run = [default_run(pins)], []
    for host, entry in setup_host.matrix_hosts(pins):
        if host.source.exists():
            runs.append(extra_run(host, entry["tests"]))
        else:
            not_run.append(f"NOT RUN: ComfyUI {entry['version']} with frontend {entry['frontend']} (tests marked "
                           f"'{entry['tests']}'): its source {host.source} is not there")
    if requested:
        runs.append(extra_run(requested, EVERY_TEST_USING_COMFYUI))
    return runs, not_run


def set_up(runs: list[TestRun], pins: dict, requested: setup_host.ExtraHost | None) -> None:
    setup_host.setup_default_host(pins)
    setup_host.ensure_chromium()
    extra_hosts = {host.directory: host for host, _ in setup_host.matrix_hosts(pins)}
    if requested:
        extra_hosts[requested.directory] = requested
    for run in runs:
        if run.host_dir in extra_hosts:
            setup_host.setup_extra_host(extra_hosts[run.host_dir])


def execute(run: TestRun, pytest_arguments: list[str]) -> Outcome:
    print(f"\n{BANNER}\n[run-tests] {run.title}\n[run-tests] host: {run.host_dir}\n{BANNER}", flush=True)
    environment = {**os.environ, HOST_ENVIRONMENT_VARIABLE: str(run.host_dir)}
    started = time.monotonic()
    exit_code = subprocess.run(run.command(pytest_arguments), cwd=REPO, env=environment).returncode
    return Outcome(run, exit_code, time.monotonic() - started)


def report(outcomes: list[Outcome], not_run: list[str]) -> bool:
    """Print the matrix summary; True when every run passed."""
    print(f"\n{BANNER}\n[run-tests] compatibility matrix summary", flush=True)
    for outcome in outcomes:
        verdict = "passed" if outcome.exit_code == 0 else f"FAILED (pytest exit code {outcome.exit_code})"
        print(f"[run-tests]   {verdict:<32} {outcome.seconds / 60:5.1f} min  {outcome.run.title}")
    for line in not_run:
        print(f"[run-tests]   !!! {line}")
    total = sum(outcome.seconds for outcome in outcomes)
    print(f"[run-tests]   total {total / 60:.1f} min\n{BANNER}", flush=True)
    return all(outcome.exit_code == 0 for outcome in outcomes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _, pytest_arguments = parser.parse_known_args()
    pins = setup_host.load_pins()
    try:
        requested = setup_host.requested_extra_host(pins)
        runs, not_run = planned_runs(pins, requested)
        for line in not_run:
            log(f"!!! {line}")
        set_up(runs, pins, requested)
    except setup_host.SetupError as error:
        print(f"[run-tests] ERROR: {error}", file=sys.stderr)
        return 1
    outcomes = [execute(run, pytest_arguments) for run in runs]
    return 0 if report(outcomes, not_run) else 1


if __name__ == "__main__":
    sys.exit(main())

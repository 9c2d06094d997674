# DSR Orchestrator. Every target sets up .venv itself: a fresh machine needs only
# Python 3.11+ and the package registries.
#
#   make demo    the main job end to end on the embedded stack
#   make test    ruff, then the whole test suite
#   make lint    ruff only
#   make dev     `dsr dev` with the example configuration (Ctrl-C stops it)
#   make bench   the benchmarks in benchmarks/
#   make soak    the worker-kill fault injection for 10 minutes (DSR_SOAK_SECONDS to change)
#   make clean   caches, build output and the .dsr/ state folder (.venv stays)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

# python3.11 if it runs, else python3 if it is 3.11 or newer.
PYTHON ?= $(shell for p in python3.11 python3; do \
	if $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then command -v $$p; break; fi; done)
VENV := .venv
BIN := $(VENV)/bin
CONFIG := workers/demo/dsr.demo.toml
# No prompts, no version nagging: CI runs without a TTY or stdin.
export PIP_NO_INPUT := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help demo dev test lint bench soak clean

help:
	@echo "make demo | test | lint | dev | bench | soak | clean"

$(VENV)/.installed: pyproject.toml
	@if [ -z "$(PYTHON)" ]; then echo "Python 3.11 or newer is needed as python3.11 or python3 on PATH" >&2; exit 1; fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing dsr-orchestrator and its test tools into $(VENV) (the first time takes a few minutes)"
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@touch $@

demo: $(VENV)/.installed
	$(BIN)/dsr --config $(CONFIG) demo

dev: $(VENV)/.installed
	$(BIN)/dsr --config $(CONFIG) dev

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/pytest -q -p no:cacheprovider < /dev/null

lint: $(VENV)/.installed
	$(BIN)/ruff check .

bench: $(VENV)/.installed-bench
	@scripts=$$(find benchmarks -maxdepth 1 -name '*.py' ! -name '_*' 2>/dev/null | sort || true); \
	if [ -z "$$scripts" ]; then echo "No benchmarks yet: benchmarks/ has no script (they come with a later issue)."; exit 0; fi; \
	for s in $$scripts; do echo "== $$s"; $(BIN)/python $$s; done

soak: $(VENV)/.installed
	DSR_SOAK_SECONDS=$${DSR_SOAK_SECONDS:-600} DSR_SOAK_SUBJECTS=$${DSR_SOAK_SUBJECTS:-20} \
		$(BIN)/pytest -q -s -p no:cacheprovider tests/test_fault_injection.py -k killed < /dev/null

clean:
	rm -rf .dsr build dist *.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

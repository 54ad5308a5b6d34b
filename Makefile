# Two entry points from a fresh clone: `make demo` and `make test` (each sets itself up first).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
TORCH_CPU_LOCK := templates/project/{% if framework == 'pytorch' %}requirements-torch-cpu.lock{% endif %}
export PATH := $(CURDIR)/$(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_ENABLE_TELEMETRY := false
export DO_NOT_TRACK := 1

.PHONY: setup demo test test-fast lint bench lock clean

setup: $(VENV)/.ready

$(VENV)/.ready: requirements/dev.lock pyproject.toml tools/setup-system.sh tools/compose-schema.sh
	bash tools/setup-system.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	# Hashed, exact versions; bytecode compiled now so no run pays for it (PYTHONDONTWRITEBYTECODE).
	$(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode --require-hashes \
	    --index-url https://pypi.org/simple -r requirements/dev.lock
	# torch apart, from the CPU lock that pytorch projects get (hashed): pip takes the local CPU
	# wheel through its find-links (uv would fetch a multi-GB CUDA build). Elsewhere, add
	# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
	$(BIN)/python -m pip install -q --require-hashes -r "$(TORCH_CPU_LOCK)"
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	bash tools/compose-schema.sh
	touch $@

demo: setup  ## generate the example project and reproduce it (the reference pipeline)
	$(BIN)/snakemake --cores all

test: setup  ## every test, slow end-to-end ones included
	$(BIN)/pytest -m "slow or not slow" --durations=25

test-fast: setup
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check generator tests tools bench workflow

bench: setup
	$(BIN)/python bench/run.py --repeat 5
	$(BIN)/python bench/services.py --sizes 100,1000
	$(BIN)/python bench/reproduce.py --repeat 3

lock:
	bash tools/lock.sh

clean:
	rm -rf build .snakemake

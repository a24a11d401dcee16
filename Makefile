# Two commands: `make demo` and `make test`. Both bootstrap .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	# torch pinned to the CPU wheel (any other version pulls GBs of CUDA), by pip: it reads this
	# machine's pip configuration, which names the folder the wheel lies in
	$(BIN)/python -m pip install --quiet torch==2.13.0
	# the rest by uv, which keeps the installed torch: about 10 s where pip took about 3 minutes
	# (docs/benchmarks.md, "The test suite's wall time")
	$(BIN)/python -m uv pip install --quiet --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/coorch demo

test: lint
	# the HTML report's test opens the page in headless Chromium (Debian's package; a fresh
	# machine has no package lists until apt-get update)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
	  || (sudo apt-get update -qq && sudo apt-get install -y -qq chromium)
	# two test processes, one per core: four were slower and tests failed under the load (every
	# subprocess, agent and Prefect server a test starts imports the stack; docs/benchmarks.md,
	# "The test suite's wall time"); one file per process, so module fixtures hold.
	# Files with slow tests go first (tests/conftest.py), and xdist keeps that order. The 15
	# slowest tests are listed at the end: CI has a 30 minute budget on 2 cores.
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# ruff (lint and format), and the layer map of ../shared/DESIGN.md as import-linter contracts (pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	VENV=$(VENV) .ci/lint-layers

bench: $(STAMP)
	$(BIN)/coorch bench decision
	$(BIN)/coorch bench ingest

clean:
	rm -rf runs .pytest_cache

# The README's commands. Everything installs itself into .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster_home

.PHONY: install demo test dev bench clean

install: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	ln -sf ../dagster.yaml $@

## demo: start the simulator, run the nexudus_sync job against it, print what it loaded
demo: install
	$(BIN)/python scripts/demo.py

## test: the test suite (the long reliability cases run with `make bench`)
test: install
	$(BIN)/pytest -n 2 -q -m "not slow"

## dev: the Dagster UI on http://127.0.0.1:3000 (with the simulator unless NEXUDUS_BASE_URL is set)
dev: install
	$(BIN)/python scripts/dev.py

## bench: performance and long reliability runs (installs dlt for the comparison)
bench: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/run.py
	$(BIN)/pytest -n 2 -q -m slow

clean:
	rm -rf $(VENV) $(DAGSTER_HOME) data

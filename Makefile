# The README's commands. Everything installs itself into .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster_home
# `dg` runs the project with the environment it finds active: this one, as if activated.
export VIRTUAL_ENV := $(CURDIR)/$(VENV)

.PHONY: install postgresql demo lint test test-fast deploy-check dev bench clean account

install: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml

# constraints.txt holds the tested versions of everything installed, pip included.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	ln -sf ../dagster.yaml $@

# The tests start their own PostgreSQL servers from Debian's postgresql package.
APT_INSTALL_POSTGRESQL := apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql

## postgresql: installs Debian's postgresql package when no /usr/lib/postgresql/*/bin/initdb exists
postgresql:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		:; \
	elif [ "$$(id -u)" = 0 ]; then \
		sh -c '$(APT_INSTALL_POSTGRESQL)'; \
	elif command -v sudo >/dev/null 2>&1; then \
		sudo sh -c '$(APT_INSTALL_POSTGRESQL)'; \
	else \
		echo "PostgreSQL is missing and this is not root: as root, run $(APT_INSTALL_POSTGRESQL)" >&2; \
		exit 1; \
	fi

## demo: start the simulator, run the nexudus_sync job against it, print what it loaded
demo: install
	$(BIN)/python scripts/demo.py

## lint: ruff (lint and format) on the code, mypy on the package, `dg check defs` on the definitions
LINTED := nexudus_assets nexudus_assets_tests scripts
lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy
	$(BIN)/dg check defs

## test: the test suite (the long reliability cases run with `make bench`), then deploy-check
# Three workers on two cores: most cases spend their time waiting on simulators and on Dagster's
# own processes, not on the CPU.
test: install postgresql
	$(BIN)/pytest -n 3 --dist loadgroup -q -m "not slow"
	$(MAKE) --no-print-directory deploy-check

# The layers below Dagster: the client, models, simulator, warehouse, ledger, settings and leases.
FAST_TESTS = $(addprefix nexudus_assets_tests/test_,$(addsuffix .py,models client pacing_and_paging simulator \
	dialects hostile_server live_records warehouse ledger settings accounts_file lease))

## test-fast: the everyday loop: the layers below Dagster, in about two minutes (`make test` runs everything)
test-fast: install
	$(BIN)/pytest -n 3 --dist loadgroup -q -m "not slow" $(FAST_TESTS)

## deploy-check: deploy/ checked, and the code location loaded as deployed (gRPC, PostgreSQL)
deploy-check: install postgresql
	$(BIN)/python scripts/deploy_check.py

## account: check a real account (read-only) and make its own instance, warehouse and ledger under accounts/
##          (NAME=<folder>, default from NEXUDUS_USERNAME); uses the NEXUDUS_* variables set
account: install
	$(BIN)/python -m nexudus_assets.account check $(if $(NAME),--name $(NAME))

## dev: the Dagster UI on http://127.0.0.1:3000 (with the simulator unless NEXUDUS_BASE_URL is set)
dev: install
	$(BIN)/python scripts/dev.py

## bench: performance and long reliability runs (installs dlt for the comparison)
bench: install
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python benchmarks/run.py
	$(BIN)/pytest -n 2 -q -m slow

clean:
	rm -rf $(VENV) $(DAGSTER_HOME) data

# Developer entry points. `make run` serves the API, `make test` runs the suite; both create the virtualenv first.
# Override the virtualenv's place with VENV=/some/dir, and pass extra arguments with ARGS='...'.

VENV ?= .venv
PYTHON ?= python3
ARGS ?=
BIN := $(VENV)/bin
# Written after a successful install: the install runs again only when pyproject.toml is newer.
STAMP := $(VENV)/.installed

.PHONY: venv run test lint bench

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Serves on http://127.0.0.1:8000, on an embedded PostgreSQL in .wallet-data/ unless WALLET_DATABASE_URL is set.
run: venv
	$(BIN)/wallet serve $(ARGS)

# On an embedded PostgreSQL in a temporary directory, or on WALLET_TEST_DATABASE_URL's server.
test: venv
	$(BIN)/pytest -q $(ARGS)

# All three checks run, so one pass reports every problem; the target fails if any of them did.
lint: venv
	status=0; \
	$(BIN)/ruff check . || status=1; \
	$(BIN)/ruff format --check . || status=1; \
	$(BIN)/mypy || status=1; \
	exit $$status

bench: venv
	$(BIN)/python -m bench $(ARGS)

# The two commands of the README: `make run` runs the whole system, `make test` runs the whole suite
# (`make test-long`: what it leaves to CI, its long runs at full length).
# Both build the virtualenv first when it is missing or older than the requirements files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
export PORT

.PHONY: help run serve cluster test test-long test-quick lint format bench

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

# Runtime only (requirements.txt): what `make run` and `make serve` need.
$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --requirement requirements.txt
	touch $@

# Runtime plus tests and tooling (requirements-dev.txt).
$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(BIN)/pip install --quiet --requirement requirements-dev.txt
	touch $@

run: $(VENV)/.runtime  ## the whole system: web, worker, beat, demo data (PORT=8000)
	$(BIN)/python manage.py up

serve: $(VENV)/.runtime  ## the production web server alone (PORT=8000)
	$(BIN)/python manage.py serve

cluster: $(VENV)/.runtime  ## HAProxy in front of WEB=2 web processes, WORKERS=1 workers, BEATS=1 beats (deploy/)
	$(BIN)/python manage.py cluster

test: $(VENV)/.dev  ## the test suite (CI runs it after lint, then test-long)
	$(BIN)/pytest

test-long: $(VENV)/.dev  ## what `make test` leaves to CI: the soak, stress and model-based runs at full length
	$(BIN)/pytest -m long

test-quick: $(VENV)/.dev  ## the suite without the slow tests
	$(BIN)/pytest -m "not slow"

# BENCH_ARGS="--runs 1 --seconds 5 --only 'hot-*'" for a quick look; python -m bench --help for all
bench: $(VENV)/.dev  ## the benchmark: every scenario, 3 runs, medians (docs/benchmarks.md)
	$(BIN)/python -m bench $(BENCH_ARGS)

# mypy's Django plugin imports the settings, which never connect on import: a DATABASE_URL naming no
# server keeps the embedded PostgreSQL from starting just for the types (makemigrations does need one).
MYPY_DATABASE_URL := postgres://mypy@127.0.0.1:1/no-database

lint: $(VENV)/.dev  ## ruff, makemigrations --check, mypy and the import contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache --no-logo
	$(BIN)/python manage.py makemigrations --check --dry-run
	DATABASE_URL=$(MYPY_DATABASE_URL) $(BIN)/mypy

format: $(VENV)/.dev  ## ruff format and fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

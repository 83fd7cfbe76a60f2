# The two commands of the README: `make run` runs the whole system, `make test` runs the whole suite.
# Both build the virtualenv first when it is missing or older than the requirements files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
export PORT

.PHONY: run serve test test-quick lint format bench

# Runtime only (requirements.txt): what `make run` and `make serve` need.
$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --requirement requirements.txt
	touch $@

# Runtime plus tests and tooling (requirements-dev.txt).
$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(BIN)/pip install --quiet --requirement requirements-dev.txt
	touch $@

run: $(VENV)/.runtime
	$(BIN)/python manage.py up

serve: $(VENV)/.runtime
	$(BIN)/python manage.py serve

test: $(VENV)/.dev
	$(BIN)/pytest

test-quick: $(VENV)/.dev
	$(BIN)/pytest -m "not slow"

# The measuring instrument (docs/benchmarks.md): make bench BENCH_ARGS="--runs 1 --seconds 5 --only 'hot-*'"
bench: $(VENV)/.dev
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python manage.py makemigrations --check --dry-run

format: $(VENV)/.dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

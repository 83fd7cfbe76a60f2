# The two commands of the README: `make run` runs the whole system, `make test` runs the whole suite.
# Both build the virtualenv from requirements.txt first when it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-quick lint format

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --requirement requirements.txt
	touch $@

run: $(VENV)/.installed
	$(BIN)/python manage.py up

test: $(VENV)/.installed
	$(BIN)/pytest

test-quick: $(VENV)/.installed
	$(BIN)/pytest -m "not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python manage.py makemigrations --check --dry-run

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Two commands do everything: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 3

.PHONY: run test lint bootstrap worker beat migrate

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

bootstrap: $(STAMP)

migrate: bootstrap
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py migrate --noinput

# The embedded default: SQLite, in-process cache, eager tasks, offline responder
# (or Claude when ANTHROPIC_API_KEY is set).
run: migrate
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py seed_demo_users
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py runserver 127.0.0.1:8000

# The whole suite on the real Postgres and Redis (tests/settings.py says where).
test: bootstrap
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

worker: bootstrap
	$(BIN)/celery -A isolation_site worker -l info

beat: bootstrap
	$(BIN)/celery -A isolation_site beat -l info

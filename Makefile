# Everything this project needs is installed by these targets, from nothing but
# Python 3.11+ and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench clean lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The locked versions, each checked against its hash; then this project, without deps.
$(STAMP): pyproject.toml requirements-dev.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

## Re-resolve the lock files from pyproject.toml (pip-tools, in a throwaway venv).
LOCK_VENV := $(VENV)-lock
PIP_COMPILE := $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --strip-extras \
	--allow-unsafe --no-emit-index-url --no-emit-find-links
lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet pip-tools
	$(PIP_COMPILE) --upgrade -o requirements.lock pyproject.toml
	$(PIP_COMPILE) --upgrade --extra dev -c requirements.lock -o requirements-dev.lock pyproject.toml
	rm -rf $(LOCK_VENV)

## Serve the way production does (gunicorn), on the embedded SQLite, on 127.0.0.1:$PORT
## (PORT from .env or the environment, 8080 by default; `make run BIND_HOST=0.0.0.0` to
## expose it beyond this machine).
BIND_HOST ?= 127.0.0.1
run: $(STAMP)
	$(BIN)/webhook-service init-env
	$(BIN)/webhook-service db upgrade
	BIND_HOST=$(BIND_HOST) PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/webhook-service serve

## Lint, format check, type check, then the whole suite on SQLite and PostgreSQL.
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check webhook_service tests fixtures bench
	$(BIN)/ruff format --check webhook_service tests fixtures bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -n 2 --dist loadgroup -q

## Benchmark against Stripe's sample receiver (not part of test); writes bench/RESULTS.md.
## `make bench BENCH_ARGS=--quick` for a one-minute smoke run; see bench/README.md.
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(VENV)-lock var .pytest_cache .mypy_cache .ruff_cache

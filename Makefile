# The two commands a newcomer needs: `make run` and `make test`. Everything else is for developers.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

## run: the whole pipeline on an embedded Postgres and broker, with a demo stream (Ctrl-C stops)
run: $(STAMP)
	$(BIN)/poscal-sync dev --demo

## test: the whole test suite (unit, integration against real Postgres + broker, end-to-end)
test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## bench: webhooks through the dev stack, then ingest against a minimal endpoint; JSON lines
bench: $(STAMP)
	$(BIN)/python -m bench.e2e_webhooks
	$(BIN)/python -m bench.ingest_overhead
	$(BIN)/python -m bench.analytics_rollup

clean:
	rm -rf $(VENV) .poscal .pytest_cache .mypy_cache .ruff_cache

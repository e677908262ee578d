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
# Bytecode is cached in __pycache__ (gitignored) whatever PYTHONDONTWRITEBYTECODE says: the
# workers, and every service and CLI process the specs start, then compile each module once.
test: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest --numprocesses 3 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## bench: every benchmark in bench/, one JSON line per benchmark (mode); see README "Benchmarks"
# Flags per benchmark, e.g. `make bench E2E_ARGS="--rss-minutes 1 --latency-seconds 20"`.
INGEST_ARGS ?=
DRAIN_ARGS ?=
E2E_ARGS ?=
ANALYTICS_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m bench.ingest_overhead $(INGEST_ARGS)
	$(BIN)/python -m bench.pipeline_drain $(DRAIN_ARGS)
	$(BIN)/python -m bench.e2e_webhooks $(E2E_ARGS)
	$(BIN)/python -m bench.analytics_rollup $(ANALYTICS_ARGS)

clean:
	rm -rf $(VENV) .poscal .pytest_cache .mypy_cache .ruff_cache

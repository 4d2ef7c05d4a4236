# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# Each creates .venv and installs the project from its own files when they change.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint format bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "bourse needs Python 3.11+")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)  ## run the whole system on the embedded default (Ctrl-C stops it)
	$(BIN)/bourse up

test: $(STAMP)  ## the test suite (needs the NATS, MariaDB, Redis, RabbitMQ of .ci/run for the integration tests)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

bench: $(STAMP)  ## the engine benchmark (see README, Performance)
	$(BIN)/python bench/engine_bench.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis

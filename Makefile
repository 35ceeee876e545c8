# Two entry points (see README): `make quickstart` and `make test`.
# Both create .venv and install the package on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: quickstart test test-fast lint format clean-results

$(BIN)/backdoor-eval: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,lint]"
	touch $@

quickstart: $(BIN)/backdoor-eval
	$(BIN)/snakemake --cores $(CORES) --configfile config/quickstart.yaml --config name=quickstart

test: $(BIN)/backdoor-eval
	$(BIN)/python -m pytest -q

test-fast: $(BIN)/backdoor-eval
	$(BIN)/python -m pytest -q -m "not slow"

# ruff (lint and format, import order), snakefmt, then Snakemake's own linter.
lint: $(BIN)/backdoor-eval
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint --configfile config/quickstart.yaml

# Rewrite the sources as `make lint` wants them.
format: $(BIN)/backdoor-eval
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/snakefmt .

clean-results:
	rm -rf results/quickstart

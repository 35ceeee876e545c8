# Two entry points (see README): `make quickstart` and `make test`.
# Both create .venv and install the package on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: quickstart test test-fast lint clean-results

$(BIN)/backdoor-eval: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

quickstart: $(BIN)/backdoor-eval
	$(BIN)/snakemake --cores $(CORES) --configfile config/quickstart.yaml --config name=quickstart

test: $(BIN)/backdoor-eval
	$(BIN)/python -m pytest -q

test-fast: $(BIN)/backdoor-eval
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(BIN)/backdoor-eval
	$(BIN)/snakemake --lint --configfile config/quickstart.yaml

clean-results:
	rm -rf results/quickstart

# Two entry points (see README): `make quickstart` and `make test`.
# Both create .venv and install the package on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: quickstart test test-fast lint format clean-results publish-results

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

# Copy a finished config's tables and PNG figures under docs/results/<name>/
# with its runs.parquet and epochs.parquet, detections/defenses/defense_epochs.parquet when made, and its
# pretrainings' manifests (what docs/results.md shows and quotes), e.g.
# `make publish-results NAME=real-cifar10`.
publish-results:
	@test -n "$(NAME)" || { echo "usage: make publish-results NAME=<config name, a folder under results/>"; exit 2; }
	@test -f results/$(NAME)/runs.parquet || { echo "results/$(NAME)/runs.parquet is missing: run that config's workflow to the end first"; exit 2; }
	mkdir -p docs/results/$(NAME)/tables docs/results/$(NAME)/figures
	cp results/$(NAME)/tables/*.md results/$(NAME)/tables/*.csv docs/results/$(NAME)/tables/
	cp results/$(NAME)/figures/*.png docs/results/$(NAME)/figures/
	cp results/$(NAME)/runs.parquet results/$(NAME)/epochs.parquet docs/results/$(NAME)/
	# the manifests of the pretrainings its models start from (config/$(NAME).yaml's pretraining: block)
	test ! -f config/$(NAME).yaml || $(BIN)/python -c "import shutil, sys; from pathlib import Path; \
	from backdoor_eval import pretrain; from backdoor_eval.config import load_config; \
	c = load_config(sys.argv[1], check_registries=False); out = Path(sys.argv[2]); \
	[(out.mkdir(exist_ok=True), shutil.copy(m, out)) for n in c.get('pretraining') or {} \
	 for m in [pretrain.manifest_file(pretrain.pretraining_file(c, n))] if Path(m).is_file()]" \
	config/$(NAME).yaml docs/results/$(NAME)/pretraining
	for f in detections.parquet defenses.parquet defense_epochs.parquet; do test ! -f results/$(NAME)/$$f || cp results/$(NAME)/$$f docs/results/$(NAME)/; done

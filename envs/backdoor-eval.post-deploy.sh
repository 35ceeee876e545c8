#!/usr/bin/env bash
# Runs once inside the workflow's conda env right after Snakemake creates it
# (snakemake --use-conda): installs the backdoor-eval package itself, from the
# checkout the workflow runs in, so every job's `backdoor-eval` command exists.
# Snakemake runs this from its working directory, the repository root; set
# BACKDOOR_EVAL_ROOT when the checkout is elsewhere.
set -euo pipefail
root="${BACKDOOR_EVAL_ROOT:-$PWD}"
if ! grep -q '^name = "backdoor-eval"$' "$root/pyproject.toml" 2>/dev/null; then
    echo "backdoor-eval post-deploy: $root is not a backdoor-eval checkout (no pyproject.toml naming it);" \
        "run snakemake from the repository root or set BACKDOOR_EVAL_ROOT" >&2
    exit 1
fi
# The env already holds every dependency (backdoor-eval.yaml): install the
# package alone, editable so the env follows the checkout's code.
python -m pip install --no-deps --no-build-isolation --editable "$root"

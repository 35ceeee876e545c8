#!/usr/bin/env bash
# The GPU check in one call (docs/performance.md#gpu-check): on a machine with one CUDA GPU and
# no internet, in at most 8 minutes, it runs the CUDA tests, the training benchmark of the four
# paper models (eager and compiled), a two-run workflow slice on the GPU and the grid's cost
# model, and writes everything it measured to ONE markdown file:
#
#   bash benchmarks/gpu_check.sh [RESULTS_FILE]      # default: gpu_check_results.md
#
# It needs python3 with torch, torchvision, timm, numpy, pandas, pyarrow, matplotlib, seaborn,
# filelock, pyyaml, pytest, hypothesis, safetensors, tabulate, tqdm and psutil. What else the
# workflow needs (snakemake and its dependencies, jsonschema) it installs offline from wheels in
# .whl/ when present, those the machine lacks only, under a temporary folder; this package runs
# from src/ (no install). The steps and their time limits are in benchmarks/gpu_check.py.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2
RESULTS=$(realpath -m "${1:-gpu_check_results.md}")
if [ ! -f "$REPO/src/backdoor_eval/cli/__main__.py" ]; then
    echo "src/backdoor_eval/cli/__main__.py is missing: run this from a checkout of backdoor-eval" >&2
    exit 2
fi
# Offline wheels of what the machine lacks, the package from src/, the `backdoor-eval` and
# `snakemake` commands (benchmarks/gpu_env.sh).
# shellcheck source=benchmarks/gpu_env.sh
source benchmarks/gpu_env.sh
WORK=$GPU_ENV

"$PYTHON" benchmarks/gpu_check.py --results "$RESULTS" --work "$WORK" --installed "$WORK/installed.txt"
status=$?
echo "results: $RESULTS"
exit $status

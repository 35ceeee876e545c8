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
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
mkdir -p "$WORK/site" "$WORK/bin"

# Wheels of what the machine lacks (its own packages win: no version is replaced).
: >"$WORK/installed.txt"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" - "$WORK/missing.txt" .whl/*.whl <<'EOF'
import importlib.metadata as metadata, re, sys
from pathlib import Path
missing = []
for wheel in sys.argv[2:]:
    name = re.sub(r"[-_.]+", "-", Path(wheel).name.split("-")[0]).lower()
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        missing.append(wheel)
Path(sys.argv[1]).write_text("".join(f"{w}\n" for w in missing))
EOF
    if [ -s "$WORK/missing.txt" ]; then
        # shellcheck disable=SC2046
        if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$WORK/site" $(cat "$WORK/missing.txt") >"$WORK/pip.log" 2>&1; then
            xargs -n1 basename <"$WORK/missing.txt" >"$WORK/installed.txt"
        else
            # No pip: a wheel is a zip of what goes into site-packages (the commands are run with -m).
            while read -r wheel; do
                "$PYTHON" -m zipfile -e "$wheel" "$WORK/site" && basename "$wheel" >>"$WORK/installed.txt"
            done <"$WORK/missing.txt"
            echo "(unzipped: pip failed with $(tail -1 "$WORK/pip.log"))" >>"$WORK/installed.txt"
        fi
    fi
fi
export PYTHONPATH="$REPO/src:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"

# The console commands the workflow's rules and tests call, without installing the package.
if [ ! -f "$REPO/src/backdoor_eval/cli/__main__.py" ]; then
    echo "src/backdoor_eval/cli/__main__.py is missing: run this from a checkout of backdoor-eval" >&2
    exit 2
fi
printf '#!/bin/sh\nexec %s -m backdoor_eval.cli "$@"\n' "$(command -v "$PYTHON")" >"$WORK/bin/backdoor-eval"
printf '#!/bin/sh\nexec %s -m snakemake "$@"\n' "$(command -v "$PYTHON")" >"$WORK/bin/snakemake"
chmod +x "$WORK/bin/backdoor-eval" "$WORK/bin/snakemake"
export PATH="$WORK/bin:$PATH"
export GIT_PYTHON_REFRESH=quiet # GitPython (imported by Snakemake) without a git binary

"$PYTHON" benchmarks/gpu_check.py --results "$RESULTS" --work "$WORK" --installed "$WORK/installed.txt"
status=$?
echo "results: $RESULTS"
exit $status

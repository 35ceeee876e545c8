#!/usr/bin/env bash
# One config's workflow on an offline GPU machine, within a time limit, its results packed:
#
#   bash benchmarks/gpu_grid.sh OUT_DIR SECONDS CONFIG [SNAKEMAKE ARGS...]
#
# It is the README's command (snakemake --configfile CONFIG --cores N) plus what a bare machine
# lacks (benchmarks/gpu_env.sh). Every train job shares the GPU unless the config sets
# gpu_lock_dir (add `--config gpu_lock_dir=` to share it); extra arguments (targets, --config,
# --cores) go to snakemake. After SECONDS the workflow is stopped; whatever finished is packed
# into OUT_DIR/results.tgz (the config's results/<name>/ tables, figures, Parquet and JSON files,
# logs; the pretraining manifests) with OUT_DIR/grid.log and OUT_DIR/device.txt, and the same
# command resumes it.
set -uo pipefail
out=${1:?usage: gpu_grid.sh OUT_DIR SECONDS CONFIG [SNAKEMAKE ARGS...]}
seconds=${2:?usage: gpu_grid.sh OUT_DIR SECONDS CONFIG [SNAKEMAKE ARGS...]}
config=${3:?usage: gpu_grid.sh OUT_DIR SECONDS CONFIG [SNAKEMAKE ARGS...]}
out=$(realpath -m "$out")
config=$(realpath "$config")
mkdir -p "$out"
cd "$(dirname "$0")/.." || exit 2
# shellcheck source=benchmarks/gpu_env.sh
source benchmarks/gpu_env.sh
name=$("$PYTHON" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$config")
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
    echo "config $config (name $name), snakemake args: ${*:4}"
} >"$out/device.txt"
snakemake --configfile "$config" --unlock >/dev/null 2>&1
tic=$(date +%s)
timeout "$seconds" snakemake --configfile "$config" --cores "$(nproc)" --scheduler greedy --rerun-incomplete \
    --keep-going "${@:4}" >"$out/grid.log" 2>&1
echo "grid: exit $? after $(($(date +%s) - tic)) s" >>"$out/device.txt"
cp "$config" "$out/"
find "results/$name" resources/weights/pretrained \( -name '*.parquet' -o -name '*.json' -o -name '*.log' \
    -o -name '*.tsv' -o -name '*.md' -o -name '*.csv' -o -name '*.png' \) -not -path '*/poison/*/manifest.json' \
    -print0 2>/dev/null | tar czf "$out/results.tgz" --null -T -

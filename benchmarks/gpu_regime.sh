#!/usr/bin/env bash
# The paper's regime (config/real-cifar10-pretrained.yaml) on one GPU machine with no internet, in
# one call: the learning-rate probe (experiment L) first, its answer written into the config's
# train.lr (benchmarks/lr_probe.py), then the whole grid; every train job shares the one GPU.
#
#   bash benchmarks/gpu_regime.sh OUT_DIR [PROBE_SECONDS] [GRID_SECONDS]
#
# It is the README's command (snakemake --configfile ... --cores N) plus what a bare machine lacks
# (benchmarks/gpu_env.sh: offline wheels, the package from src/, the CIFAR-10 zip).
# Each stage has a time limit; whatever finished is packed into OUT_DIR/results.tgz (runs.parquet,
# epochs.parquet, the per-run tables, tables, figures, logs, the pretraining manifests) and an
# interrupted grid resumes with the same command.
set -uo pipefail
out=${1:?usage: gpu_regime.sh OUT_DIR [PROBE_SECONDS] [GRID_SECONDS]}
probe_s=${2:-240}
grid_s=${3:-330}
config=config/real-cifar10-pretrained.yaml
name=real-cifar10-pretrained
mkdir -p "$out"
cd "$(dirname "$0")/.."
# shellcheck source=benchmarks/gpu_env.sh
source benchmarks/gpu_env.sh
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"; } | tee "$out/device.txt"
snakemake --configfile "$config" --unlock >/dev/null 2>&1
run() { timeout "$1" snakemake --configfile "$config" --cores "$(nproc)" --scheduler greedy --rerun-incomplete "${@:2}"; }
tic=$(date +%s)
# shellcheck disable=SC2046
run "$probe_s" $(python3 benchmarks/lr_probe.py --config "$config" --targets) 2>&1 | tail -n 40 >"$out/probe.log"
probe_rc=$?
echo "probe: exit $probe_rc after $(($(date +%s) - tic)) s" | tee -a "$out/device.txt"
if python3 benchmarks/lr_probe.py --config "$config" --write >"$out/lr_probe.txt" 2>&1; then
  cat "$out/lr_probe.txt"
  tic=$(date +%s)
  run "$grid_s" --keep-going 2>&1 | tail -n 60 >"$out/grid.log"
  echo "grid: exit $? after $(($(date +%s) - tic)) s" | tee -a "$out/device.txt"
fi
cp "$config" "$out/"
find "results/$name" resources/weights/pretrained \( -name '*.parquet' -o -name '*.json' -o -name '*.log' -o -name '*.tsv' \
  -o -name '*.md' -o -name '*.csv' -o -name '*.png' \) -not -path '*/poison/*/manifest.json' -print0 2>/dev/null |
  tar czf "$out/results.tgz" --null -T -
ls -la "$out"

# Sourced by the GPU scripts (gpu_grid.sh, gpu_regime.sh): what a bare, offline GPU machine lacks
# to run the workflow from this checkout.
# - Python wheels in .whl/ of what the machine lacks (its own packages win: none is replaced),
#   installed offline under a temporary folder ($GPU_ENV/site; their names in $GPU_ENV/installed.txt);
# - this package from src/ (PYTHONPATH) and `backdoor-eval` / `snakemake` commands for the jobs;
# - the CIFAR-10 image-folder zip, rebuilt from .devdata/cifar10-jpeg.tar.xz (the same JPEG files,
#   a third of the zip's size) when resources/datasets/cifar10-jpeg.zip is absent.
# Usage: cd to the checkout, then `source benchmarks/gpu_env.sh`.
PYTHON=${PYTHON:-python3}
GPU_ENV=$(mktemp -d "${TMPDIR:-/tmp}/gpu-env.XXXXXX")
mkdir -p "$GPU_ENV/site" "$GPU_ENV/bin"
: >"$GPU_ENV/installed.txt"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" - "$GPU_ENV/missing.txt" .whl/*.whl <<'PY'
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
PY
    if [ -s "$GPU_ENV/missing.txt" ]; then
        # shellcheck disable=SC2046
        if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$GPU_ENV/site" $(cat "$GPU_ENV/missing.txt") >"$GPU_ENV/pip.log" 2>&1; then
            xargs -n1 basename <"$GPU_ENV/missing.txt" >"$GPU_ENV/installed.txt"
        else
            # No pip: a wheel is a zip of what goes into site-packages (the commands are run with -m).
            while read -r wheel; do
                "$PYTHON" -m zipfile -e "$wheel" "$GPU_ENV/site" && basename "$wheel" >>"$GPU_ENV/installed.txt"
            done <"$GPU_ENV/missing.txt"
            echo "(unzipped: pip failed with $(tail -1 "$GPU_ENV/pip.log"))" >>"$GPU_ENV/installed.txt"
        fi
    fi
fi
export PYTHONPATH="$PWD/src:$GPU_ENV/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
printf '#!/bin/sh\nexec %s -m backdoor_eval.cli "$@"\n' "$(command -v "$PYTHON")" >"$GPU_ENV/bin/backdoor-eval"
printf '#!/bin/sh\nexec %s -m snakemake "$@"\n' "$(command -v "$PYTHON")" >"$GPU_ENV/bin/snakemake"
chmod +x "$GPU_ENV/bin/backdoor-eval" "$GPU_ENV/bin/snakemake"
export PATH="$GPU_ENV/bin:$PATH"
export GIT_PYTHON_REFRESH=quiet # GitPython (imported by Snakemake) without a git binary
if [ ! -e resources/datasets/cifar10-jpeg.zip ] && [ -f .devdata/cifar10-jpeg.tar.xz ]; then
    mkdir -p resources/datasets
    "$PYTHON" - <<'PY'
import tarfile, zipfile
with tarfile.open(".devdata/cifar10-jpeg.tar.xz") as tar, zipfile.ZipFile("resources/datasets/cifar10-jpeg.zip.part", "w") as out:
    for member in tar:
        if member.isfile():
            out.writestr(member.name, tar.extractfile(member).read())
PY
    mv resources/datasets/cifar10-jpeg.zip.part resources/datasets/cifar10-jpeg.zip
fi

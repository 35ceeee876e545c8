"""Benchmark the data stage: decode rate (threads vs processes) and full ingests of the real dataset zips.

    .venv/bin/python benchmarks/bench_data.py [--datasets DIR] [--subset 12000] [--workers 2]
        [--skip-ingest] [--out-dir DIR]

Prints figures; writes stores only into a temporary folder (removed after).
Skips, saying why, when the datasets folder (``--datasets``; by default
``$BACKDOOR_EVAL_SHARED_DATASETS``, else the folder the tests read, see
docs/data.md) holds neither zip.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from backdoor_eval.data import decode_images, ingest, make_synthetic
from backdoor_eval.data.decode import available_cpus
from backdoor_eval.data.readers.image_folder import list_zip, scan_layout
from backdoor_eval.splits import make_partitions

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATASETS = Path(os.environ.get("BACKDOOR_EVAL_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def store_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir())


def decode_rate(zip_path: Path, subset: int, workers: int, executor: str, size: int | None) -> float:
    with zipfile.ZipFile(zip_path) as archive:
        layout = scan_layout(*list_zip(archive, zip_path), where=str(zip_path), splits=None)
    # An even spread over classes, so the subset is representative.
    entries = layout.entries[:: max(1, len(layout.entries) // subset)][:subset]
    start = time.perf_counter()
    decode_images(zip_path, entries, size, workers=workers, executor=executor, progress=False)
    return len(entries) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS, help="folder holding the dataset zips")
    parser.add_argument("--subset", type=int, default=12000, help="CIFAR images per decode-rate measurement")
    parser.add_argument("--workers", type=int, default=available_cpus(), help="decoding workers")
    parser.add_argument("--repeats", type=int, default=2, help="decode-rate repeats (best is reported)")
    parser.add_argument("--skip-ingest", action="store_true", help="only the decode-rate comparison")
    parser.add_argument("--out-dir", type=Path, default=None, help="where temporary stores go (default: system temp)")
    args = parser.parse_args()

    print(f"CPUs available: {available_cpus()}, workers: {args.workers}")
    start = time.perf_counter()
    make_synthetic()
    print(f"synthetic (10 x 300, 32x32): {time.perf_counter() - start:.3f} s")

    cifar = args.datasets / "cifar10-jpeg.zip"
    flowers = args.datasets / "flowers-recognition-256.zip"
    if not cifar.is_file() and not flowers.is_file():
        print(
            f"SKIP: no cifar10-jpeg.zip or flowers-recognition-256.zip in {args.datasets} "
            "(set BACKDOOR_EVAL_SHARED_DATASETS or pass --datasets)"
        )
        return 0

    if cifar.is_file():
        print(f"\ndecode rate, CIFAR-10 zip, {args.subset} images, 32x32 native (best of {args.repeats}):")
        for workers, executor in ((1, "thread"), (args.workers, "thread"), (args.workers, "process")):
            rate = max(decode_rate(cifar, args.subset, workers, executor, None) for _ in range(args.repeats))
            print(f"  {executor:7s} x{workers}: {rate:8.0f} images/s")
    if flowers.is_file():
        subset = min(args.subset, 800)
        print(f"\ndecode rate, Flowers zip, {subset} images, resized to 224x224 (best of {args.repeats}):")
        for workers, executor in ((1, "thread"), (args.workers, "thread"), (args.workers, "process")):
            rate = max(decode_rate(flowers, subset, workers, executor, 224) for _ in range(args.repeats))
            print(f"  {executor:7s} x{workers}: {rate:8.0f} images/s")

    if args.skip_ingest:
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench_data.", dir=args.out_dir))
    try:
        for name, zip_path, params in (
            ("cifar10 (imagefolder)", cifar, {"path": str(cifar)}),
            ("flowers", flowers, {"path": str(flowers)}),
        ):
            if not zip_path.is_file():
                print(f"\nSKIP {name}: {zip_path} not found")
                continue
            dataset = "flowers" if name == "flowers" else "imagefolder"
            params["workers"] = args.workers
            start = time.perf_counter()
            store = ingest(dataset, params, tmp / dataset, progress=False)
            seconds = time.perf_counter() - start
            print(
                f"\ningest {name}: {store.num_images} images of {'x'.join(map(str, store.manifest['image_shape']))} "
                f"in {seconds:.1f} s ({store.num_images / seconds:.0f} images/s, md5 and sha256 included); "
                f"store {store_size(store.root) / 2**20:.1f} MiB"
            )
            start = time.perf_counter()
            make_partitions(store.labels, seed=0)
            print(f"  make_partitions: {1000 * (time.perf_counter() - start):.1f} ms")
            shutil.rmtree(store.root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

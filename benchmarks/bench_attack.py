"""Benchmark the attack stage: per-run overlay materialisation and the LV fit.

Prints, per dataset and trigger, the wall time of one ``materialize`` run
(poison-rate 0.1, many-to-one) and the bytes the overlay takes on disk as a
share of the canonical store; then the LV fit time for Flowers at 224 x 224
(float64 Gram eigendecomposition; the LAPACK SVDs on request). Targets: overlay < 5% of the store, < 2 s per run.

Uses the real stores when ``backdoor_eval.data.ingest`` and the shared
dataset zips are available (ingested into a temporary folder outside the
repository), otherwise random uint8 arrays of exactly the real shapes, and
says which. Run: ``.venv/bin/python benchmarks/bench_attack.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backdoor_eval.lv_fit import fit_low_variance, save_lv_fit
from backdoor_eval.names import PARTITIONS
from backdoor_eval.poison import load_poisoned, materialize
from backdoor_eval.triggers import create_trigger

SHARED = Path(
    os.environ.get("BACKDOOR_EVAL_SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets")
)
SHAPES = {"cifar10": (60_000, 32, 32, 10), "flowers": (4_317, 224, 224, 5)}
# The shared CIFAR-10 copy is an image-folder zip of JPEGs (the cifar10 entry reads the official tarball).
REAL = {"cifar10": ("imagefolder", "cifar10-jpeg.zip"), "flowers": ("flowers", "flowers-recognition-256.zip")}


@dataclass
class ArrayStore:
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    manifest: dict = field(default_factory=dict)

    def class_index(self, value):
        return self.class_names.index(value) if isinstance(value, str) else int(value)


def random_store(name: str, workdir: Path) -> tuple[ArrayStore, str]:
    n, size, _, num_classes = SHAPES[name]
    rng = np.random.default_rng(0)
    path = workdir / f"{name}_images.npy"
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    for start in range(0, n, 1000):  # in blocks: 650 MB for Flowers
        images[start : start + 1000] = rng.integers(0, 256, images[start : start + 1000].shape, dtype=np.uint8)
    images.flush()
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    return ArrayStore(np.load(path, mmap_mode="r"), labels, [f"c{i}" for i in range(num_classes)]), "random uint8"


def real_store(name: str, store_dir: Path):
    """The real store: opened from ``store_dir/name`` if ingested before, else ingested there."""
    try:
        from backdoor_eval.data import ingest, open_store
    except ImportError:
        return None
    dataset, zip_name = REAL[name]
    out = store_dir / name
    if (out / "manifest.json").is_file():
        return open_store(out), f"real ({zip_name}, store reused from {out})"
    if not (SHARED / zip_name).is_file():
        return None
    start = time.perf_counter()
    store = ingest(dataset, {"path": str(SHARED / zip_name)}, out, progress=False)
    return store, f"real ({zip_name}, ingested in {time.perf_counter() - start:.0f} s)"


def partitions_for(labels: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    try:
        from backdoor_eval.splits import make_partitions

        return make_partitions(labels, seed)
    except ImportError:  # splits.py not there yet: same proportions, not stratified
        share = [0.76 * 0.8, 0.76 * 0.2, 0.19 * 0.8, 0.19 * 0.2, 0.05]
        part = np.random.default_rng(seed).choice(5, size=labels.size, p=share)
        return {name: np.flatnonzero(part == i) for i, name in enumerate(PARTITIONS)}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir())


def bench_materialize(name, store, parts, triggers, workdir, repeats):
    store_bytes = np.asarray(store.images[:1]).nbytes * len(store.labels) + np.asarray(store.labels).nbytes
    for trigger_name, trigger in triggers.items():
        seconds = []
        for repeat in range(repeats):
            out = workdir / f"{name}_{trigger_name}_{repeat}"
            start = time.perf_counter()
            materialize(store, parts, trigger, 0, 0.1, "many-to-one", None, seed=repeat, out_dir=out)
            seconds.append(time.perf_counter() - start)
        size = dir_bytes(out)
        start = time.perf_counter()
        data = load_poisoned(store, parts, out)
        data.sets["poison_train"]
        load_seconds = time.perf_counter() - start
        print(
            f"{name:8s} {trigger_name:4s} materialize median {statistics.median(seconds):6.3f} s "
            f"(min {min(seconds):.3f}, n={repeats})  overlay {size / 1e6:7.2f} MB = "
            f"{100 * size / store_bytes:5.2f}% of the {store_bytes / 1e6:.0f} MB store; "
            f"load_poisoned + poison_train {load_seconds:.2f} s"
        )


def time_lv(train, reference, backend):
    start = time.perf_counter()
    fit = fit_low_variance(train, reference, backend=backend)
    seconds = time.perf_counter() - start
    LV_SECONDS[backend] = seconds
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"LV fit ({backend:5s}) on {train.shape[0]} x {train[0].size}: {seconds:7.1f} s, "
        f"{fit.components.shape[0]} of {fit.total_components} components, "
        f"ratio sum {fit.explained_variance_ratio.sum():.5f} (process peak RSS so far {peak_gb:.1f} GiB)"
    )
    return fit


def bench_lv(store, parts, backends, compare_n, out_path):
    train = np.asarray(store.images[np.asarray(parts["poison_train"])])
    reference = np.asarray(store.images[int(np.asarray(parts["clean_val"])[0])])
    if compare_n:
        subset = train[np.linspace(0, len(train) - 1, compare_n).astype(int)]
        fits = {backend: time_lv(subset, reference, backend) for backend in ("gram", "torch", "numpy")}
        worst = max(float(np.abs(f.pattern - fits["gram"].pattern).max()) for f in fits.values())
        print(f"  largest pattern difference between backends: {worst:.2e}")
    fit = None
    for backend in backends:
        fit = time_lv(train, reference, backend)
    save_lv_fit(out_path, fit)
    lean = out_path.with_name("lv_lean.npz")
    save_lv_fit(lean, fit, with_components=False)
    LV_BYTES.update(full=out_path.stat().st_size, lean=lean.stat().st_size)
    print(f"LV fit file: {LV_BYTES['full'] / 1e6:.1f} MB; without components: {LV_BYTES['lean'] / 1e6:.1f} MB")
    return fit


def grid_lv_cost(config_path: str, dataset: str) -> None:
    """The LV fits a config's grid needs on ``dataset`` under its split policy, at the time just measured."""
    from backdoor_eval import configview, experiments
    from backdoor_eval.config import load_config

    config = load_config(config_path, check_registries=False)
    for policy in ("per-run", "shared"):
        policy_config = {**config, "split": policy}
        runs = experiments.union(experiments.expand(policy_config))
        fits = {
            configview.split_of(policy_config, run) for run in runs if run.trigger == "lv" and run.dataset == dataset
        }
        hours = len(fits) * LV_SECONDS["gram"] / 3600
        print(
            f"{config_path} ({policy} split): {len(fits)} LV fits on {dataset} x {LV_SECONDS['gram']:.0f} s = "
            f"{hours:.1f} CPU-hours; disk {len(fits) * LV_BYTES['full'] / 1e9:.1f} GB with components, "
            f"{len(fits) * LV_BYTES['lean'] / 1e9:.2f} GB without"
        )


LV_SECONDS: dict[str, float] = {}  # backend -> seconds of the last full fit
LV_BYTES: dict[str, int] = {}  # fit file size with ("full") and without ("lean") components


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["cifar10", "flowers"], choices=sorted(SHAPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lv-backends", nargs="*", default=["gram"], choices=["gram", "numpy", "torch"],
                        help="LV backends timed on the full Flowers poison-train (numpy: ~12 min, 15 GB)")  # fmt: skip
    parser.add_argument("--random", action="store_true", help="use random arrays even if the real data can be ingested")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--stores", default=None, help="folder of ingested stores to reuse/keep (default: scratch)")
    parser.add_argument(
        "--grid", metavar="CONFIG", help="also print the LV fits this config's grid needs, and their cost"
    )
    parser.add_argument("--lv-compare", type=int, default=0, metavar="N",
                        help="also time every LV backend on N poison-train images (0: skip)")  # fmt: skip
    args = parser.parse_args(argv)
    import torch

    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench_attack_", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        for name in args.datasets:
            found = None if args.random else real_store(name, Path(args.stores) if args.stores else workdir)
            store, source = found if found else random_store(name, workdir)
            parts = partitions_for(np.asarray(store.labels))
            print(f"\n== {name}: {len(store.labels)} images {tuple(store.images.shape[1:])}, data: {source}")
            triggers = {t: create_trigger(t) for t in ("bs", "rs", "sin")}
            if args.lv_backends:
                bench_lv(store, parts, args.lv_backends, args.lv_compare, workdir / "lv.npz")
                start = time.perf_counter()
                triggers["lv"] = create_trigger("lv", fit=str(workdir / "lv.npz"))
                triggers["lv"].spec()  # hashes the fit file once, as the poison command does
                print(f"lv trigger from the fit file (no components) + sha256: {time.perf_counter() - start:.2f} s")
                if args.grid and "gram" in LV_SECONDS:
                    grid_lv_cost(args.grid, name)
            bench_materialize(name, store, parts, triggers, workdir, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CLI subcommands for the data area: ``ingest`` (dataset -> store) and ``partition`` (store -> partitions)."""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np

from .common import add_split_arguments, json_object, split_arguments

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``."""
    from backdoor_eval.data import DATASETS

    ingest = sub.add_parser(
        "ingest",
        help="read a dataset into a store (images.npy, labels.npy, manifest.json)",
        description="Read a dataset once into the canonical store that every later step uses (docs/data.md).",
    )
    ingest.add_argument("--dataset", required=True, metavar="NAME", help=f"one of: {', '.join(DATASETS.names())}")
    ingest.add_argument(
        "--params",
        default="{}",
        metavar="JSON",
        help='dataset parameters as a JSON object, e.g. \'{"path": "flowers.zip", "size": 224}\'',
    )
    ingest.add_argument("--out", required=True, metavar="DIR", help="store folder to write (replaced atomically)")
    ingest.set_defaults(func=cmd_ingest)

    partition = sub.add_parser(
        "partition",
        help="split a store 76/19/5 then 80/20, stratified (docs/decisions.md#partitions)",
        description="Write the seeded poison/clean/adversarial-test partitions of a store as one npz file.",
    )
    partition.add_argument("--store", required=True, metavar="DIR", help="store folder written by `ingest`")
    add_split_arguments(partition)
    partition.add_argument("--out", required=True, metavar="FILE.npz", help="partitions file to write")
    partition.set_defaults(func=cmd_partition)


def cmd_ingest(args: argparse.Namespace) -> int:
    from backdoor_eval.data import describe, ingest

    params = json_object(args.params, "--params")
    start = time.perf_counter()
    store = ingest(args.dataset, params, args.out, progress=sys.stderr.isatty())
    log.info("%s in %.1f s -> %s", describe(store), time.perf_counter() - start, args.out)
    _hint_at_undeclarable_class_names(store.class_names)
    return 0


def _hint_at_undeclarable_class_names(class_names: list[str]) -> None:
    """Warn, at ingest, of class folders a config cannot name (the store is written all the same)."""
    from backdoor_eval.validation import CLASS_NAME_RULE, is_valid_class_name

    bad = [name for name in class_names if not is_valid_class_name(name)]
    if bad:
        log.warning(
            "class(es) %s cannot be declared in a config's classes: %s", ", ".join(map(repr, bad)), CLASS_NAME_RULE
        )


def cmd_partition(args: argparse.Namespace) -> int:
    from backdoor_eval.data import open_store
    from backdoor_eval.splits import make_partitions, save_partitions

    split, seed, keys = split_arguments(args)
    store = open_store(args.store)
    parts = make_partitions(store.labels, seed, keys)
    save_partitions(args.out, parts)
    for name, indices in parts.items():
        counts = np.bincount(np.asarray(store.labels)[indices], minlength=store.num_classes)
        empty = [store.class_names[c] for c in np.flatnonzero(counts == 0)]
        if empty:
            # A run poisoning such a class in poison_train/poison_val fails naming the set; accuracies skip it.
            log.warning("the %s set holds no image of class(es) %s (too few images)", name, ", ".join(empty))
    log.info(
        "partitions (split %s) of %d images: %s -> %s",
        split,
        store.num_images,
        ", ".join(f"{name} {len(idx)}" for name, idx in parts.items()),
        args.out,
    )
    return 0

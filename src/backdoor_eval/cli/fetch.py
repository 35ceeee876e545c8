"""CLI subcommands for the fetch area: ``fetch-weights`` and ``fetch-dataset``.

The only commands that use the network: the workflow runs them as local rules on the submitting
node, before any compute job, and every other job runs offline (``backdoor_eval.offline``,
docs/workflow.md#offline-compute-nodes). Run by hand, they pre-seed ``resources/`` for a machine
with no internet.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .common import json_object

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``."""
    weights = sub.add_parser(
        "fetch-weights",
        help="write a model's pretrained backbone weights to a local safetensors file",
        description=(
            "Write a model's pretrained backbone weights (classifier left out) to a safetensors file that "
            "`train` reads with the network off: the hub weights, or a checkpoint file or URL (--source) "
            "converted and checked to fit (docs/models.md#pretrained-weights-and-offline-machines)."
        ),
    )
    weights.add_argument("--model", required=True, metavar="NAME", help="a MODELS registry name or timm:<name>")
    weights.add_argument(
        "--source",
        metavar="FILE|URL",
        help="a checkpoint to convert (timm layout, a saved model, Cadene's NASNet-A Mobile); default: the hub",
    )
    weights.add_argument("--out", required=True, metavar="FILE.safetensors", help="weights file to write")
    weights.set_defaults(func=cmd_fetch_weights)

    dataset = sub.add_parser(
        "fetch-dataset",
        help="download a dataset's archive to where its reader reads it",
        description=(
            "Download the archive a dataset's reader would download (cifar10 by url, imagefolder/flowers with a "
            "url) to <cache_dir>/<file name of the url>, md5-checked, so that `ingest` reads it offline."
        ),
    )
    dataset.add_argument("--dataset", required=True, metavar="NAME", help="a DATASETS registry name")
    dataset.add_argument("--params", default="{}", metavar="JSON", help="the dataset's parameters as a JSON object")
    dataset.add_argument("--out", required=True, metavar="FILE", help="the archive: <cache_dir>/<file name>")
    dataset.set_defaults(func=cmd_fetch_dataset)


def cmd_fetch_weights(args: argparse.Namespace) -> int:
    from backdoor_eval.models import fetch_weights

    start = time.perf_counter()
    count = fetch_weights(args.model, args.out, source=args.source)
    log.info(
        "%s: %d backbone tensors from %s -> %s in %.1f s",
        args.model,
        count,
        args.source or "the hub",
        args.out,
        time.perf_counter() - start,
    )
    return 0


def cmd_fetch_dataset(args: argparse.Namespace) -> int:
    from backdoor_eval.data import fetch_archive

    start = time.perf_counter()
    path = fetch_archive(args.dataset, json_object(args.params, "--params"), args.out, progress=sys.stderr.isatty())
    log.info("%s archive -> %s in %.1f s", args.dataset, path, time.perf_counter() - start)
    return 0

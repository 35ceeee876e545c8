"""Argument helpers shared by the CLI areas."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def int_at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum``, or a message naming the value and what is allowed."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number; allowed: {minimum}, {minimum + 1}, ..."
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not allowed; allowed: a whole number >= {minimum}")
        return value

    return parse


positive_int = int_at_least(1)  # threads, sizes
seed_int = int_at_least(0)  # seeds


def json_object(text: str | None, option: str) -> dict:
    """``text`` as a JSON object (empty or None: ``{}``), or a ``ValueError`` naming the option and the text."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{option} {text!r} is not valid JSON ({exc.msg}); expected a JSON object") from None
    if not isinstance(value, dict):
        raise ValueError(f"{option} {text!r} is not a JSON object; expected e.g. '{{\"size\": 224}}'")
    return value


def read_parquet(path: str, what: str):
    """The Parquet file at ``path``, or a ``FileNotFoundError`` naming ``what`` it is and the path."""
    import pandas as pd

    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    return pd.read_parquet(path)


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """``--split ID`` (what the workflow passes) or ``--seed N`` (shorthand for ``--split seedN``)."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--seed", type=seed_int, metavar="N", help="the seed of a split shared per seed (= --split seedN)"
    )
    group.add_argument(
        "--split",
        metavar="ID",
        help="the split: seed<N> (shared by every run of seed N) or seed<N>-<16 hex> (one run's own)",
    )


def split_arguments(args: argparse.Namespace) -> tuple[str, int, tuple[int, ...]]:
    """``(split id, seed, stream keys)`` from :func:`add_split_arguments`' options."""
    from backdoor_eval import seeding

    split = args.split if args.split is not None else seeding.split_id(args.seed)
    seed, keys = seeding.parse_split_id(split)
    return split, seed, keys

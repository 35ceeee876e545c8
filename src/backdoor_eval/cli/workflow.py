"""CLI subcommands for the workflow area: ``expand``, ``show-config``, ``membership``, ``check-store``.

Light imports only (no torch at import time): the Snakemake rules call these
on the head node. Configs are read with the package's one loader
(:mod:`backdoor_eval.config`), the same the Snakefile uses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _load_config(args: argparse.Namespace) -> dict:
    """``--config FILE`` through the package's loader, or ``--config-json`` as the workflow passes it.

    The workflow passes only the parts of its (already loaded and checked)
    config that the command depends on, so that JSON gets the semantic
    checks but not the schema, which would ask for the keys left out.
    """
    from backdoor_eval import validation
    from backdoor_eval.config import load_config

    if args.config_json is None:
        return load_config(args.config)
    try:
        config = json.loads(args.config_json)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--config-json is not valid JSON ({exc.msg}); allowed: a JSON object") from None
    if not isinstance(config, dict):
        raise ValueError("--config-json is not a JSON object; allowed: a JSON object")
    validation.validate(config)
    return config


def cmd_expand(args: argparse.Namespace) -> int:
    from backdoor_eval import experiments

    print(experiments.format_counts(_load_config(args)))
    return 0


def cmd_show_config(args: argparse.Namespace) -> int:
    import yaml

    yaml.safe_dump(_load_config(args), sys.stdout, sort_keys=False)
    return 0


def cmd_membership(args: argparse.Namespace) -> int:
    from backdoor_eval import experiments
    from backdoor_eval.io import write_json

    config = _load_config(args)
    results_dir = args.results_dir or f"results/{config.get('name')}"
    write_json(args.out, experiments.membership(config, results_dir))
    return 0


def cmd_check_store(args: argparse.Namespace) -> int:
    """The ingested store's class names must be the config's ``classes`` (same order)."""
    from backdoor_eval.io import read_json

    manifest_path = Path(args.store) / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"--store {args.store!r} has no manifest.json; is it an ingested store?")
    found = list(read_json(manifest_path).get("class_names", []))
    expected = json.loads(args.classes) if args.classes.lstrip().startswith("[") else args.classes.split(",")
    if found != expected:
        raise ValueError(
            f"store {args.store} has classes {found}; the config declares {expected} "
            "(datasets.<name>.classes must list the store's classes in label order)"
        )
    print(f"{args.store}: {len(found)} classes as declared")
    return 0


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="config YAML file (e.g. config/config.yaml)")
    source.add_argument("--config-json", help="the config as a JSON object (what the workflow passes)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``."""
    p = sub.add_parser(
        "expand",
        help="check a config and print its per-experiment and de-duplicated run counts",
        description="Load a config as the workflow does (schema, defaults, names, registries) and print "
        "how many runs each experiment has and how many distinct jobs the grid needs.",
    )
    _add_config_arguments(p)
    p.set_defaults(func=cmd_expand)

    p = sub.add_parser("show-config", help="print a config with every schema default filled in (YAML)")
    _add_config_arguments(p)
    p.set_defaults(func=cmd_show_config)

    p = sub.add_parser("membership", help="write the experiment membership JSON that `aggregate` reads")
    _add_config_arguments(p)
    p.add_argument("--results-dir", default=None, help="results folder of the config (default results/{name})")
    p.add_argument("--out", required=True, help="output JSON file")
    p.set_defaults(func=cmd_membership)

    p = sub.add_parser("check-store", help="check an ingested store's class names against the config's")
    p.add_argument("--store", required=True, help="store folder (with manifest.json)")
    p.add_argument("--classes", required=True, help="expected class names: a JSON list or comma-separated")
    p.set_defaults(func=cmd_check_store)

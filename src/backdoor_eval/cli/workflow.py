"""CLI subcommands for the workflow area: ``gpu-exec``, ``expand``, ``membership``, ``check-store``.

Light imports only (no torch, no NumPy at import time): ``gpu-exec`` must set
``CUDA_VISIBLE_DEVICES`` before anything touches CUDA, and the Snakemake
rules call these on the head node.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path


def _load_config(args: argparse.Namespace) -> dict:
    import yaml

    if args.config_json is not None:
        try:
            config = json.loads(args.config_json)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config-json is not valid JSON ({exc.msg}); allowed: a JSON object") from None
    elif args.config is not None:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {args.config!r}: no such file")
        config = yaml.safe_load(path.read_text())
    else:
        raise ValueError("give --config FILE or --config-json JSON")
    if not isinstance(config, dict):
        raise ValueError(f"config {args.config or '--config-json'!r} is not a mapping; allowed: a YAML/JSON mapping")
    return config


def gpu_exec(args: argparse.Namespace) -> int:
    from backdoor_eval.gpus import gpu_slot

    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ValueError("gpu-exec needs a command after '--', e.g. gpu-exec -- python train.py")
    with gpu_slot(args.lock_dir, num_gpus=args.num_gpus):
        # The slot's CUDA_VISIBLE_DEVICES is in os.environ, which the child inherits.
        return subprocess.run(command, check=False).returncode


def expand(args: argparse.Namespace) -> int:
    from backdoor_eval import experiments

    config = _load_config(args)
    experiments.validate(config, check_registries=args.check_registries)
    print(experiments.format_counts(config))
    return 0


def membership(args: argparse.Namespace) -> int:
    from backdoor_eval import experiments
    from backdoor_eval.io import write_json

    config = _load_config(args)
    experiments.validate(config)
    results_dir = args.results_dir or f"results/{config.get('name')}"
    write_json(args.out, experiments.membership(config, results_dir))
    return 0


def check_store(args: argparse.Namespace) -> int:
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
        "gpu-exec",
        help="run a command holding a free GPU slot (CUDA_VISIBLE_DEVICES set)",
        description="Take the first free GPU slot (a flock on LOCK_DIR/gpu{i}.lock), run CMD with "
        "CUDA_VISIBLE_DEVICES set to that GPU, return its exit code. Without GPUs, CMD runs unchanged.",
    )
    p.add_argument("--lock-dir", default=None, help="lock-file folder shared by the jobs (default: a per-user temp folder)")
    p.add_argument("--num-gpus", type=int, default=None, help="GPUs to share (default: $BACKDOOR_EVAL_NUM_GPUS, CUDA_VISIBLE_DEVICES or nvidia-smi -L)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...", help="the command to run")
    p.set_defaults(func=gpu_exec)

    p = sub.add_parser("expand", help="print the per-experiment and de-duplicated run counts of a config")
    _add_config_arguments(p)
    p.add_argument(
        "--check-registries",
        action="store_true",
        help="also check the declared dataset/model/trigger/regularizer names against the package registries",
    )
    p.set_defaults(func=expand)

    p = sub.add_parser("membership", help="write the experiment membership JSON that `aggregate` reads")
    _add_config_arguments(p)
    p.add_argument("--results-dir", default=None, help="results folder of the config (default results/{name})")
    p.add_argument("--out", required=True, help="output JSON file")
    p.set_defaults(func=membership)

    p = sub.add_parser("check-store", help="check an ingested store's class names against the config's")
    p.add_argument("--store", required=True, help="store folder (with manifest.json)")
    p.add_argument("--classes", required=True, help="expected class names: a JSON list or comma-separated")
    p.set_defaults(func=check_store)


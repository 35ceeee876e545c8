"""CLI subcommands for the attack area: ``fit-<trigger>`` (``fit-lv``), ``poison``, ``poison-stats``.

Handlers parse arguments, call the pure functions of ``backdoor_eval.triggers``
and ``backdoor_eval.poison``, and write files atomically. The data modules
are imported inside the handlers so ``poison-stats`` needs no store.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .common import add_split_arguments, json_object, split_arguments

log = logging.getLogger(__name__)


def _class_ref(value: str | None) -> int | str | None:
    """``NAME|INDEX`` from the command line: digits are a 0-based index, anything else a name."""
    if value is None:
        return None
    return int(value) if value.strip().isdigit() else value


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{option} {text!r}; allowed: comma-separated whole numbers like 710,980,734") from None


def cmd_fit(args: argparse.Namespace) -> int:
    """``fit-<trigger>``: a fitted trigger's fit on one split (``backdoor_eval.triggers.TriggerFit``)."""
    from backdoor_eval.data import open_store
    from backdoor_eval.splits import load_partitions
    from backdoor_eval.triggers import fitter_of

    split, seed, keys = split_arguments(args)
    store = open_store(args.store)
    partitions = load_partitions(args.partitions, num_images=len(store.labels))
    fitter_of(args.fitted_trigger).fit(
        store.images, partitions, split=split, seed=seed, split_keys=keys, args=args, out=args.out
    )
    return 0


def cmd_poison(args: argparse.Namespace) -> int:
    from backdoor_eval.names import fit_name, fit_option
    from backdoor_eval.poison import check_poison_rate, check_strategy, materialize
    from backdoor_eval.triggers import create_trigger, fitted_triggers

    params = json_object(args.trigger_params, "--trigger-params")
    for kind in fitted_triggers():
        path = getattr(args, fit_name(kind))
        if path is None:
            continue
        if args.trigger != kind:
            raise ValueError(
                f"{fit_option(kind)} was given for trigger {args.trigger!r}; allowed: only with --trigger {kind}"
            )
        params["fit"] = path
    trigger = create_trigger(args.trigger, alpha=args.alpha, **params)
    check_poison_rate(args.poison_rate)  # fail on bad input before opening the store
    check_strategy(args.strategy)
    _, seed, keys = split_arguments(args)
    from backdoor_eval.data import open_store
    from backdoor_eval.splits import load_partitions

    store = open_store(args.store)
    partitions = load_partitions(args.partitions, num_images=len(store.labels))
    manifest = materialize(
        store,
        partitions,
        trigger,
        poison_class=_class_ref(args.poison_class),
        poison_rate=args.poison_rate,
        strategy=args.strategy,
        source=_class_ref(args.source),
        seed=seed,
        split_keys=keys,
        out_dir=args.out,
    )
    log.info(
        "poisoned %d poison-train and %d poison-val images of class %s -> %s",
        manifest["sets"]["poison_train"]["num_poisoned"],
        manifest["sets"]["poison_val"]["num_poisoned"],
        manifest["poison_class_name"],
        args.out,
    )
    return 0


def cmd_poison_stats(args: argparse.Namespace) -> int:
    from backdoor_eval.io import atomic_path
    from backdoor_eval.poison import format_poison_stats, poison_stats

    class_counts = _int_list(args.class_counts, "--class-counts")
    class_names = None if args.class_names is None else [name.strip() for name in args.class_names.split(",")]
    source = _class_ref(args.source)
    if isinstance(source, str):
        if class_names is None or source not in class_names:
            raise ValueError(f"--source {source!r}; allowed: a 0-based index or one of --class-names {class_names}")
        source = class_names.index(source)
    frame = poison_stats(class_counts, args.rate, strategy=args.strategy, source=source, class_names=class_names)
    text = format_poison_stats(frame)
    sys.stdout.write(text)
    if args.out is not None:
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(text)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to ``sub``."""
    from backdoor_eval.names import MANY_TO_ONE, STRATEGIES, fit_command, fit_name, fit_option
    from backdoor_eval.triggers import TRIGGERS, fitted_triggers, fitter_of

    for kind in fitted_triggers():  # fit-lv: each fitted trigger's fit on one split
        fitter = fitter_of(kind)
        p = sub.add_parser(fit_command(kind), help=fitter.help)
        p.add_argument("--store", required=True, help="canonical store directory")
        p.add_argument("--partitions", required=True, help="partitions npz")
        add_split_arguments(p)  # the split: its partitions, and any draw the fit makes
        fitter.add_arguments(p)
        p.add_argument("--out", required=True, help="the fit file to write")
        p.set_defaults(func=cmd_fit, fitted_trigger=kind)

    p = sub.add_parser("poison", help="poison poison-train/poison-val and write the overlay")
    p.add_argument("--store", required=True, help="canonical store directory")
    p.add_argument("--partitions", required=True, help="partitions npz")
    p.add_argument("--trigger", required=True, help=f"trigger name ({', '.join(TRIGGERS.in_order())})")
    p.add_argument("--alpha", type=float, default=None, help="transparency in [0, 1] (default: the trigger's)")
    p.add_argument("--trigger-params", default=None, help="JSON object of trigger parameters")
    for kind in fitted_triggers():
        p.add_argument(fit_option(kind), dest=fit_name(kind), default=None, help=f"{kind} fit file (trigger {kind})")
    p.add_argument("--poison-class", required=True, help="poison class, NAME or 0-based INDEX")
    p.add_argument("--poison-rate", required=True, type=float, help="poison rate lambda in (0, 1)")
    p.add_argument("--strategy", required=True, choices=STRATEGIES)
    p.add_argument("--source", default=None, help="one-to-one source class, NAME or 0-based INDEX")
    add_split_arguments(p)
    p.add_argument("--out", required=True, help="output directory (overlay.npz, manifest.json)")
    p.set_defaults(func=cmd_poison)

    p = sub.add_parser("poison-stats", help="Table 1: poisoned counts per class (eq. 8) and effective poisoning rate")
    p.add_argument("--class-counts", required=True, help="comma-separated class sizes, e.g. 710,980,734,675,904")
    p.add_argument("--rate", required=True, type=float, help="poison rate lambda in (0, 1)")
    p.add_argument("--strategy", default=MANY_TO_ONE, choices=STRATEGIES)
    p.add_argument("--source", default=None, help="one-to-one source class, NAME or 0-based INDEX")
    p.add_argument("--class-names", default=None, help="comma-separated class names (default: 1..n as in the paper)")
    p.add_argument("--out", default=None, help="also write the CSV here")
    p.set_defaults(func=cmd_poison_stats)

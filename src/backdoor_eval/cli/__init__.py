"""The ``backdoor-eval`` command line: the one entry point Snakemake rules call.

Each area registers its own subcommands (``cli/fetch.py``, ``cli/data.py``, ``cli/attack.py``,
``cli/engine.py``, ``cli/report.py``, ``cli/workflow.py``, ``cli/analyze.py``); each handler,
``cmd_<command>``, parses its arguments and calls the package, which writes
every file atomically to the paths the arguments name. Before any handler
runs, ``main`` checks that every output path can be written
(:func:`check_outputs`), and prints bad input as one line, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from backdoor_eval.locks import LockHeldError

AREAS = ("fetch", "data", "attack", "engine", "report", "workflow", "analyze")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backdoor-eval",
        description="Systematic backdoor data-poisoning experiments on image classifiers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for area in AREAS:
        module = importlib.import_module(f"backdoor_eval.cli.{area}")
        module.register(sub)
    return parser


def check_outputs(args: argparse.Namespace) -> None:
    """Before any work: every file the command is to write (``--out``, ``--out-*``, ``--checkpoint``)
    can be written, so a bad path fails at once, naming it, and not after a phase has trained."""
    from backdoor_eval.io import check_writable

    for dest, value in vars(args).items():
        if value is not None and (dest in ("out", "checkpoint") or dest.startswith("out_")):
            check_writable(value, "--" + dest.replace("_", "-"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        check_outputs(args)
        result = args.func(args)
    except LockHeldError as exc:
        # The same work runs in another process (e.g. the orphan of a killed Snakemake): who, and what to do.
        print(f"backdoor-eval {args.command}: error: {exc}", file=sys.stderr)
        return os.EX_TEMPFAIL  # 75: try again once that process is gone
    except (ValueError, KeyError, FileNotFoundError) as exc:
        # Bad input: one clear line naming the bad value, no traceback.
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"backdoor-eval {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A path that cannot be read or written (a folder where a file should be, no permission,
        # a full disk): name the file and the reason.
        where = exc.filename if exc.filename is not None else "(a file)"
        print(f"backdoor-eval {args.command}: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

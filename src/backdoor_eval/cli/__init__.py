"""The ``backdoor-eval`` command line: the one entry point Snakemake rules call.

Each area registers its own subcommands (``cli/fetch.py``, ``cli/data.py``, ``cli/attack.py``,
``cli/engine.py``, ``cli/report.py``, ``cli/workflow.py``, ``cli/analyze.py``); each handler,
``cmd_<command>``, parses its arguments and calls the package, which writes
every file atomically to the paths the arguments name. Before any handler
runs, ``main`` checks that every output path can be written
(:func:`check_outputs`), and prints bad input as one line, exit status 2.

Bad input is the project's own: a ``ValueError`` or ``FileNotFoundError``
raised by this package's code, whose message names the bad value and what
is allowed (:func:`is_bad_input`). Anything else (a ``KeyError``, or a
``ValueError`` raised inside a library) is a bug, shown with its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

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


PACKAGE_DIR = Path(__file__).resolve().parents[1]


def is_bad_input(exc: BaseException) -> bool:
    """Whether ``exc`` is the project's own bad-input error: a ``ValueError`` or ``FileNotFoundError`` that
    this package's code raised (its innermost frame is in the package), not one a library raised."""
    if not isinstance(exc, (ValueError, FileNotFoundError)):
        return False
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and Path(frame.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


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
    except Exception as exc:  # noqa: BLE001 - sorted below; what is not bad input is raised again
        return report_error(args.command, exc)
    return int(result or 0)


def report_error(command: str, exc: Exception) -> int:
    """The exit status of a command that raised ``exc``, after one line on stderr; a bug is raised again."""
    if isinstance(exc, LockHeldError):
        # The same work runs in another process (e.g. the orphan of a killed Snakemake): who, and what to do.
        print(f"backdoor-eval {command}: error: {exc}", file=sys.stderr)
        return os.EX_TEMPFAIL  # 75: try again once that process is gone
    if is_bad_input(exc):
        # Bad input: one clear line naming the bad value, no traceback.
        print(f"backdoor-eval {command}: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, OSError):
        # A path that cannot be read or written (a folder where a file should be, no permission,
        # a full disk): name the file and the reason.
        where = exc.filename if exc.filename is not None else "(a file)"
        print(f"backdoor-eval {command}: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    raise exc  # a bug, not bad input: the traceback says where


if __name__ == "__main__":
    sys.exit(main())

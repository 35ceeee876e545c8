"""The CLI's error contract: the project's bad input is one line and exit 2; anything else is a bug, with its traceback."""

from __future__ import annotations

import json

import pytest

from backdoor_eval import cli
from backdoor_eval.cli import main


def failing_with(exc_factory):
    def handler(args):
        exc_factory()

    return handler


def run_poison_stats(monkeypatch, handler):
    monkeypatch.setattr("backdoor_eval.cli.attack.cmd_poison_stats", handler)
    return main(["poison-stats", "--class-counts", "10,10", "--rate", "0.1"])


def test_bad_input_from_the_package_is_one_line_and_exit_2(capsys):
    assert main(["poison-stats", "--class-counts", "10,x", "--rate", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("backdoor-eval poison-stats: error: --class-counts '10,x'; allowed:")
    assert "Traceback" not in err and err.count("\n") == 1


def test_a_key_error_is_a_bug_shown_with_its_traceback(monkeypatch):
    with pytest.raises(KeyError, match="lost"):
        run_poison_stats(monkeypatch, failing_with(lambda: {}["lost"]))


def test_a_value_error_raised_inside_a_library_is_a_bug_too(monkeypatch):
    with pytest.raises(json.JSONDecodeError):
        run_poison_stats(monkeypatch, failing_with(lambda: json.loads("{")))
    assert not cli.is_bad_input(ValueError("made here, never raised"))


def test_an_unreadable_path_names_the_file(monkeypatch, capsys, tmp_path):
    def handler(args):
        open(tmp_path / "missing" / "file.txt")  # noqa: SIM115

    assert run_poison_stats(monkeypatch, handler) == 2
    assert f"{tmp_path / 'missing' / 'file.txt'}" in capsys.readouterr().err

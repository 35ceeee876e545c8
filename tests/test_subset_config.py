"""Tests for benchmarks/subset_config.py: a config cut to some experiments keeps their runs and ids."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from backdoor_eval import experiments as ex
from backdoor_eval.config import load_config

REPO = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("subset_config", REPO / "benchmarks" / "subset_config.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


subset_config = _load()


def test_subset_keeps_runs_ids_and_outputs_of_kept_experiments(tmp_path):
    source = REPO / "config" / "real-cifar10-pretrained.yaml"
    out = tmp_path / "subset.yaml"
    assert subset_config.main([str(source), "E1", "E1R", "--out", str(out)]) == 0
    full, cut = load_config(source), load_config(out)
    assert list(cut["experiments"]) == ["E1", "E1R"]
    assert cut["name"] == full["name"]
    # outputs naming a dropped experiment (retraining_budget: F) go; those of kept ones stay
    assert cut["outputs"] == {"table2": "E1+E1R", "table3": "E1+E1R"}
    full_runs, cut_runs = ex.expand(full), ex.expand(cut)
    for name in ("E1", "E1R"):
        assert [r.run_id for r in cut_runs[name]] == [r.run_id for r in full_runs[name]]
    assert set(yaml.safe_load(out.read_text())) == set(yaml.safe_load(source.read_text()))


def test_subset_unknown_experiment_is_named(tmp_path):
    with pytest.raises(SystemExit, match=r"\['E9'\] are not in the config; allowed: \['E1', 'E1R', 'F', 'L'\]"):
        subset_config.main([str(REPO / "config" / "real-cifar10-pretrained.yaml"), "E9", "--out", str(tmp_path / "x")])

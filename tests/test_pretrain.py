"""Pretraining (backdoor_eval.pretrain): the config block, the pretrain job's outputs, a model started from
its file, offline use, and the workflow ordering the pretrain job before the train jobs that read it."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from backdoor_eval import offline, pretrain
from backdoor_eval.cli import main as cli
from backdoor_eval.config import prepare_config
from backdoor_eval.models import create_model
from model_fixtures import one_thread  # noqa: F401  (autouse fixture)
from run_inputs import poisoned_synthetic_run
from test_workflow import job_counts, snakemake

SYNTHETIC = {"num_classes": 3, "per_class": 40, "size": 16, "seed": 0}
TRAIN = {"lr": 3.0e-3, "batch_size": 32, "max_epochs": 2, "patience": 1, "checkpoint_every_s": 0}


def regime_config() -> dict:
    """A grid on one synthetic set, its models from scratch and from a pretraining on another."""
    classes = ["class0", "class1", "class2"]
    return {
        "name": "pretrained",
        "device": "cpu",
        "split": "shared",
        "datasets": {
            "synthetic": {"kind": "synthetic", "params": dict(SYNTHETIC), "classes": classes},
            "synthetic_pre": {
                "kind": "synthetic",
                "params": {**SYNTHETIC, "seed": 1, "per_class": 60},
                "classes": classes,
            },
        },
        "pretraining": {
            "pre": {"dataset": "synthetic_pre", "arch": "small_cnn", "params": {"width": 4}, "train": dict(TRAIN)}
        },
        "models": {
            "scratch": {"arch": "small_cnn", "params": {"width": 4}},
            "warm": {"arch": "small_cnn", "params": {"width": 4}, "init": "pre"},
        },
        "train": {**TRAIN, "retrain_epochs": 1},
        "triggers": {"bs": {"alpha": 1.0}},
        "experiments": {
            "E1": {
                "dataset": "synthetic",
                "model": ["scratch", "warm"],
                "trigger": "bs",
                "poison_class": "class0",
                "poison_rate": 0.3,
                "retrain": True,
            }
        },
        "outputs": {"table2": "E1", "table3": "E1"},
    }


def prepared(config: dict) -> dict:
    return prepare_config(copy.deepcopy(config), check_registries=True)


# ------------------------------------------------------------------ the config block


def test_the_file_name_carries_the_pretrainings_fingerprint():
    config = prepared(regime_config())
    path = pretrain.pretraining_file(config, "pre")
    assert re.fullmatch(r"resources/weights/pretrained/pre-[0-9a-f]{12}\.safetensors", path)
    assert pretrain.manifest_file(path) == path.removesuffix(".safetensors") + ".json"
    assert pretrain.model_weights(config, "warm") == (path, None)
    assert pretrain.model_weights(config, "scratch") == (None, None)
    # Whatever determines the weights changes the file: training settings, seed, the dataset's images.
    for key, value in (("train", {**TRAIN, "lr": 1.0e-3}), ("seed", 1), ("holdout", 0.2), ("params", {"width": 8})):
        changed = regime_config()
        changed["pretraining"]["pre"][key] = value
        if key == "params":
            changed["models"]["warm"]["params"] = value
        assert pretrain.pretraining_file(prepared(changed), "pre") != path, key
    changed = regime_config()
    changed["datasets"]["synthetic_pre"]["params"]["seed"] = 2
    assert pretrain.pretraining_file(prepared(changed), "pre") != path
    # ... and what does not, does not: the grid's own training settings, the model's name.
    changed = regime_config()
    changed["train"]["lr"] = 1.0e-5
    assert pretrain.pretraining_file(prepared(changed), "pre") == path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda c: c["models"]["warm"].update(init="nope"),
            r"models\.warm\.init: 'nope' is not declared in config pretraining; declared: pre",
        ),
        (
            lambda c: c["pretraining"]["pre"].update(dataset="cifar"),
            r"pretraining\.pre\.dataset: 'cifar' is not declared in config datasets",
        ),
        (
            lambda c: c["models"]["warm"].update(pretrained=True),
            r"models\.warm\.init: a model starts from one source of weights",
        ),
        (
            lambda c: c["models"]["warm"].update(arch="resnet50", params={}),
            r"models\.warm\.arch: 'resnet50' cannot start from pretraining 'pre', which trains 'small_cnn'",
        ),
        (
            lambda c: c["models"]["warm"]["params"].update(width=8),
            r"models\.warm\.params\.width: 8 differs from pretraining\.pre\.params\.width \(4\)",
        ),
        (
            lambda c: c["pretraining"]["pre"].update(arch="no_such_net"),
            r"pretraining\.pre\.arch: 'no_such_net' is not registered",
        ),
        (
            lambda c: c["pretraining"]["pre"]["train"].update(optimizer="lion"),
            r"pretraining\.pre\.train\.optimizer: unknown optimizer 'lion'",
        ),
        (lambda c: c["pretraining"]["pre"].update(holdout=1.5), r"pretraining\.pre\.holdout"),
        (lambda c: c["pretraining"]["pre"].update(epochs=3), r"pretraining\.pre.*epochs"),
    ],
)
def test_a_bad_pretraining_entry_is_named(mutate, message):
    config = regime_config()
    mutate(config)
    with pytest.raises(ValueError, match=message):
        prepared(config)


def test_a_bad_pretraining_entry_stops_the_dry_run_naming_the_key(tmp_path):
    config = regime_config()
    config["models"]["warm"]["init"] = "nope"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("--configfile", str(path), "-n", workdir=tmp_path)
    assert result.returncode != 0
    assert "models.warm.init: 'nope' is not declared in config pretraining" in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()


def test_the_holdout_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    train, holdout = pretrain.holdout_split(labels, 0.1, seed=0)
    assert np.bincount(labels[holdout]).tolist() == [5, 3, 2]
    assert np.intersect1d(train, holdout).size == 0 and len(train) + len(holdout) == len(labels)
    again, other = pretrain.holdout_split(labels, 0.1, seed=0)[1], pretrain.holdout_split(labels, 0.1, seed=1)[1]
    assert np.array_equal(holdout, again) and not np.array_equal(holdout, other)


# ------------------------------------------------------------------ the job


def pretrain_cli(root: Path, store: Path, *extra: str) -> list[str]:
    return [
        "pretrain",
        "--name",
        "pre",
        "--store",
        str(store),
        "--model",
        "small_cnn",
        "--model-params",
        json.dumps({"width": 4}),
        "--train-params",
        json.dumps(TRAIN),
        "--holdout",
        "0.2",
        "--out-weights",
        str(root / "pre.safetensors"),
        "--out-manifest",
        str(root / "pre.json"),
        *extra,
    ]


@pytest.fixture
def pretrained_file(tmp_path):
    """A pretraining on a synthetic store through the CLI, with its checkpoint; returns (root, store)."""
    root, store, _, _ = poisoned_synthetic_run(tmp_path, SYNTHETIC)
    assert cli(pretrain_cli(root, store, "--checkpoint", str(root / "ckpt" / "pre.pt"))) == 0
    return root, store


def test_the_pretrain_job_writes_the_backbone_and_its_manifest(pretrained_file):
    root, store = pretrained_file
    manifest = json.loads((root / "pre.json").read_text())
    stored = json.loads((store / "manifest.json").read_text())
    assert manifest["store_sha256"] == stored["sha256"]
    assert manifest["num_train_images"] + manifest["num_holdout_images"] == 120
    assert manifest["num_holdout_images"] == 24  # 20% of each class of 40
    assert [row["epoch"] for row in manifest["history"]] == [0, 1, 2]
    assert manifest["best_epoch"] in (1, 2)  # the untrained epoch 0 is never kept
    best = next(row for row in manifest["history"] if row["epoch"] == manifest["best_epoch"])
    assert manifest["holdout_accuracy"] == best["holdout_accuracy"]
    assert manifest["train_params"]["lr"] == TRAIN["lr"] and manifest["train_params"]["max_epochs"] == 2
    tensors = load_file(str(root / "pre.safetensors"))
    assert not any(name.startswith("fc.") for name in tensors)  # the classifier is left out
    assert manifest["tensors"] == len(tensors)
    assert not (root / "ckpt" / "pre.pt").exists()  # the finished job's checkpoint is gone


def test_a_model_started_from_the_file_has_its_backbone_and_a_new_head(pretrained_file):
    root, _ = pretrained_file
    tensors = load_file(str(root / "pre.safetensors"))
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=5, pretrained=True, weights=str(root / "pre.safetensors"), width=4)
    state = model.backbone.state_dict()
    for name, tensor in tensors.items():
        assert torch.equal(state[name], tensor), name
    assert model.head.out_features == 5  # a new head, of the grid's classes
    torch.manual_seed(0)
    scratch = create_model("small_cnn", num_classes=5, pretrained=False, width=4)
    assert torch.equal(model.head.weight, scratch.head.weight)  # drawn as a fresh model's head
    assert not torch.equal(state["stem.0.weight"], scratch.backbone.state_dict()["stem.0.weight"])


def test_pretraining_resumes_from_its_checkpoint_bit_identically(tmp_path, monkeypatch):
    from backdoor_eval import train as engine

    root, store, _, _ = poisoned_synthetic_run(tmp_path, SYNTHETIC)
    whole, killed = root / "whole", root / "killed"
    whole.mkdir(), killed.mkdir()
    assert cli(pretrain_cli(whole, store)) == 0
    # Killed during its second epoch: the checkpoint of epoch 1 stays, no output is written.
    real_epoch, calls = engine.Engine.train_epoch, []

    def dies_in_epoch_two(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed (test)")
        return real_epoch(self, *args, **kwargs)

    checkpoint = killed / "pre.pt"
    monkeypatch.setattr(engine.Engine, "train_epoch", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        cli(pretrain_cli(killed, store, "--checkpoint", str(checkpoint)))
    assert checkpoint.is_file() and not (killed / "pre.safetensors").exists()
    monkeypatch.setattr(engine.Engine, "train_epoch", real_epoch)
    assert cli(pretrain_cli(killed, store, "--checkpoint", str(checkpoint))) == 0
    a, b = load_file(str(whole / "pre.safetensors")), load_file(str(killed / "pre.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history = json.loads((killed / "pre.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [0, 1, 2]


def test_a_train_job_reads_the_pretrained_file_offline(pretrained_file, monkeypatch):
    root, store = pretrained_file
    for name, value in offline.OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)
    parts, poisoned = root / "partitions.npz", root / "poisoned"
    out = root / "run"
    args = ["train", "--store", str(store), "--partitions", str(parts), "--poisoned", str(poisoned)]
    args += ["--model", "small_cnn", "--model-params"]
    args += [json.dumps({"width": 4, "pretrained": True, "weights": str(root / "pre.safetensors")})]
    args += ["--train-params", json.dumps({**TRAIN, "max_epochs": 1}), "--seed", "0"]
    args += ["--out-model", str(out / "model.pt"), "--out-epochs", str(out / "epochs.parquet")]
    args += ["--out-final", str(out / "final.json")]
    assert cli(args) == 0
    saved = torch.load(out / "model.pt", weights_only=True)
    # the poison phase started from the file: epoch 0 (before any update) has the pretrained backbone
    assert json.loads((out / "final.json").read_text())["epochs_run"] == 1
    assert saved["model_params"] == {"width": 4}


# ------------------------------------------------------------------ the workflow


def test_the_dry_run_orders_the_pretrain_job_before_the_train_jobs_that_read_its_file(tmp_path):
    path = tmp_path / "regime.yaml"
    path.write_text(yaml.safe_dump(regime_config()))
    result = snakemake("--configfile", str(path), "-n", "-p", workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert counts["pretrain"] == 1 and counts["train"] == 2 and counts["ingest"] == 2
    weights = pretrain.pretraining_file(prepared(regime_config()), "pre")
    # The warm model's train job lists the file as an input and loads it; the scratch one does not.
    blocks = result.stdout.split("\n\n")
    train = {m.group(1): b for b in blocks if (m := re.search(r"rule train:.*?wildcards:.*?run=\w+/(\w+)/", b, re.S))}
    assert weights in train["warm"] and f'"weights": "{weights}"' in train["warm"]
    assert weights not in train["scratch"]
    pretrain_block = next(b for b in blocks if "rule pretrain:" in b)
    assert "data/synthetic_pre/store" in pretrain_block and weights in pretrain_block
    # The DAG: the pretrain job comes before the warm model's train job.
    dag = snakemake("--configfile", str(path), "--dag", workdir=tmp_path)
    assert dag.returncode == 0, dag.stderr[-3000:]
    labels = dict(re.findall(r'\t(\d+)\[label = "([^"\\]+)', dag.stdout))
    edges = re.findall(r"\t(\d+) -> (\d+)", dag.stdout)
    assert any(labels[a] == "pretrain" and labels[b] == "train" for a, b in edges)


@pytest.mark.slow
def test_the_workflow_pretrains_once_and_a_changed_pretraining_retrains_its_models(tmp_path):
    import pandas as pd

    config = regime_config()
    config["outputs"] = {}  # runs this small may keep their untrained epoch 0, which tables leave out
    path = tmp_path / "regime.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("--configfile", str(path), "--cores", "2", workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = pd.read_parquet(tmp_path / "results" / "pretrained" / "runs.parquet")
    assert sorted(runs["model"].unique()) == ["scratch", "warm"]
    weights = tmp_path / pretrain.pretraining_file(prepared(regime_config()), "pre")
    assert weights.is_file() and Path(pretrain.manifest_file(str(weights))).is_file()
    # A changed pretraining: a new file, and the warm model's jobs (only they) run again.
    changed = copy.deepcopy(config)
    changed["pretraining"]["pre"]["seed"] = 1
    path.write_text(yaml.safe_dump(changed))
    again = snakemake("--configfile", str(path), "-n", workdir=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    counts = job_counts(again.stdout)
    assert counts["pretrain"] == 1 and counts["train"] == 1 and counts["retrain"] == 1

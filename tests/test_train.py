"""The training engine: early stopping, config validation, determinism, resume, and the paper in miniature."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from backdoor_eval import evaluate
from backdoor_eval import train as engine
from backdoor_eval.cli import main as cli
from engine_epochs import LOGITS_ATOL, LOSS_RTOL, initial_state, synthetic, train_epochs
from run_inputs import POISONED_SYNTHETIC_RUN_PARAMS, poisoned_synthetic_run

# --------------------------------------------------------------------------- unit


def scripted_stop_epoch(scores, patience):
    stopper = engine.EarlyStopping(patience)
    for epoch, score in enumerate(scores):
        stopper.update(epoch, score)
        if stopper.should_stop:
            return epoch, stopper.best_epoch
    return None, stopper.best_epoch


def test_early_stopping_stops_exactly_patience_epochs_after_best():
    scores = [0.1, 0.3, 0.5, 0.4, 0.5, 0.45, 0.49, 0.3, 0.9]
    stop, best = scripted_stop_epoch(scores, patience=5)
    assert best == 2
    assert stop == 7  # epochs 3..7 are the five without a strict improvement


def test_early_stopping_ties_are_not_improvements_and_a_late_best_resets():
    stop, best = scripted_stop_epoch([0.5, 0.5, 0.5, 0.5, 0.5, 0.5], patience=5)
    assert (stop, best) == (5, 0)
    stop, best = scripted_stop_epoch([0.1, 0.2, 0.1, 0.1, 0.3, 0.1, 0.1, 0.1, 0.1, 0.1], patience=5)
    assert (stop, best) == (9, 4)
    assert scripted_stop_epoch([0.1, 0.2, 0.3], patience=5) == (None, 2)


def test_train_config_defaults_are_the_papers_and_bad_values_are_named():
    cfg = engine.TrainConfig.from_dict({})
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.patience, cfg.retrain_epochs) == ("adam", 1e-5, 32, 5, 5)
    with pytest.raises(ValueError, match="'rmsprop'"):
        engine.TrainConfig.from_dict({"optimizer": "rmsprop"})
    with pytest.raises(ValueError, match="learning_rate"):
        engine.TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="batch_size=0"):
        engine.TrainConfig.from_dict({"batch_size": 0})
    assert set(engine.OPTIMIZERS.names()) >= {"adam", "adamw", "sgd"}


def test_batch_preparer_normalises_resizes_and_flips():
    cfg = engine.TrainConfig(input_size=8)
    prep = engine.BatchPreparer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), torch.device("cpu"), cfg)
    images = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    images[:, :, 0, :] = 255  # left column white
    x = prep(images, flip=torch.tensor([False, True]))
    assert x.shape == (2, 3, 8, 8)
    assert x[0, :, :, 0].min() > 0 and x[0, :, :, -1].max() < 0  # white left, black right, normalised
    assert x[1, :, :, -1].min() > 0 and x[1, :, :, 0].max() < 0  # flipped


# --------------------------------------------------------------------------- the step without host syncs


def per_step_sync_epoch():
    """The training step before the host-sync removal, as benchmarks/bench_train.py keeps it."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"
    spec = importlib.util.spec_from_file_location("bench_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.per_step_sync_epoch


@pytest.mark.parametrize(
    "regularizer,params,augment",
    [
        ("none", {}, "none"),
        ("none", {}, "flip"),
        ("mixup", {"weight": 0.5}, "flip"),
        ("mixup", {}, "none"),
        ("snnl", {}, "none"),
        ("contrastive", {}, "flip"),
    ],
)
def test_the_staged_training_step_is_bit_identical_to_the_per_step_sync_reference(regularizer, params, augment):
    """Order, flips and mixup draws made once per epoch and the loss summed on the device: on the CPU the
    same losses and weights, bit for bit, as the loop that drew and read them per step (65 images in batches
    of 16: the last batch, of one image, is skipped by both)."""
    data = synthetic(n=65)
    settings = dict(epochs=2, data=data, regularizer=regularizer, regularizer_params=params, augment=augment)
    staged = train_epochs("cpu", **settings)
    reference = train_epochs("cpu", epoch=per_step_sync_epoch(), **settings)
    assert staged.losses == reference.losses
    assert all(torch.equal(staged.state[name], reference.state[name]) for name in reference.state)


def test_fused_adam_agrees_with_the_default_adam():
    """fused_optimizer: one kernel per step instead of a loop over the parameters; the same arithmetic up to
    float32 rounding, within tests/engine_epochs.py's tolerances."""
    init = initial_state()
    default = train_epochs("cpu", epochs=2, init_state=init, regularizer="mixup")
    fused = train_epochs("cpu", epochs=2, init_state=init, regularizer="mixup", fused_optimizer=True)
    assert fused.losses == pytest.approx(default.losses, rel=LOSS_RTOL)
    assert float((fused.logits - default.logits).abs().max()) < LOGITS_ATOL


@pytest.mark.slow
def test_compiled_training_agrees_with_eager():
    """compile: torch.compile's kernels (inductor, C++ on the CPU) fuse and reorder float32 arithmetic;
    two epochs agree with eager within tests/engine_epochs.py's tolerances (about 2 minutes: compilation)."""
    init = initial_state()
    eager = train_epochs("cpu", epochs=2, init_state=init, regularizer="mixup")
    compiled = train_epochs("cpu", epochs=2, init_state=init, regularizer="mixup", compile=True)
    assert compiled.losses == pytest.approx(eager.losses, rel=LOSS_RTOL)
    assert float((compiled.logits - eager.logits).abs().max()) < LOGITS_ATOL


# --------------------------------------------------------------------------- end to end on the synthetic set

# From-scratch small CNN on the synthetic set: the paper's lr 1e-5 is for fine-tuning pretrained
# models; here 1e-3. The black square (3 px at 32 px) needs poison-rate 0.3 (55 images) to be
# learned by such a small network within ten CPU epochs (measured: ASR 0.9 by epoch 9).
TRAIN = {"lr": 1e-3, "batch_size": 64, "max_epochs": 10, "patience": 3, "retrain_epochs": 4, "eval_batch_size": 512}
MODEL_PARAMS = {"width": 8}


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory):
    """Ingest the synthetic dataset, partition it and poison it with BS (many-to-one, class 0)."""
    synthetic = {"num_classes": 10, "per_class": 300, "size": 32, "seed": 0}
    return poisoned_synthetic_run(tmp_path_factory.mktemp("engine"), synthetic)


def phase_args(run_inputs, phase, out, checkpoints=None, train=TRAIN, init=None, model="small_cnn"):
    """``train``/``retrain`` writing ``out``/{model.pt,epochs.parquet,final.json}; checkpoint ``checkpoints``/<phase>.pt;
    ``init`` is the poison phase's output folder (its model.pt)."""
    root, store, parts, poisoned = run_inputs
    args = [
        "train" if phase == "poison" else "retrain",
        "--store",
        str(store),
        "--partitions",
        str(parts),
        "--poisoned",
        str(poisoned),
        "--model",
        model,
        "--model-params",
        json.dumps(MODEL_PARAMS),
        "--train-params",
        json.dumps(train),
        "--seed",
        "0",
        "--out-model",
        str(out / "model.pt"),
        "--out-epochs",
        str(out / "epochs.parquet"),
        "--out-final",
        str(out / "final.json"),
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    if checkpoints is not None:
        args += ["--checkpoint", str(checkpoints / f"{phase}.pt")]
    if init is not None:
        args += ["--init-model", str(init / "model.pt")]
    return args


@pytest.fixture(scope="module")
def trained(run_inputs):
    root = run_inputs[0]
    poison_out, clean_out = root / "run" / "poison", root / "run" / "clean"
    assert cli(phase_args(run_inputs, "poison", poison_out, root / "ckpt")) == 0
    assert cli(phase_args(run_inputs, "clean", clean_out, root / "ckpt", init=poison_out)) == 0
    return poison_out, clean_out


@pytest.mark.slow
def test_paper_in_miniature_backdoor_learned_then_removed_by_clean_retraining(trained):
    poison_out, clean_out = trained
    poisoned = json.loads((poison_out / "final.json").read_text())
    clean = json.loads((clean_out / "final.json").read_text())
    # Clean accuracy well above chance (10 classes: 0.1).
    assert poisoned["clean_val_accuracy"] > 0.5
    assert clean["clean_val_accuracy"] > 0.5
    # The backdoor works: triggered images go to the poison class far more often than clean ones do.
    assert poisoned["adversarial_success_rate"] > 0.6
    assert poisoned["adversarial_success_rate"] > poisoned["poison_class_rate_clean"] + 0.4
    # Clean retraining clearly weakens it.
    assert clean["adversarial_success_rate"] < poisoned["adversarial_success_rate"] - 0.2
    # Outputs: per-epoch table with both the pre-training epoch 0 and one kept (best) epoch.
    history = pd.read_parquet(poison_out / "epochs.parquet")
    assert list(history["epoch"]) == list(range(len(history)))
    assert history["is_best"].sum() == 1
    assert int(history.loc[history["is_best"], "epoch"].iloc[0]) == poisoned["best_epoch"]
    best = history["poison_val_accuracy"].max()
    assert poisoned["poison_val_accuracy"] == pytest.approx(best)
    clean_history = pd.read_parquet(clean_out / "epochs.parquet")
    assert list(clean_history["epoch"]) == list(range(TRAIN["retrain_epochs"] + 1))
    # Epoch 0 of retraining evaluates the kept poisoned model, unchanged.
    assert clean_history["adversarial_success_rate"].iloc[0] == pytest.approx(poisoned["adversarial_success_rate"])
    # The checkpoints are gone once the phase is done.
    ckpt = poison_out.parent.parent / "ckpt"
    assert not (ckpt / "poison.pt").exists() and not (ckpt / "clean.pt").exists()
    assert not any(ckpt.glob("*.pt"))


@pytest.mark.slow
def test_summarize_builds_the_tidy_summary(trained, tmp_path):
    poison_out, clean_out = trained
    params = dict(POISONED_SYNTHETIC_RUN_PARAMS)
    out, out_epochs = tmp_path / "summary.parquet", tmp_path / "epochs.parquet"
    poison_files = [
        "--poison-final",
        str(poison_out / "final.json"),
        "--poison-epochs",
        str(poison_out / "epochs.parquet"),
    ]
    clean_files = ["--clean-final", str(clean_out / "final.json"), "--clean-epochs", str(clean_out / "epochs.parquet")]
    outputs = ["--run-params", json.dumps(params), "--out-summary", str(out), "--out-epochs", str(out_epochs)]
    assert cli(["summarize", *poison_files, *clean_files[:2], *outputs]) == 2  # clean final without its epochs
    assert not out.exists() and not out_epochs.exists()
    assert cli(["summarize", *poison_files, *clean_files, *outputs]) == 0
    summary = pd.read_parquet(out)
    epochs = pd.read_parquet(out_epochs)
    assert list(summary["phase"]) == ["poison", "clean"]
    final = json.loads((poison_out / "final.json").read_text())
    assert summary.loc[0, "adversarial_success_rate"] == pytest.approx(final["adversarial_success_rate"])
    assert (summary["run_id"] == params["run_id"]).all()
    assert len(epochs) == len(pd.read_parquet(poison_out / "epochs.parquet")) + TRAIN["retrain_epochs"] + 1
    assert set(epochs["model"]) == {"small_cnn"}


@pytest.mark.parametrize("every,saved", [(0, [0, 1, 2, 3]), (1e6, [3])])
def test_checkpoints_are_written_by_elapsed_time_and_after_the_last_epoch(
    run_inputs, tmp_path, monkeypatch, every, saved
):
    """checkpoint_every_s 0: after every epoch (epoch 0 is the evaluation before any update); an interval
    longer than the phase: once, after its last epoch."""
    epochs = []
    write = engine._save_checkpoint
    monkeypatch.setattr(
        engine, "_save_checkpoint", lambda path, state: (epochs.append(state["epoch"]), write(path, state))
    )
    train = dict(TRAIN, max_epochs=3, patience=3, checkpoint_every_s=every)
    assert cli(phase_args(run_inputs, "poison", tmp_path / "out", tmp_path / "ckpt", train=train)) == 0
    assert epochs == saved
    assert not (tmp_path / "ckpt" / "poison.pt").exists()  # deleted once the outputs are written


def test_a_checkpoint_is_resumed_whatever_the_checkpoint_interval():
    """The interval changes when a phase saves, not what it computes: it is not part of the fingerprint."""
    settings = engine.result_settings(engine.TrainConfig(checkpoint_every_s=5))
    assert settings == engine.result_settings(engine.TrainConfig(checkpoint_every_s=600))
    assert "checkpoint_every_s" not in settings and settings["lr"] == 1e-5


@pytest.mark.slow
def test_same_seed_same_metrics_and_kill_then_resume_matches(run_inputs, trained, tmp_path):
    """Kill a run mid-training (SIGKILL), start it again: same final metrics as uninterrupted."""
    poison_out, _ = trained
    reference_history = pd.read_parquet(poison_out / "epochs.parquet")
    # No early stop: the run is long enough to kill mid-way; a checkpoint after every epoch.
    train = dict(TRAIN, patience=100, checkpoint_every_s=0)
    out, ckpt = tmp_path / "poison", tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "backdoor_eval.cli", *phase_args(run_inputs, "poison", out, ckpt, train=train)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = ckpt / "poison.pt"
    deadline = time.time() + 120
    while time.time() < deadline:
        if checkpoint.exists() and torch.load(checkpoint, weights_only=False)["epoch"] >= 2:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(checkpoint, weights_only=False)["epoch"]
    assert 2 <= killed_at < train["max_epochs"], "the run was not interrupted mid-training"
    assert not (out / "final.json").exists()

    assert subprocess.run(cmd, capture_output=True).returncode == 0
    resumed = json.loads((out / "final.json").read_text())
    assert resumed["resumed_from_epoch"] == killed_at + 1

    fresh_out = tmp_path / "fresh"
    assert cli(phase_args(run_inputs, "poison", fresh_out, tmp_path / "ckpt2", train=train)) == 0
    fresh = json.loads((fresh_out / "final.json").read_text())
    for metric in engine.METRIC_COLUMNS:
        assert resumed[metric] == fresh[metric] or (np.isnan(resumed[metric]) and np.isnan(fresh[metric]))
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "epochs.parquet").drop(columns="seconds"),
        pd.read_parquet(fresh_out / "epochs.parquet").drop(columns="seconds"),
    )
    # Same seed, same settings: the early-stopped reference run reproduces the fresh run's first epochs.
    common = reference_history["epoch"].max()
    fresh_history = pd.read_parquet(fresh_out / "epochs.parquet")
    pd.testing.assert_frame_equal(
        reference_history.drop(columns=["seconds", "is_best"]),
        fresh_history[fresh_history["epoch"] <= common].drop(columns=["seconds", "is_best"]),
    )


def test_bad_training_option_is_a_clear_cli_error(run_inputs, tmp_path, capsys):
    args = phase_args(run_inputs, "poison", tmp_path / "out", train={"optimizer": "rmsprop"})
    assert cli(args) == 2
    assert "'rmsprop'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "final.json").exists()


def test_a_diverged_run_fails_naming_run_phase_epoch_and_setting_and_keeps_the_last_good_checkpoint(
    run_inputs, tmp_path, capsys
):
    # A huge learning rate makes the loss overflow within a few epochs.
    train = dict(TRAIN, lr=1e30, max_epochs=6, patience=10, checkpoint_every_s=0)
    out, ckpt = tmp_path / "run" / "poison", tmp_path / "ckpt"
    assert cli(phase_args(run_inputs, "poison", out, ckpt, train=train)) == 2
    err = capsys.readouterr().err
    match = re.search(
        r"run .*run: training diverged in the poison phase at epoch (\d+): .*lower the learning rate \(now 1e\+30: train\.lr",
        err,
    )
    assert match, err
    assert not (out / "final.json").exists() and not (out / "model.pt").exists()
    diverged_at = int(match.group(1))
    if diverged_at > 1:  # the checkpoint holds the last good epoch, every weight finite
        state = torch.load(ckpt / "poison.pt", weights_only=True)
        assert state["epoch"] == diverged_at - 1
        assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


class _Payload:
    """A pickle that would run code when loaded without weights_only."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_model_and_checkpoint_files_never_run_code(run_inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad" / "model.pt"
    bad.parent.mkdir()
    torch.save({"model": "small_cnn", "state_dict": _Payload()}, bad)
    args = phase_args(run_inputs, "clean", tmp_path / "out", tmp_path / "ckpt", init=bad.parent)
    assert cli(args) == 2
    assert "is not a model file this workflow wrote" in capsys.readouterr().err
    assert not (tmp_path / "PWNED").exists()
    # A crafted checkpoint is refused (and the phase starts afresh), never executed.
    (tmp_path / "ckpt").mkdir(exist_ok=True)
    torch.save({"fingerprint": "x", "epoch": 0, "model": _Payload()}, tmp_path / "ckpt" / "poison.pt")
    from backdoor_eval.train import _load_checkpoint

    assert _load_checkpoint(tmp_path / "ckpt" / "poison.pt", "x") is None
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--threads", "0", "argument --threads: 0 is not allowed; allowed: a whole number >= 1"),
        ("--threads", "-2", "argument --threads: -2 is not allowed; allowed: a whole number >= 1"),
        ("--seed", "-5", "argument --seed: -5 is not allowed; allowed: a whole number >= 0"),
    ],
    ids=["threads-0", "threads-negative", "seed-negative"],
)
def test_bad_threads_and_seeds_are_named_by_the_parser(run_inputs, tmp_path, capsys, option, value, message):
    args = phase_args(run_inputs, "poison", tmp_path / "out")
    with pytest.raises(SystemExit) as exit_info:
        cli([*args, option, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--out-model", "--out-epochs", "--out-final", "--checkpoint"])
def test_an_output_under_an_existing_file_fails_before_any_training(run_inputs, tmp_path, capsys, option):
    (tmp_path / "taken").write_text("a file, not a folder")
    ckpt = tmp_path / "ckpt"
    args = phase_args(run_inputs, "poison", tmp_path / "out", ckpt, train=dict(TRAIN, max_epochs=1))
    bad = tmp_path / "taken" / "poison" / "file"
    args[args.index(option) + 1] = str(bad)
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert f"error: {option} {bad} cannot be written: {tmp_path / 'taken'} is a file, not a folder" in err, err
    # Nothing trained: no epoch was checkpointed and no output written.
    assert not (ckpt / "poison.pt").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("target", "damage", "what", "rule"),
    [
        ("partitions", "garbage", "partitions file", "partition"),
        ("partitions", "truncate", "partitions file", "partition"),
        ("overlay", "garbage", "poison overlay", "poison"),
        ("overlay", "truncate", "poison overlay", "poison"),
        ("manifest", "garbage", "poison manifest", "poison"),
        ("images", "truncate", "store image array", "ingest"),
        ("store_manifest", "garbage", "store manifest", "ingest"),
    ],
)
def test_a_corrupt_input_file_is_named_with_how_to_rebuild_it(run_inputs, tmp_path, capsys, target, damage, what, rule):
    import shutil

    root, store, parts, poisoned = run_inputs
    copies = {"store": tmp_path / "store", "parts": tmp_path / "partitions.npz", "poisoned": tmp_path / "poisoned"}
    shutil.copytree(store, copies["store"])
    shutil.copy(parts, copies["parts"])
    shutil.copytree(poisoned, copies["poisoned"])
    path = {
        "partitions": copies["parts"],
        "overlay": copies["poisoned"] / "overlay.npz",
        "manifest": copies["poisoned"] / "manifest.json",
        "images": copies["store"] / "images.npy",
        "store_manifest": copies["store"] / "manifest.json",
    }[target]
    if damage == "garbage":
        path.write_bytes(b"\x00not what it should be\xff" * 10)
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    args = phase_args((root, copies["store"], copies["parts"], copies["poisoned"]), "poison", tmp_path / "out")
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert f"{path} is not a readable {what}" in err and f"--forcerun {rule}" in err, err


@pytest.mark.slow
def test_a_phase_holds_its_lock_from_resume_to_checkpoint_deletion_then_frees_it(run_inputs, tmp_path, monkeypatch):
    """The lock beside the checkpoint is held while the phase trains, writes its outputs and deletes its
    checkpoint, and is free after; only the empty lock file stays."""
    import pathlib

    from backdoor_eval import io, locks

    out, ckpt = tmp_path / "run" / "poison", tmp_path / "ckpt"
    lock_file = ckpt / "poison.pt.lock"
    held = []
    run, write_json, unlink = engine.Engine.run_phase, io.write_json, pathlib.Path.unlink

    def spy_run_phase(self, *args, **kwargs):
        held.append(("train", locks.is_held(lock_file), locks.read_holder(lock_file)["pid"]))
        return run(self, *args, **kwargs)

    def spy_write_json(path, obj):
        if path == out / "final.json":
            held.append(("final.json", locks.is_held(lock_file)))
        write_json(path, obj)

    def spy_unlink(path, *args, **kwargs):
        if path == ckpt / "poison.pt":
            held.append(("delete checkpoint", locks.is_held(lock_file)))
        unlink(path, *args, **kwargs)

    monkeypatch.setattr(engine.Engine, "run_phase", spy_run_phase)
    monkeypatch.setattr(io, "write_json", spy_write_json)
    monkeypatch.setattr(pathlib.Path, "unlink", spy_unlink)
    assert cli(phase_args(run_inputs, "poison", out, ckpt, train=dict(TRAIN, max_epochs=1))) == 0
    assert held == [("train", True, os.getpid()), ("final.json", True), ("delete checkpoint", True)]
    assert (out / "final.json").is_file() and not (ckpt / "poison.pt").exists()
    assert not locks.is_held(lock_file) and locks.read_holder(lock_file) is None
    assert sorted(p.name for p in ckpt.iterdir()) == ["poison.pt.lock"]
    assert lock_file.stat().st_size == 0


def test_an_edited_store_label_array_is_named_before_training(run_inputs, tmp_path, capsys):
    import shutil

    root, store, parts, poisoned = run_inputs
    shutil.copytree(store, tmp_path / "store")
    labels = np.load(tmp_path / "store" / "labels.npy")
    np.save(tmp_path / "store" / "labels.npy", np.roll(labels, 1))  # same shape, dtype and classes
    ckpt = tmp_path / "ckpt"
    args = phase_args((root, tmp_path / "store", parts, poisoned), "poison", tmp_path / "out", ckpt)
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert f"store {tmp_path / 'store'} is inconsistent: sha256 of labels.npy is " in err, err
    assert "--forcerun ingest" in err
    assert not (ckpt / "poison.pt").exists() and not (tmp_path / "out").exists()


def save_model_file(path, model="small_cnn", state_dict=None):
    """A ``model.pt`` as the train job writes it (see ``phase.run_phase``)."""
    from backdoor_eval.models import create_model

    if state_dict is None:
        state_dict = create_model("small_cnn", num_classes=10, **MODEL_PARAMS).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "model_params": MODEL_PARAMS, "num_classes": 10, "state_dict": state_dict}, path)


def test_a_diverged_clean_phase_fails_naming_the_clean_phase_and_writes_nothing(run_inputs, tmp_path, capsys):
    poison_out = tmp_path / "run" / "poison"
    assert cli(phase_args(run_inputs, "poison", poison_out, train=dict(TRAIN, max_epochs=1))) == 0
    capsys.readouterr()
    # Retraining with a huge learning rate: the poisoned model's epoch 0 is finite, the first update is not.
    train = dict(TRAIN, retrain_lr=1e30, retrain_epochs=3, checkpoint_every_s=0)
    out, ckpt = tmp_path / "run" / "clean", tmp_path / "ckpt"
    assert cli(phase_args(run_inputs, "clean", out, ckpt, train=train, init=poison_out)) == 2
    err = capsys.readouterr().err
    match = re.search(
        r"run .*run: training diverged in the clean phase at epoch (\d+): .*"
        r"lower the learning rate \(now 1e\+30: train\.lr, or train\.retrain_lr for the clean phase\)",
        err,
    )
    assert match, err
    assert not out.exists()  # no model.pt, epochs.parquet or final.json: no row for this run
    state = torch.load(ckpt / "clean.pt", weights_only=True)  # the last good epoch, every weight finite
    assert state["epoch"] == int(match.group(1)) - 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_an_init_model_of_another_model_is_named(run_inputs, tmp_path, capsys):
    save_model_file(tmp_path / "poison" / "model.pt", model="resnet18")
    args = phase_args(run_inputs, "clean", tmp_path / "clean", init=tmp_path / "poison")
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert f"--init-model {tmp_path / 'poison' / 'model.pt'} holds a 'resnet18' model, not 'small_cnn'" in err
    assert not (tmp_path / "clean").exists()


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_an_unusable_checkpoint_is_a_warning_and_the_phase_starts_afresh(run_inputs, tmp_path, caplog, damage):
    poison_out = tmp_path / "poison"
    save_model_file(poison_out / "model.pt")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    state = {"fingerprint": "settings of another run", "epoch": 2, "model": {"w": torch.zeros(3)}}
    torch.save(state, ckpt / "clean.pt")
    if damage == "truncated":
        data = (ckpt / "clean.pt").read_bytes()
        (ckpt / "clean.pt").write_bytes(data[: len(data) // 2])
    out = tmp_path / "clean"
    train = dict(TRAIN, retrain_epochs=1)
    with caplog.at_level("WARNING", logger="backdoor_eval.train"):
        assert cli(phase_args(run_inputs, "clean", out, ckpt, train=train, init=poison_out)) == 0
    expected = "ignoring unreadable checkpoint" if damage == "truncated" else "belongs to other settings"
    assert any(
        expected in record.getMessage() and str(ckpt / "clean.pt") in record.getMessage() for record in caplog.records
    )
    final = json.loads((out / "final.json").read_text())
    assert final["resumed_from_epoch"] is None and final["epochs_run"] == 1
    assert not (ckpt / "clean.pt").exists()  # the phase finished: its checkpoint is gone


def test_device_cuda_without_a_gpu_is_named(run_inputs, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    args = phase_args(run_inputs, "poison", tmp_path / "out")
    args[args.index("--device") + 1] = "cuda"
    assert cli(args) == 2
    assert "device 'cuda' was asked for but no CUDA device is visible" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- reliability, second round


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    """A tiny synthetic set (3 classes of 40 images of 8 px), poisoned: a run on it trains in a second."""
    synthetic = {"num_classes": 3, "per_class": 40, "size": 8, "seed": 0}
    return poisoned_synthetic_run(tmp_path_factory.mktemp("tiny"), synthetic)


def tiny_args(inputs, out, train, **kwargs):
    args = phase_args(inputs, "poison", out, train=train, **kwargs)
    args[args.index("--model-params") + 1] = json.dumps({"width": 4})
    return args


def test_a_never_improving_run_is_flagged_untrained_and_left_out_of_the_tables(
    tiny_inputs, tmp_path, caplog, monkeypatch
):
    """Width 4, 2 epochs whose updates change nothing (the step is replaced by one that leaves the model
    as it is, so the run never improves whatever the data): no epoch beats epoch 0."""
    from run_rows import run_row

    monkeypatch.setattr(engine.Engine, "train_epoch", lambda self, optimizer, images, labels, generator: 0.5)
    out = tmp_path / "run" / "poison"
    train = {"lr": 1e-3, "max_epochs": 2, "patience": 5, "batch_size": 16}
    with caplog.at_level("WARNING", logger="backdoor_eval.phase"):
        assert cli(tiny_args(tiny_inputs, out, train)) == 0
    final = json.loads((out / "final.json").read_text())
    assert final["best_epoch"] == 0 and final["untrained"] is True
    assert any("the poison phase kept epoch 0, the model before any update" in r.getMessage() for r in caplog.records)
    # Its summary row is flagged; with an ordinary run of the same cell, a table counts the ordinary one only.
    row = run_row("E1", dataset="synthetic", model="small_cnn", poison_class="class0", poison_rate=0.3, seed=0)
    summary = tmp_path / "summary.parquet"
    summarize = ["summarize", "--poison-final", str(out / "final.json"), "--poison-epochs", str(out / "epochs.parquet")]
    params = {k: row[k] for k in ("run_id", *evaluate.RUN_PARAMETERS[1:])}
    summarize += [
        "--run-params",
        json.dumps(params),
        "--out-summary",
        str(summary),
        "--out-epochs",
        str(tmp_path / "e.parquet"),
    ]
    assert cli(summarize) == 0
    flagged = pd.read_parquet(summary).assign(experiment="E1")
    assert flagged["untrained"].tolist() == [True]
    ordinary = pd.DataFrame([run_row("E1", **{**params, "seed": 1, "untrained": False})])
    runs = tmp_path / "runs.parquet"
    pd.concat([flagged, ordinary], ignore_index=True).to_parquet(runs)
    counts = {}
    for extra in ([], ["--include-untrained"]):
        tables = tmp_path / f"tables{len(extra)}"
        args = ["table", "--name", "table2", "--experiments", "E1", "--runs", str(runs), *extra]
        args += ["--out-csv", str(tables / "t.csv"), "--out-md", str(tables / "t.md")]
        args += ["--out-counts-csv", str(tables / "n.csv"), "--out-counts-md", str(tables / "n.md")]
        with caplog.at_level("WARNING"):
            assert cli(args) == 0
        counts[bool(extra)] = int(pd.read_csv(tables / "n.csv").iloc[0, -1])
    assert counts == {False: 1, True: 2}
    assert any("left out 1 run(s) flagged untrained" in r.getMessage() for r in caplog.records)


def test_a_run_row_records_the_code_and_the_training_settings(tiny_inputs, tmp_path):
    from backdoor_eval import __version__
    from backdoor_eval.provenance import git_commit

    out = tmp_path / "poison"
    assert cli(tiny_args(tiny_inputs, out, {"lr": 1e-3, "max_epochs": 1, "batch_size": 16})) == 0
    final = json.loads((out / "final.json").read_text())
    assert final["package_version"] == __version__ and final["git_commit"] == git_commit()
    row, _ = evaluate.summarize(
        {"run_id": "r", **{k: 0 for k in evaluate.RUN_PARAMETERS[1:]}},
        [(final, pd.read_parquet(out / "epochs.parquet"))],
    )
    settings = json.loads(row.loc[0, "train_params"])
    assert settings == dataclasses.asdict(engine.TrainConfig.from_dict({"lr": 1e-3, "max_epochs": 1, "batch_size": 16}))
    assert row.loc[0, "package_version"] == __version__ and row.loc[0, "untrained"] == final["untrained"]


@pytest.mark.parametrize(
    "train_params, message",
    [
        ({"lr": "abc"}, "training option lr='abc' is not valid; allowed: a number"),
        ({"batch_size": 1.5}, "training option batch_size=1.5 is not valid; allowed: a whole number"),
        ({"input_size": "big"}, "training option input_size='big' is not valid; allowed: a whole number or null"),
    ],
    ids=["lr-text", "batch-size-fraction", "input-size-text"],
)
def test_a_training_option_of_the_wrong_type_is_one_line_naming_it(
    tiny_inputs, tmp_path, capsys, train_params, message
):
    assert cli(tiny_args(tiny_inputs, tmp_path / "out", train_params)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_trigger_parameter_that_does_not_parse_is_named(tiny_inputs, tmp_path, capsys):
    _, store, parts, _ = tiny_inputs
    args = ["poison", "--store", str(store), "--partitions", str(parts), "--trigger", "bs", "--poison-class", "0"]
    args += ["--poison-rate", "0.3", "--strategy", "many-to-one", "--seed", "0", "--out", str(tmp_path / "p")]
    for params, message in (
        ({"size": "big"}, "size='big' is not a number; allowed: reference pixels >= 0"),
        ({"size_px": "3"}, "size_px='3' is not a number; allowed: a whole number of pixels >= 0"),
    ):
        assert cli([*args, "--trigger-params", json.dumps(params)]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("content", ["list", "junk-state"])
def test_a_checkpoint_of_the_wrong_type_is_a_warning_and_the_phase_starts_afresh(
    tiny_inputs, tmp_path, caplog, content
):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save([1, 2, 3] if content == "list" else {"fingerprint": 3, "model": [0]}, ckpt / "poison.pt")
    with caplog.at_level("WARNING", logger="backdoor_eval.train"):
        assert cli(tiny_args(tiny_inputs, tmp_path / "out", {"max_epochs": 1}, checkpoints=ckpt)) == 0
    expected = "it holds a list, not a training checkpoint" if content == "list" else "belongs to other settings"
    assert any(expected in r.getMessage() and str(ckpt / "poison.pt") in r.getMessage() for r in caplog.records)
    assert json.loads((tmp_path / "out" / "final.json").read_text())["resumed_from_epoch"] is None
    # One written under the same settings but holding tensors that do not fit the model: also refused.
    model = torch.nn.Linear(2, 2)
    state = {"fingerprint": "f", "epoch": 1, "model": {"w": torch.zeros(1)}, "optimizer": {}, "best_state": {}}
    torch.save({**state, "stopper": {}, "history": []}, ckpt / "other.pt")
    with caplog.at_level("WARNING", logger="backdoor_eval.train"):
        assert engine._load_checkpoint(ckpt / "other.pt", "f", model.state_dict()) is None
    assert "its model, best_state is missing or does not fit" in caplog.records[-1].getMessage()


@pytest.mark.parametrize(
    "content, message",
    [
        ([1, 2], "holds list, not a model file this workflow wrote; rebuild it"),
        (
            {"model": "small_cnn", "state_dict": {"w": torch.zeros(2)}},
            "holds weights that do not fit model 'small_cnn'",
        ),
    ],
    ids=["list", "junk-state-dict"],
)
def test_an_init_model_of_the_wrong_content_is_one_line_naming_the_file(run_inputs, tmp_path, capsys, content, message):
    path = tmp_path / "poison" / "model.pt"
    path.parent.mkdir()
    torch.save(content, path)
    assert cli(phase_args(run_inputs, "clean", tmp_path / "clean", init=tmp_path / "poison")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--init-model {path} {message}" in err, err
    assert not (tmp_path / "clean").exists()


def test_an_unknown_device_is_one_line_and_nothing_is_written(tiny_inputs, tmp_path, capsys):
    args = tiny_args(tiny_inputs, tmp_path / "out", {"max_epochs": 1})
    args[args.index("--device") + 1] = "tpu"
    assert cli(args) == 2
    assert "error: device 'tpu' is unknown; allowed: auto, cpu, cuda, cuda:N" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

"""Atomic writes, and the clean-up of what killed writes leave behind."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from backdoor_eval import io


def test_remove_stale_temporaries_deletes_only_the_atomic_writers_leftovers(tmp_path):
    run = tmp_path / "runs" / "r1" / "poison"
    run.mkdir(parents=True)
    (run / "final.json").write_text("{}")
    (run / ".model.pt.abc123.tmp").write_bytes(b"x" * 1000)  # a killed torch.save
    (tmp_path / "poison" / ".overlay.xyz.tmp").mkdir(parents=True)  # a killed atomic_dir
    (tmp_path / "poison" / ".overlay.xyz.tmp" / "overlay.npz").write_bytes(b"y" * 500)
    (tmp_path / "notes.tmp").write_text("a user's file: no leading dot, kept")
    assert io.remove_stale_temporaries(tmp_path) == (2, 1500)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "notes.tmp",
        "runs/r1/poison/final.json",
    ]
    assert io.remove_stale_temporaries(tmp_path / "absent") == (0, 0)


def test_a_killed_atomic_write_leaves_only_a_temporary(tmp_path):
    target = tmp_path / "final.json"
    with pytest.raises(KeyboardInterrupt), io.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert not target.exists() and not list(tmp_path.iterdir())  # cleaned up when the process survives


def test_read_json_names_a_corrupt_file(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest\.json is not a readable JSON file \(JSONDecodeError"):
        io.read_json(path)
    path.write_text(json.dumps({"a": 1}))
    assert io.read_json(path) == {"a": 1}


def test_an_output_that_is_a_symlink_or_a_device_is_refused_not_replaced(tmp_path, capsys):
    from backdoor_eval.cli import main as cli

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "partitions.npz"
    link.symlink_to(victim)
    with pytest.raises(ValueError, match=r"partitions\.npz is a symbolic link \(to '.*victim\.txt'\); outputs are"):
        io.write_json(link, {"a": 1})
    assert link.is_symlink() and victim.read_text() == "keep me"
    folder_link = tmp_path / "store"
    folder_link.symlink_to(tmp_path)
    with pytest.raises(ValueError, match=r"store is a symbolic link"), io.atomic_dir(folder_link):
        pass
    # The command line refuses it before any work, naming the option.
    args = ["poison-stats", "--class-counts", "10,10", "--rate", "0.1", "--out", str(link)]
    assert cli(args) == 2
    assert f"--out {link} is a symbolic link" in capsys.readouterr().err
    assert link.is_symlink() and victim.read_text() == "keep me"


def test_an_output_that_is_a_character_device_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making a device node (mknod) needs root")
    node = tmp_path / "null"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # the same device as /dev/null
    with pytest.raises(ValueError, match=r"null is a character device; outputs are written only to a new path"):
        io.write_json(node, {"a": 1})
    with pytest.raises(ValueError, match="--out .* is a character device"):
        io.check_writable(node, "--out")
    assert stat.S_ISCHR(node.lstat().st_mode)


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError("5529600 requested and 5234560 written"),  # NumPy's short write
        RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0"),
    ],
    ids=["enospc", "numpy-short-write", "torch-save"],
)
def test_a_full_disk_is_named_with_the_file_and_the_free_space(tmp_path, monkeypatch, capsys, failure):
    import shutil

    import torch

    from backdoor_eval.train import _save_checkpoint

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
    target = tmp_path / "ckpt" / "poison.pt"

    def full(*args, **kwargs):
        raise failure

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as caught:
        _save_checkpoint(target, {"epoch": 1})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert "disk is full" in str(caught.value) or "no space left on the disk" in str(caught.value)
    assert f"0.0 MB free on the disk holding {tmp_path / 'ckpt'}" in str(caught.value)
    assert not list((tmp_path / "ckpt").iterdir())  # the temporary is gone
    # Inside a store folder the message names the file where it was to end up, not the temporary.
    monkeypatch.setattr(np, "save", full)
    from backdoor_eval.cli import main as cli

    store = tmp_path / "store"
    assert cli(["ingest", "--dataset", "synthetic", "--params", '{"per_class": 2}', "--out", str(store)]) == 2
    err = capsys.readouterr().err
    assert f"error: {store / 'images.npy'}: " in err and "MB free on the disk holding" in err, err
    assert not store.exists() and [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_json_outputs_are_standard_json(tmp_path):
    path = tmp_path / "final.json"
    io.write_json(path, {"asr_source": float("nan"), "x": [np.float32("inf"), 1.5], "n": np.int64(3)})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard {name}")) == {
        "asr_source": None,
        "n": 3,
        "x": [None, 1.5],
    }


def test_a_read_only_results_folder_is_one_line_naming_it(tmp_path, monkeypatch):
    """What the workflow checks at parse time (workflow/rules/common.smk), before any job; simulated,
    since root may write anywhere."""
    results = tmp_path / "results" / "slice"
    results.mkdir(parents=True)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != results and real_access(path, mode))
    with pytest.raises(ValueError) as caught:
        io.check_writable(results / ".write-check", f"results folder {results}:")
    assert str(caught.value) == (
        f"results folder {results}: {results / '.write-check'} cannot be written: no permission to write in {results}"
    )

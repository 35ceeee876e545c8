"""Atomic writes, and the clean-up of what killed writes leave behind."""

from __future__ import annotations

import json

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

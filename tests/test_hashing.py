"""Checksums and fingerprints, one helper module for the package."""

from __future__ import annotations

import hashlib

import numpy as np

from backdoor_eval import hashing


def test_file_digest_md5_and_sha256(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"backdoor" * 1000)
    assert hashing.file_digest(path, "md5") == hashlib.md5(b"backdoor" * 1000).hexdigest()
    assert hashing.file_digest(path) == hashlib.sha256(b"backdoor" * 1000).hexdigest()


def test_array_sha256_is_the_c_order_bytes_in_slices(monkeypatch):
    array = np.arange(1000, dtype=np.int64).reshape(10, 100)
    expected = hashlib.sha256(array.tobytes()).hexdigest()
    assert hashing.array_sha256(array) == expected
    assert hashing.array_sha256(np.asfortranarray(array)) == expected  # layout does not matter
    monkeypatch.setattr(hashing, "SLICE_BYTES", 96)  # many slices, same digest
    assert hashing.array_sha256(array) == expected


def test_arrays_sha256_names_and_order_matter():
    a, b = np.arange(3, dtype=np.int64), np.arange(4, dtype=np.int64)
    expected = hashlib.sha256(b"a" + a.tobytes() + b"b" + b.tobytes()).hexdigest()
    assert hashing.arrays_sha256([("a", a), ("b", b)]) == expected
    assert hashing.arrays_sha256([("b", b), ("a", a)]) != expected
    assert hashing.arrays_sha256([("x", a), ("b", b)]) != expected


def test_json_sha256_ignores_key_order_and_stringifies_other_values(tmp_path):
    assert hashing.json_sha256({"a": 1, "b": [2]}) == hashing.json_sha256({"b": [2], "a": 1})
    assert hashing.json_sha256([tmp_path]) == hashing.json_sha256([str(tmp_path)])
    assert hashing.json_sha256({"a": 1}) != hashing.json_sha256({"a": 2})

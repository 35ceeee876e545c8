"""Datasets and the store: cifar10 tar reader, imagefolder (zip and folder), synthetic, store I/O."""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import pickle
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backdoor_eval import cli
from backdoor_eval.data import (
    DATASETS,
    RawDataset,
    create_dataset,
    ingest,
    known_class_counts,
    make_synthetic,
    open_store,
)
from backdoor_eval.hashing import array_sha256

# --------------------------------------------------------------------------- #
# helpers: tiny archives built in the test
# --------------------------------------------------------------------------- #
COLOURS = {"cat": (200, 30, 40), "dog": (20, 180, 60), "emu": (30, 40, 210)}


def png_bytes(colour, width=8, height=8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_zip(path: Path, files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in dirs:
            archive.writestr(zipfile.ZipInfo(name), b"")
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def class_files(prefix: str, per_class: dict[str, int]) -> dict[str, bytes]:
    """``prefix<class>/<i>.png`` files, each a solid image of its class's colour."""
    return {
        f"{prefix}{name}/{i:03d}.png": png_bytes(COLOURS[name])
        for name, count in per_class.items()
        for i in range(count)
    }


def cifar_batch(images_hwc: np.ndarray, labels: list[int]) -> bytes:
    data = images_hwc.transpose(0, 3, 1, 2).reshape(len(labels), -1)  # the official row layout
    return pickle.dumps({b"batch_label": b"fake", b"labels": labels, b"data": data}, protocol=2)


def write_fake_cifar(path: Path, per_batch: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A cifar-10-python.tar.gz in the official layout with ``per_batch`` images per batch."""
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    images = rng.integers(0, 256, size=(6 * per_batch, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=6 * per_batch)
    members = {
        name: cifar_batch(
            images[i * per_batch : (i + 1) * per_batch], labels[i * per_batch : (i + 1) * per_batch].tolist()
        )
        for i, name in enumerate(names)
    }
    label_names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    members["batches.meta"] = pickle.dumps({b"label_names": label_names, b"num_vis": 3072}, protocol=2)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return images, labels


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- #
# registry and parameters
# --------------------------------------------------------------------------- #
def test_registry_holds_the_four_datasets():
    assert DATASETS.names() == ["cifar10", "flowers", "imagefolder", "synthetic"]


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_registered_dataset_is_built_by_the_factory(name, tmp_path):
    """Generated datasets load offline; file-based ones name a missing ``path`` on load."""
    parameters = [p for p in inspect.signature(DATASETS.get(name).__init__).parameters if p != "self"]
    if "path" not in parameters:
        dataset = create_dataset(name)
        assert isinstance(dataset.load(progress=False), RawDataset)
    else:
        missing = str(tmp_path / "absent.zip")
        dataset = create_dataset(name, {"path": missing})
        with pytest.raises(ValueError, match=re.escape(repr(missing)) + " does not exist"):
            dataset.load(progress=False)
    assert sorted(dataset.params) == sorted(parameters)  # the manifest records every parameter


def test_unknown_dataset_and_parameter_are_named():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; registered datasets: cifar10, flowers"):
        create_dataset("mnist", {})
    with pytest.raises(ValueError, match="dataset 'synthetic' has no parameter 'colour'; allowed: num_classes"):
        create_dataset("synthetic", {"colour": 1})


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("synthetic", {"num_classes": 1}, "num_classes 1"),
        ("synthetic", {"noise": -0.1}, "noise -0.1"),
        ("imagefolder", {}, "needs `path`"),
        ("imagefolder", {"path": "x.zip", "size": 0}, "size 0"),
        ("imagefolder", {"path": "x.zip", "splits": "train"}, "splits 'train'"),
        ("imagefolder", {"path": "x.zip", "executor": "gpu"}, "executor 'gpu'"),
        ("imagefolder", {"path": "x.zip", "md5": "abc"}, "md5 'abc' is not valid"),
        ("cifar10", {"path": None, "url": ""}, "needs `path`"),
    ],
)
def test_bad_parameters_raise_value_error(name, params, message):
    with pytest.raises(ValueError, match=message):
        create_dataset(name, params)


def test_raw_dataset_checks_its_arrays():
    images = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8 array of shape"):
        RawDataset(images.astype(np.float32), np.zeros(2, np.int64), ["a", "b"])
    with pytest.raises(ValueError, match="int64 array of shape \\(2,\\)"):
        RawDataset(images, np.zeros(3, np.int64), ["a", "b"])
    with pytest.raises(ValueError, match="labels must lie in \\[0, 1\\]"):
        RawDataset(images, np.array([0, 2]), ["a", "b"])


# --------------------------------------------------------------------------- #
# synthetic
# --------------------------------------------------------------------------- #
def test_synthetic_is_deterministic_and_seeded():
    images, labels = make_synthetic(num_classes=4, per_class=25, size=16, seed=3)
    again, _ = make_synthetic(num_classes=4, per_class=25, size=16, seed=3)
    other, _ = make_synthetic(num_classes=4, per_class=25, size=16, seed=4)
    assert images.tobytes() == again.tobytes()
    assert (images != other).mean() > 0.9
    assert images.shape == (100, 16, 16, 3) and images.dtype == np.uint8


def test_synthetic_is_balanced_and_never_black():
    images, labels = make_synthetic()
    assert labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [300] * 10
    # No black pixel anywhere, so a black-square trigger is never there by chance.
    assert images.min() >= 20
    # The class colour shows, but colour alone does not settle the class (chance is 0.1).
    means = images.reshape(len(images), -1, 3).mean(axis=1)
    centroids = np.stack([means[labels == k].mean(axis=0) for k in range(10)])
    nearest = np.argmin(((means[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert 0.3 < (nearest == labels).mean() < 0.6


def test_synthetic_store_is_byte_identical_across_ingests(tmp_path):
    first = ingest("synthetic", {"per_class": 10, "seed": 5}, tmp_path / "a", progress=False)
    second = ingest("synthetic", {"per_class": 10, "seed": 5}, tmp_path / "b", progress=False)
    assert first.manifest["sha256"] == second.manifest["sha256"]
    assert first.class_names == [f"class{k}" for k in range(10)]


# --------------------------------------------------------------------------- #
# the store
# --------------------------------------------------------------------------- #
def test_store_files_manifest_and_memmap(tmp_path):
    store = ingest("synthetic", {"num_classes": 3, "per_class": 4, "size": 8}, tmp_path / "store", progress=False)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["images.npy", "labels.npy", "manifest.json"]
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["dataset"] == "synthetic"
    assert manifest["num_images"] == 12 and manifest["image_shape"] == [8, 8, 3]
    assert manifest["class_names"] == ["class0", "class1", "class2"] and manifest["class_counts"] == [4, 4, 4]
    assert manifest["params"]["per_class"] == 4 and manifest["params"]["noise"] == 0.06  # defaults filled in
    assert manifest["sha256"]["images"] == array_sha256(np.load(tmp_path / "store" / "images.npy"))
    assert manifest["sha256"]["labels"] == hashlib.sha256(np.arange(3).repeat(4).astype(np.int64).tobytes()).hexdigest()
    assert isinstance(store.images, np.memmap) and not store.images.flags.writeable
    with pytest.raises(ValueError):
        store.images[0, 0, 0, 0] = 1
    assert store.num_classes == 3 and store.num_images == 12 and store.class_counts == [4, 4, 4]
    assert open_store(tmp_path / "store", verify=True).manifest == manifest
    assert [p.name for p in tmp_path.iterdir()] == ["store"]  # no temporary folder left behind


def test_class_index_accepts_names_indices_and_digit_strings(tmp_path):
    store = ingest("synthetic", {"num_classes": 3, "per_class": 2, "size": 4}, tmp_path / "s", progress=False)
    assert store.class_index("class2") == 2
    assert store.class_index(1) == 1 and store.class_index(np.int64(0)) == 0 and store.class_index("1") == 1
    for bad, message in (
        ("class7", "unknown class 'class7'; expected a class name \\(class0, class1, class2\\)"),
        (3, "class index 3 is out of range"),
        ("-1", "unknown class '-1'"),
        (True, "class True"),
    ):
        with pytest.raises(ValueError, match=message):
            store.class_index(bad)


def test_open_store_names_missing_files_and_detects_tampering(tmp_path):
    with pytest.raises(ValueError, match="missing images.npy, labels.npy, manifest.json"):
        open_store(tmp_path)
    ingest("synthetic", {"num_classes": 2, "per_class": 3, "size": 4}, tmp_path / "s", progress=False)
    np.save(tmp_path / "s" / "labels.npy", np.array([1, 1, 1, 0, 0, 0], dtype=np.int64))
    open_store(tmp_path / "s")  # shapes still agree
    with pytest.raises(ValueError, match="sha256 of labels.npy is"):
        open_store(tmp_path / "s", verify=True)
    np.save(tmp_path / "s" / "labels.npy", np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match="labels.npy is int64 \\(5,\\), expected int64 \\(6,\\)"):
        open_store(tmp_path / "s")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_store_label_array_is_named_with_how_to_rebuild_it(tmp_path, damage):
    ingest("synthetic", {"num_classes": 2, "per_class": 3, "size": 4}, tmp_path / "s", progress=False)
    path = tmp_path / "s" / "labels.npy"
    if damage == "garbage":
        path.write_bytes(b"\x00not an array\xff" * 10)
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size - 8])
    with pytest.raises(ValueError) as info:
        open_store(tmp_path / "s")
    message = str(info.value)
    assert message.startswith(f"{path} is not a readable store label array (") and "--forcerun ingest" in message


def test_failed_ingest_leaves_nothing(tmp_path):
    archive = write_zip(tmp_path / "bad.zip", {**class_files("r/", {"cat": 1, "dog": 1}), "r/dog/x.png": b"garbage"})
    with pytest.raises(ValueError, match="cannot decode image 'r/dog/x.png'"):
        ingest("imagefolder", {"path": str(archive), "workers": 1}, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]


def test_cli_ingest_and_its_errors(tmp_path, capsys):
    out = tmp_path / "store"
    assert cli.main(["ingest", "--dataset", "synthetic", "--params", '{"per_class": 3}', "--out", str(out)]) == 0
    assert open_store(out).num_images == 30
    assert cli.main(["ingest", "--dataset", "synthetic", "--params", "{per_class: 3}", "--out", str(out)]) == 2
    assert "--params '{per_class: 3}' is not valid JSON" in capsys.readouterr().err
    assert cli.main(["ingest", "--dataset", "nope", "--out", str(out)]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err


# --------------------------------------------------------------------------- #
# imagefolder
# --------------------------------------------------------------------------- #
def check_solid_classes(store_or_raw, per_class: dict[str, int]):
    names = sorted(per_class)
    assert store_or_raw.class_names == names
    assert np.bincount(store_or_raw.labels).tolist() == [per_class[n] for n in names]
    for image, label in zip(store_or_raw.images, store_or_raw.labels):
        assert (image == COLOURS[names[label]]).all()  # PNG is lossless: exact pixels, right label


def test_imagefolder_zip_without_split_level(tmp_path):
    per_class = {"emu": 2, "cat": 3, "dog": 1}
    archive = write_zip(tmp_path / "flowers.zip", class_files("flowers/", per_class))
    store = ingest("imagefolder", {"path": str(archive), "workers": 2}, tmp_path / "store", progress=False)
    check_solid_classes(store, per_class)
    source = store.manifest["source"]
    assert source["kind"] == "zip" and source["root"] == "flowers" and source["has_splits"] is False
    assert source["md5"] == md5_of(archive)


def test_imagefolder_zip_symlink_is_named_not_decoded(tmp_path):
    archive = write_zip(tmp_path / "flowers.zip", class_files("flowers/", {"cat": 2, "dog": 2}))
    link = zipfile.ZipInfo("flowers/dog/link.png")
    link.external_attr = (0o120777 << 16) | 0x20  # a symlink, as `zip --symlinks` stores it
    with zipfile.ZipFile(archive, "a") as out:
        out.writestr(link, "../cat/0.png")
    with pytest.raises(
        ValueError, match=r"entry 'flowers/dog/link.png' in .* is a symbolic link \(to '../cat/0.png'\)"
    ):
        create_dataset("imagefolder", {"path": str(archive)}).load(progress=False)


def test_imagefolder_folder_with_split_level(tmp_path):
    files = {
        **class_files("data/cifar/train/", {"cat": 2, "dog": 2}),
        **class_files("data/cifar/test/", {"cat": 1, "emu": 1}),
    }
    root = write_folder(tmp_path / "in", files)
    raw = create_dataset("imagefolder", {"path": str(root), "workers": 2}).load(progress=False)
    check_solid_classes(raw, {"cat": 3, "dog": 2, "emu": 1})
    assert raw.source["kind"] == "folder" and raw.source["root"] == "data/cifar"
    assert raw.source["has_splits"] is True and raw.source["split_counts"] == {"test": 2, "train": 4}
    only_train = create_dataset("imagefolder", {"path": str(root), "splits": ["train"]}).load(progress=False)
    check_solid_classes(only_train, {"cat": 2, "dog": 2})
    with pytest.raises(ValueError, match="split\\(s\\) \\['val'\\] not found .* available splits: test, train"):
        create_dataset("imagefolder", {"path": str(root), "splits": ["val"]}).load(progress=False)


def test_imagefolder_zip_with_split_level_and_folder_without(tmp_path):
    files = {**class_files("c10/train/", {"cat": 1, "dog": 2}), **class_files("c10/test/", {"cat": 2, "dog": 1})}
    raw = create_dataset("imagefolder", {"path": str(write_zip(tmp_path / "a.zip", files))}).load(progress=False)
    check_solid_classes(raw, {"cat": 3, "dog": 3})
    folder = write_folder(tmp_path / "plain", class_files("", {"dog": 2, "emu": 1}))
    raw = create_dataset("imagefolder", {"path": str(folder)}).load(progress=False)
    check_solid_classes(raw, {"dog": 2, "emu": 1})
    assert raw.source["root"] == "" and raw.source["has_splits"] is False


def test_imagefolder_resizes_shorter_side_then_centre_crops(tmp_path):
    # 30 x 10 (w x h): thirds red | green | blue; at size 10 only the green centre survives.
    image = Image.new("RGB", (30, 10), (255, 0, 0))
    image.paste((0, 255, 0), (10, 0, 20, 10))
    image.paste((0, 0, 255), (20, 0, 30, 10))
    wide, tall = io.BytesIO(), io.BytesIO()
    image.save(wide, format="PNG")
    image.rotate(90, expand=True).save(tall, format="PNG")
    archive = write_zip(
        tmp_path / "r.zip",
        {"r/a/wide.png": wide.getvalue(), "r/b/tall.png": tall.getvalue(), "r/b/small.png": png_bytes((9, 9, 9), 4, 4)},
    )
    raw = create_dataset("imagefolder", {"path": str(archive), "size": 10}).load(progress=False)
    assert raw.images.shape == (3, 10, 10, 3)
    assert (raw.images[0] == (0, 255, 0)).all() and (raw.images[2] == (0, 255, 0)).all()
    assert (raw.images[1] == (9, 9, 9)).all()  # upscaled 4 -> 10, a solid colour stays solid
    halved = create_dataset("imagefolder", {"path": str(archive), "size": 5}).load(progress=False)
    assert (np.abs(halved.images[0, :, 1:4].astype(int) - (0, 255, 0)) <= 1).all()  # crop centre stays green


def test_imagefolder_native_sizes_must_agree(tmp_path):
    files = {"r/a/1.png": png_bytes((1, 2, 3), 8, 8), "r/b/2.png": png_bytes((1, 2, 3), 8, 6)}
    archive = write_zip(tmp_path / "r.zip", files)
    with pytest.raises(ValueError, match="'r/b/2.png' .* is 8x6 but 'r/a/1.png' is 8x8; with size=null all images"):
        create_dataset("imagefolder", {"path": str(archive), "workers": 1}).load(progress=False)
    assert create_dataset("imagefolder", {"path": str(archive), "size": 6}).load(progress=False).images.shape == (
        2,
        6,
        6,
        3,
    )


def test_imagefolder_process_executor_matches_threads(tmp_path):
    archive = write_zip(tmp_path / "r.zip", class_files("r/", {"cat": 5, "dog": 4, "emu": 3}))
    threads = create_dataset("imagefolder", {"path": str(archive), "executor": "thread"}).load(progress=False)
    processes = create_dataset("imagefolder", {"path": str(archive), "executor": "process", "workers": 2}).load(
        progress=False
    )
    assert threads.images.tobytes() == processes.images.tobytes()
    check_solid_classes(processes, {"cat": 5, "dog": 4, "emu": 3})


@pytest.mark.parametrize("entry", ["../evil.png", "/abs/evil.png", "r/cat/../../evil.png", "C:/evil.png"])
def test_imagefolder_refuses_entries_escaping_the_folder(tmp_path, entry):
    archive = write_zip(tmp_path / "r.zip", {**class_files("r/", {"cat": 1, "dog": 1}), entry: png_bytes((0, 0, 0))})
    with pytest.raises(ValueError, match="escapes the archive folder"):
        create_dataset("imagefolder", {"path": str(archive)}).load(progress=False)


def test_imagefolder_names_a_corrupt_image(tmp_path):
    good = png_bytes((1, 2, 3))
    files = {**class_files("r/", {"cat": 2, "dog": 2}), "r/dog/truncated.png": good[: len(good) // 2]}
    archive = write_zip(tmp_path / "r.zip", files)
    with pytest.raises(ValueError, match="cannot decode image 'r/dog/truncated.png' in .*r.zip"):
        create_dataset("imagefolder", {"path": str(archive), "workers": 2}).load(progress=False)


def test_imagefolder_needs_two_classes_and_no_empty_class(tmp_path):
    one = write_zip(tmp_path / "one.zip", class_files("r/", {"cat": 3}))
    with pytest.raises(ValueError, match="found 1 class folder\\(s\\) \\['cat'\\] .* at least 2 classes"):
        create_dataset("imagefolder", {"path": str(one)}).load(progress=False)
    flat = write_zip(tmp_path / "flat.zip", {"a.png": png_bytes((1, 1, 1)), "b.png": png_bytes((1, 1, 1))})
    with pytest.raises(ValueError, match="at least 2 classes"):
        create_dataset("imagefolder", {"path": str(flat)}).load(progress=False)
    empty = write_zip(tmp_path / "empty.zip", class_files("r/", {"cat": 1, "dog": 1}), dirs=("r/", "r/emu/"))
    with pytest.raises(ValueError, match="class folder\\(s\\) \\['emu'\\] .* hold no images"):
        create_dataset("imagefolder", {"path": str(empty)}).load(progress=False)
    folder = write_folder(tmp_path / "f", {**class_files("", {"cat": 1, "dog": 1}), "emu/.DS_Store": b"\0"})
    with pytest.raises(ValueError, match="\\['emu'\\] .* hold no images"):
        create_dataset("imagefolder", {"path": str(folder)}).load(progress=False)


def test_imagefolder_skips_only_clearly_non_image_files(tmp_path):
    junk = {
        "r/.DS_Store": b"\0",
        "r/cat/Thumbs.db": b"\0",
        "__MACOSX/r/cat/._000.png": b"\0",
        "r/dog/._000.png": b"\0",
        "r/README.txt": b"hi",
        "r/dog/flickr.py": b"print()",
    }
    archive = write_zip(tmp_path / "r.zip", {**class_files("r/", {"cat": 2, "dog": 1}), **junk})
    raw = create_dataset("imagefolder", {"path": str(archive)}).load(progress=False)
    check_solid_classes(raw, {"cat": 2, "dog": 1})
    assert raw.source["skipped"] == sorted(junk)
    unknown = write_zip(tmp_path / "u.zip", {**class_files("r/", {"cat": 1, "dog": 1}), "r/dog/blob.bin": b"?"})
    with pytest.raises(ValueError, match="'r/dog/blob.bin' .* is not a recognised image file"):
        create_dataset("imagefolder", {"path": str(unknown)}).load(progress=False)


def test_imagefolder_mixed_depths_and_missing_path(tmp_path):
    files = {**class_files("r/", {"cat": 1, "dog": 1}), "r/train/emu/1.png": png_bytes((1, 1, 1))}
    with pytest.raises(ValueError, match="mixed folder layout"):
        create_dataset("imagefolder", {"path": str(write_zip(tmp_path / "m.zip", files))}).load(progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        create_dataset("imagefolder", {"path": str(tmp_path / "absent.zip")}).load(progress=False)


def test_imagefolder_md5(tmp_path):
    archive = write_zip(tmp_path / "r.zip", class_files("r/", {"cat": 1, "dog": 1}))
    good = md5_of(archive)
    assert (
        create_dataset("imagefolder", {"path": str(archive), "md5": good.upper()}).load(progress=False).source["md5"]
        == good
    )
    with pytest.raises(ValueError, match=f"md5 mismatch for .*r.zip: expected {'0' * 32}, got {good}"):
        create_dataset("imagefolder", {"path": str(archive), "md5": "0" * 32}).load(progress=False)


def test_flowers_is_imagefolder_at_224(tmp_path):
    archive = write_zip(tmp_path / "f.zip", class_files("flowers/", {"cat": 1, "dog": 2}))
    flowers = create_dataset("flowers", {"path": str(archive)})
    assert flowers.params["size"] == 224
    raw = flowers.load(progress=False)
    assert raw.images.shape == (3, 224, 224, 3)
    check_solid_classes(raw, {"cat": 1, "dog": 2})


# --------------------------------------------------------------------------- #
# cifar10 (official python archive)
# --------------------------------------------------------------------------- #
def test_cifar10_reads_the_official_layout_pooled(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    images, labels = write_fake_cifar(archive)
    store = ingest("cifar10", {"path": str(archive), "md5": None}, tmp_path / "store", progress=False)
    assert np.array_equal(store.images, images)  # train batches 1..5, then test, pixels in HWC order
    assert np.array_equal(store.labels, labels)
    assert store.class_names[:3] == ["airplane", "automobile", "bird"] and store.num_classes == 10
    source = store.manifest["source"]
    assert source["split_counts"] == {"train": 10, "test": 2} and source["md5"] == md5_of(archive)


def test_cifar10_md5_mismatch_and_default_md5(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_fake_cifar(archive)
    with pytest.raises(
        ValueError, match=f"md5 mismatch for .*: expected c58f30108f718f92721af3b95e74349a, got {md5_of(archive)}"
    ):
        create_dataset("cifar10", {"path": str(archive)}).load(progress=False)
    assert create_dataset("cifar10", {"path": str(archive), "md5": md5_of(archive)}).load(
        progress=False
    ).images.shape == (12, 32, 32, 3)


def test_cifar10_downloads_into_the_cache_once(tmp_path):
    archive = tmp_path / "remote" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    write_fake_cifar(archive)
    cache = tmp_path / "cache"
    params = {"url": archive.as_uri(), "md5": md5_of(archive), "cache_dir": str(cache)}
    raw = create_dataset("cifar10", params).load(progress=False)
    assert raw.source["url"] == archive.as_uri() and (cache / archive.name).read_bytes() == archive.read_bytes()
    archive.unlink()  # a second load reads the cached copy
    assert create_dataset("cifar10", params).load(progress=False).images.shape == (12, 32, 32, 3)
    (cache / archive.name).unlink()
    write_fake_cifar(archive, per_batch=1)
    with pytest.raises(ValueError, match="md5 mismatch for file:"):
        create_dataset("cifar10", params).load(progress=False)
    assert list(cache.iterdir()) == []  # a bad download never lands in the cache


def test_cifar10_refuses_foreign_pickles_and_missing_members(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = pickle.dumps({b"data": Exploit(), b"labels": []}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(
        ValueError,
        match="'cifar-10-batches-py/data_batch_1' in .* is not a CIFAR-10 python batch: refusing to load .*print",
    ):
        create_dataset("cifar10", {"path": str(archive), "md5": None}).load(progress=False)
    partial = tmp_path / "partial.tar.gz"
    with tarfile.open(partial, "w:gz"):
        pass
    with pytest.raises(ValueError, match="has no file 'cifar-10-batches-py/data_batch_1'"):
        create_dataset("cifar10", {"path": str(partial), "md5": None}).load(progress=False)
    (tmp_path / "not.tar.gz").write_bytes(b"plain text")
    with pytest.raises(ValueError, match="is not a tar archive"):
        create_dataset("cifar10", {"path": str(tmp_path / "not.tar.gz"), "md5": None}).load(progress=False)


# --------------------------------------------------------------------------- #
# the real datasets (found by conftest.shared_dataset; skipped when absent)
# --------------------------------------------------------------------------- #
@pytest.mark.datasets
@pytest.mark.slow
def test_real_cifar10_zip(cifar10_zip, tmp_path):
    store = ingest("imagefolder", {"path": str(cifar10_zip)}, tmp_path / "cifar10", progress=False)
    assert store.num_images == 60_000 and store.images.shape == (60_000, 32, 32, 3)
    assert store.class_names == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    assert store.class_counts == [6000] * 10
    assert store.manifest["source"]["split_counts"] == {"test": 10_000, "train": 50_000}
    assert store.manifest["source"]["md5"] == "4582a1137697fb90870d2aa522627a78"


@pytest.mark.datasets
@pytest.mark.slow
def test_real_flowers_zip(flowers_zip, tmp_path):
    store = ingest("flowers", {"path": str(flowers_zip)}, tmp_path / "flowers", progress=False)
    assert store.images.shape == (4317, 224, 224, 3)
    assert dict(zip(store.class_names, store.class_counts)) == {
        "daisy": 764,
        "dandelion": 1052,
        "rose": 784,
        "sunflower": 733,
        "tulip": 984,
    }
    assert store.manifest["source"]["md5"] == "b81d18df4adf3781b9e91a563f12591a"


def test_known_class_counts_before_and_after_ingest(tmp_path):
    params = {"num_classes": 3, "per_class": 7, "size": 8}
    store_dir = tmp_path / "store"
    assert known_class_counts(store_dir, "synthetic", params) == [7, 7, 7]  # from the parameters
    assert known_class_counts(store_dir, "cifar10", {}) == [6000] * 10  # the official archive
    assert known_class_counts(store_dir, "cifar10", {"md5": None}) is None  # any archive: unknown
    ingest("synthetic", params, store_dir)
    manifest = json.loads((store_dir / "manifest.json").read_text())
    manifest["class_counts"] = [5, 6, 7]  # what the store holds wins when its parameters match
    (store_dir / "manifest.json").write_text(json.dumps(manifest))
    assert known_class_counts(store_dir, "synthetic", params) == [5, 6, 7]
    assert known_class_counts(store_dir, "synthetic", {**params, "per_class": 9}) == [9, 9, 9]


# --------------------------------------------------------------------------- #
# pixel formats, bounds and hostile archives
# --------------------------------------------------------------------------- #
def png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG of ``array`` (uint16, (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA), written by hand:
    Pillow writes no 16-bit colour PNG."""
    import struct
    import zlib

    height, width = array.shape[:2]
    colour_type = {2: 0, 3: 2, 4: 6}[array.ndim if array.ndim == 2 else array.shape[2]]
    rows = b"".join(b"\0" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def image_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_high_bit_depth_images_are_scaled_to_8_bits_and_recorded(tmp_path):
    rng = np.random.default_rng(0)
    grey16 = rng.integers(0, 65536, (8, 8), dtype=np.uint16)
    rgb16 = rng.integers(0, 65536, (8, 8, 3), dtype=np.uint16)
    rgba16 = rng.integers(0, 65536, (8, 8, 4), dtype=np.uint16)
    grey_float = rng.random((8, 8), dtype=np.float32)
    files = {
        "r/a/grey16.png": png16(grey16),
        "r/a/rgb16.png": png16(rgb16),
        "r/a/rgba16.png": png16(rgba16),
        "r/b/grey16.tif": image_bytes(Image.fromarray(grey16), "TIFF"),
        "r/b/float.tif": image_bytes(Image.fromarray(grey_float), "TIFF"),
    }
    store = ingest("imagefolder", {"path": str(write_zip(tmp_path / "r.zip", files))}, tmp_path / "s", progress=False)
    stored = dict(zip(["grey16.png", "rgb16.png", "rgba16.png", "float.tif", "grey16.tif"], store.images))
    high_byte = (grey16 >> 8).astype(np.uint8)  # 65535 -> 255, 0 -> 0: was clipped to 255 above 255
    np.testing.assert_array_equal(stored["grey16.png"], np.repeat(high_byte[..., None], 3, axis=2))
    np.testing.assert_array_equal(stored["grey16.tif"], stored["grey16.png"])
    np.testing.assert_array_equal(stored["rgb16.png"], rgb16 >> 8)
    np.testing.assert_array_equal(stored["rgba16.png"], rgba16[..., :3] >> 8)
    np.testing.assert_array_equal(stored["float.tif"][..., 0], np.rint(grey_float.astype(np.float64) * 255))
    source = store.manifest["source"]
    assert source["pixel_formats"] == {"F": 1, "I;16": 2, "RGB 16-bit": 1, "RGBA 16-bit": 1}
    assert source["pixel_conversions"]["I;16"].startswith("16-bit grey: high byte kept")


def test_palette_transparency_cmyk_and_grey_alpha_become_rgb_and_unreadable_ranges_are_refused(tmp_path):
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    files = {
        "r/a/palette.png": image_bytes(palette, "PNG", transparency=0),
        "r/a/cmyk.jpg": image_bytes(Image.new("CMYK", (8, 8), (0, 255, 0, 0)), "JPEG", quality=100),
        "r/b/la.png": image_bytes(Image.new("LA", (8, 8), (77, 10)), "PNG"),
    }
    store = ingest("imagefolder", {"path": str(write_zip(tmp_path / "r.zip", files))}, tmp_path / "s", progress=False)
    cmyk, palette_rgb, la = store.images
    assert (palette_rgb == (10, 20, 30)).all() and (la == 77).all()
    assert abs(cmyk.astype(int) - (255, 0, 255)).max() <= 2  # no magenta: Pillow's naive CMYK conversion
    formats = store.manifest["source"]["pixel_formats"]
    assert formats == {"CMYK": 1, "LA": 1, "P with transparency": 1}
    out_of_range = {
        "r/a/x.tif": image_bytes(Image.fromarray(np.full((8, 8), 2.5, dtype=np.float32)), "TIFF"),
        "r/b/y.png": png_bytes((1, 2, 3)),
    }
    with pytest.raises(ValueError, match=r"'r/a/x.tif' .*: it holds floating-point pixels in \[2.5, 2.5\]; allowed"):
        ingest("imagefolder", {"path": str(write_zip(tmp_path / "f.zip", out_of_range))}, tmp_path / "t")
    wide = {"r/a/x.tif": image_bytes(Image.fromarray(np.full((8, 8), 70000, dtype=np.int32)), "TIFF")}
    wide["r/b/y.png"] = png_bytes((1, 2, 3))
    with pytest.raises(ValueError, match=r"it holds 32-bit integer pixels in \[70000, 70000\]; allowed: 8-bit"):
        ingest("imagefolder", {"path": str(write_zip(tmp_path / "i.zip", wide))}, tmp_path / "u")


def test_an_image_is_stored_upright_by_its_exif_orientation(tmp_path):
    image = Image.new("RGB", (8, 4), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 1, 4))  # a blue left column
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    files = {
        "r/a/photo.png": image_bytes(image, "PNG", exif=exif),
        "r/b/x.png": png_bytes((0, 0, 0), 4, 8),
    }
    store = ingest("imagefolder", {"path": str(write_zip(tmp_path / "r.zip", files))}, tmp_path / "s", progress=False)
    upright = store.images[0]
    assert upright.shape == (8, 4, 3)  # portrait, as a viewer shows it
    assert upright[0, :, 2].mean() > 200 and upright[-1, :, 2].mean() < 60  # the blue column is now the top row
    assert store.manifest["source"]["exif_rotated"] == 1


def test_a_zip_bomb_is_refused_before_it_is_inflated_and_memory_stays_bounded(tmp_path):
    """A 4.7 MB zip whose PNG entry inflates to 1 GiB: refused from its header, peak RSS of the whole
    ingest process far below the entry's size (measured: 42 MB, the interpreter and its imports)."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("peak memory is read from /proc/self/status (Linux)")
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("r/a/0.png", png_bytes((1, 2, 3)))
        bomb = zipfile.ZipInfo("r/b/0.png")
        bomb.compress_type, bomb._compresslevel = zipfile.ZIP_DEFLATED, 1
        with out.open(bomb, "w", force_zip64=True) as entry:
            entry.write(png_bytes((1, 2, 3))[:16])
            for _ in range(64):
                entry.write(bytes(2**24))
    assert archive.stat().st_size < 8e6
    # VmHWM, the peak resident memory of this process image (ru_maxrss would count the forking parent's).
    script = (
        "import re, sys; from backdoor_eval.cli import main; code = main(sys.argv[1:]); "
        "print('maxrss_kb', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); sys.exit(code)"
    )
    params = json.dumps({"path": str(archive)})
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "ingest",
            "--dataset",
            "imagefolder",
            "--params",
            params,
            "--out",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    assert (
        "entry 'r/b/0.png' in" in done.stderr
        and "is 1,073,741,840 bytes uncompressed, more than max_image_bytes" in done.stderr
    )
    peak_mb = int(re.search(r"maxrss_kb (\d+)", done.stdout).group(1)) / 1024
    print(f"peak RSS of the ingest: {peak_mb:.0f} MB")
    assert peak_mb < 400, f"peak RSS {peak_mb:.0f} MB"


def test_a_huge_image_is_refused_by_its_header_before_decoding(tmp_path):
    import struct
    import zlib

    def header_only_png(width: int, height: int) -> bytes:
        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")

    files = {"r/a/0.png": png_bytes((1, 2, 3)), "r/b/huge.png": header_only_png(12_000, 12_000)}
    archive = write_zip(tmp_path / "r.zip", files)
    with pytest.raises(
        ValueError,
        match=r"cannot decode image 'r/b/huge.png' .*: it is 12000x12000 = 144,000,000 pixels, more than "
        r"max_image_pixels \(67,108,864\); raise that dataset parameter",
    ):
        ingest("imagefolder", {"path": str(archive), "size": 8}, tmp_path / "s")
    with pytest.raises(ValueError, match=r"'r/a/0.png' .*: it is 8x8 = 64 pixels, more than max_image_pixels \(10\)"):
        ingest("imagefolder", {"path": str(archive), "max_image_pixels": 10}, tmp_path / "s")
    with pytest.raises(ValueError, match=r"'r/a/0.png' .* bytes uncompressed, more than max_image_bytes \(10\)"):
        ingest("imagefolder", {"path": str(archive), "max_image_bytes": 10}, tmp_path / "s")
    folder = write_folder(tmp_path / "f", {"a/0.png": png_bytes((1, 2, 3)), "b/0.png": png_bytes((1, 2, 3))})
    with pytest.raises(ValueError, match=r"'a/0.png' in .* bytes, more than max_image_bytes \(10\)"):
        ingest("imagefolder", {"path": str(folder), "max_image_bytes": 10}, tmp_path / "s")


@pytest.mark.parametrize(
    "entry, data, message",
    [
        ("r/b/empty.png", b"", r"cannot decode image 'r/b/empty.png' in .*: it is empty \(0 bytes\)"),
        (
            "r/b/page.png",
            b"<!DOCTYPE html><html><body>Not Found</body></html>",
            r"'r/b/page.png' in .*: it is not an image file Pillow can read \(it begins b'<!DOCTYPE html><'\)",
        ),
        ("r/b/inner.zip", b"PK\x05\x06" + bytes(18), r"'r/b/inner.zip' in .* is an archive inside the dataset"),
    ],
    ids=["zero-byte", "html-as-png", "nested-zip"],
)
def test_an_entry_that_is_not_an_image_is_named_with_what_it_is(tmp_path, entry, data, message):
    archive = write_zip(
        tmp_path / "r.zip", {**class_files("r/", {"cat": 1}), "r/b/0.png": png_bytes((0, 0, 0)), entry: data}
    )
    with pytest.raises(ValueError, match=message):
        ingest("imagefolder", {"path": str(archive)}, tmp_path / "s")


def test_hostile_zip_layouts_are_named(tmp_path):
    files = {**class_files("r/", {"cat": 1, "dog": 1})}
    duplicate = write_zip(tmp_path / "dup.zip", files)
    with zipfile.ZipFile(duplicate, "a") as out, pytest.warns(UserWarning, match="Duplicate name"):
        out.writestr("r/dog/000.png", png_bytes((9, 9, 9)))
    with pytest.raises(ValueError, match=r"entry 'r/dog/000.png' in .* names the same file as entry 'r/dog/000.png'"):
        ingest("imagefolder", {"path": str(duplicate)}, tmp_path / "s")
    same_file = write_zip(tmp_path / "same.zip", {**files, "r/./dog//000.png": png_bytes((9, 9, 9))})
    with pytest.raises(ValueError, match=r"entry 'r/./dog//000.png' .* names the same file as entry 'r/dog/000.png'"):
        ingest("imagefolder", {"path": str(same_file)}, tmp_path / "s")
    encrypted = write_zip(tmp_path / "enc.zip", {**files, "r/dog/001.png": b"ciphertext"})
    data = bytearray(encrypted.read_bytes())
    for signature, flag_offset, name_offset in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        start = data.rindex(signature)  # the last entry's local or central header
        assert data[start + name_offset : start + name_offset + 13] == b"r/dog/001.png"
        data[start + flag_offset] |= 0x1  # the "encrypted" bit, as `zip -e` sets it
    encrypted.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"entry 'r/dog/001.png' in .* is encrypted; allowed: an unencrypted zip"):
        ingest("imagefolder", {"path": str(encrypted)}, tmp_path / "s")
    folders_only = write_zip(tmp_path / "dirs.zip", {}, dirs=("r/", "r/cat/", "r/dog/"))
    with pytest.raises(ValueError, match=r"no images found in .*dirs.zip; expected <root>/\[split/\]<class>/<image>"):
        ingest("imagefolder", {"path": str(folders_only)}, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_a_symlinked_class_folder_is_followed_once(tmp_path):
    elsewhere = write_folder(tmp_path / "elsewhere", class_files("", {"dog": 2}))
    root = write_folder(tmp_path / "data", class_files("", {"cat": 1}))
    (root / "dog").symlink_to(elsewhere / "dog", target_is_directory=True)
    (root / "cat" / "loop").symlink_to(root, target_is_directory=True)  # a link back up: not walked again
    raw = create_dataset("imagefolder", {"path": str(root)}).load(progress=False)
    assert raw.class_names == ["cat", "dog"] and list(raw.labels) == [0, 1, 1]


def test_class_folders_a_config_cannot_name_are_ingested_with_a_hint(tmp_path, caplog):
    from backdoor_eval.validation import validate

    folder = write_folder(tmp_path / "f", {"café/a.png": png_bytes((1, 2, 3)), "0/b.png": png_bytes((3, 2, 1))})
    with caplog.at_level("WARNING", logger="backdoor_eval.cli.data"):
        args = ["ingest", "--dataset", "imagefolder", "--params", json.dumps({"path": str(folder)})]
        assert cli.main([*args, "--out", str(tmp_path / "s")]) == 0
    hint = [r.getMessage() for r in caplog.records if "cannot be declared" in r.getMessage()]
    assert hint and "'0', 'café'" in hint[0] and "renamed (e.g. 'cafe', 'class0') before ingest" in hint[0]
    config = {"name": "x", "datasets": {"d": {"kind": "imagefolder", "classes": ["0", "café"]}}, "experiments": {}}
    with pytest.raises(ValueError, match=r"classes\[0\]: '0' is not a valid class name; .* must have them renamed"):
        validate(config)

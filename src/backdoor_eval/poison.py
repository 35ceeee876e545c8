"""Poisoning: which images are replaced, by which triggered copies (section 2.5, eqs. 8-9).

Decisions: docs/decisions.md#poison-sampling and docs/decisions.md#effective-poisoning-rate.

floor(poison_rate * N_t) images of the poison class t are removed from a set
and replaced by as many triggered copies of images drawn uniformly without
replacement from the pooled source classes, relabelled t; the clean
originals stay in their classes, so class sizes do not change. Poison-train
and poison-validation are poisoned independently at the same poison rate;
the clean sets are never touched.

A run's poisoning is stored as an overlay on the canonical store: the
replaced and drawn store indices and the 8-bit triggered pixels only
(``overlay.npz``) plus ``manifest.json``. :func:`load_poisoned` puts the
sets back together.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backdoor_eval import seeding
from backdoor_eval.hashing import arrays_sha256
from backdoor_eval.io import atomic_dir, read_json, reading, rebuild_hint, write_json
from backdoor_eval.names import CLEAN_PARTITIONS, MANY_TO_ONE, ONE_TO_ONE, PARTITIONS, POISONED_PARTITIONS, STRATEGIES
from backdoor_eval.triggers import Trigger, apply_uint8, create_trigger

if TYPE_CHECKING:  # Table 1's frame only: the poison and train jobs never import pandas
    import pandas as pd

log = logging.getLogger(__name__)

OVERLAY_FILE = "overlay.npz"
MANIFEST_FILE = "manifest.json"
# Images pushed through a trigger at once: bounds memory at 224 px (256 x 150,528 float32 = 154 MB).
TRIGGER_BATCH = 256


def check_poison_rate(poison_rate: float) -> float:
    try:
        value = float(poison_rate)
    except (TypeError, ValueError):
        raise ValueError(f"poison_rate={poison_rate!r} is not a number; allowed: a number in (0, 1)") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"poison_rate={poison_rate!r} is outside the allowed range (0, 1)")
    return value


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is unknown; allowed: {', '.join(STRATEGIES)}")
    return strategy


def num_poisoned(poison_rate: float, poison_class_count: int) -> int:
    """floor(poison_rate * N_t), the number of poison-class images replaced (section 2.5).

    A tiny epsilon keeps float products like 0.29 * 100 = 28.999999999999996 at 29.
    """
    return int(math.floor(check_poison_rate(poison_rate) * int(poison_class_count) + 1e-9))


def zero_poison_message(poison_rate: float, poison_class_count: int, class_name: str) -> str:
    """The error for a run that would poison no training image: the rate, the class size, the lowest rate allowed."""
    return (
        f"poison_rate={poison_rate} x {poison_class_count} poison-train images of class {class_name!r} rounds down "
        f"to 0 poisoned images; allowed: a poison rate of at least {1 / max(poison_class_count, 1):.4g} for this "
        "class (docs/decisions.md#poison-sampling)"
    )


def source_classes(num_classes: int, poison_class: int, strategy: str, source: int | None) -> list[int]:
    """The source classes K: all but the poison class (many-to-one) or the single source (one-to-one)."""
    check_strategy(strategy)
    if not 0 <= poison_class < num_classes:
        raise ValueError(f"poison_class={poison_class!r}; allowed: a class index in 0..{num_classes - 1}")
    if strategy == MANY_TO_ONE:
        if source is not None:
            raise ValueError(
                f"source={source!r} was given for many-to-one; allowed: no source (all classes but the poison class)"
            )
        return [c for c in range(num_classes) if c != poison_class]
    if source is None:
        raise ValueError("one-to-one poisoning needs a source class; got source=None")
    if not 0 <= source < num_classes:
        raise ValueError(f"source={source!r}; allowed: a class index in 0..{num_classes - 1}")
    if source == poison_class:
        raise ValueError(
            f"source={source!r} equals poison_class={poison_class!r}; allowed: a source class other than the poison class"
        )
    return [int(source)]


def select_poison(
    labels: np.ndarray,
    poison_class: int,
    poison_rate: float,
    strategy: str,
    source: int | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions within ``labels`` (one set's labels) to replace and to draw (section 2.5).

    ``replaced``: floor(poison_rate * N_t) poison-class positions, uniform at
    random. ``drawn``: as many positions drawn uniformly without replacement
    from the pooled source classes (so the expected count per source class is
    eq. 8). Both sorted int64.
    """
    labels = np.asarray(labels)
    poison_class, source = int(poison_class), None if source is None else int(source)
    num_classes = int(max(labels.max(initial=-1), poison_class, -1 if source is None else source)) + 1
    sources = source_classes(num_classes, poison_class, strategy, source)
    poison_positions = np.flatnonzero(labels == poison_class)
    if poison_positions.size == 0:
        raise ValueError(f"poison_class={poison_class} has no images in this set; allowed: a class present in it")
    count = num_poisoned(poison_rate, poison_positions.size)
    source_positions = np.flatnonzero(np.isin(labels, sources))
    if count > source_positions.size:
        raise ValueError(
            f"{count} poisoned images needed (poison_rate={poison_rate} x {poison_positions.size}) but the "
            f"source class(es) {sources} hold only {source_positions.size}; allowed: a lower poison rate or more sources"
        )
    if count == 0:
        log.warning(
            "poison_rate=%s x %d poison-class images rounds down to 0 poisoned images",
            poison_rate,
            poison_positions.size,
        )
    replaced = np.sort(rng.choice(poison_positions, size=count, replace=False))
    drawn = np.sort(rng.choice(source_positions, size=count, replace=False))
    return replaced.astype(np.int64), drawn.astype(np.int64)


def poison_stats(
    class_counts,
    poison_rate: float,
    strategy: str = MANY_TO_ONE,
    source: int | None = None,
    class_names: list[str] | None = None,
) -> pd.DataFrame:
    """Table 1: per poison class t, floor(lambda N_t), P_c per class (eq. 8) and p.

    ``P_c = floor(lambda N_t) N_c / sum_{k in K} N_k`` for source classes c
    (0 otherwise). The effective poisoning rate is floor(lambda N_t) over the
    total of all classes (the reading of eq. 9 in docs/decisions.md#effective-poisoning-rate: 71 / 4003 for daisy).
    One row per poison class (for one-to-one, every class but the source).
    Classes are named by ``class_names`` or, like the paper, 1..n.
    """
    import pandas as pd

    counts = np.asarray([int(c) for c in class_counts], dtype=np.int64)
    if counts.ndim != 1 or counts.size < 2 or (counts < 0).any() or counts.sum() == 0:
        raise ValueError(f"class_counts={list(class_counts)!r}; allowed: two or more counts >= 0, not all 0")
    check_poison_rate(poison_rate)
    check_strategy(strategy)
    names = [str(i + 1) for i in range(counts.size)] if class_names is None else [str(n) for n in class_names]
    if len(names) != counts.size:
        raise ValueError(f"{len(names)} class names for {counts.size} class counts; allowed: one name per count")
    total = int(counts.sum())
    rows = []
    for poison_class in range(counts.size):
        if strategy == ONE_TO_ONE and poison_class == source:
            continue
        sources = source_classes(counts.size, poison_class, strategy, source)
        count = num_poisoned(poison_rate, counts[poison_class])
        pooled = int(counts[sources].sum())
        row: dict[str, Any] = {"poison_class": names[poison_class], "num_poisoned": count}
        for c, name in enumerate(names):
            row[f"P_{name}"] = count * counts[c] / pooled if c in sources and pooled else 0.0
        row["effective_poisoning_rate"] = count / total
        rows.append(row)
    return pd.DataFrame(rows)


def format_poison_stats(frame: pd.DataFrame) -> str:
    """Table 1 as CSV at the paper's precision: P_c to 1 decimal, p to 4 decimals."""
    printed = frame.copy()
    for column in printed.columns:
        if column.startswith("P_"):
            printed[column] = printed[column].map(lambda v: f"{v:.1f}")
    printed["effective_poisoning_rate"] = printed["effective_poisoning_rate"].map(lambda v: f"{v:.4f}")
    return printed.to_csv(index=False, lineterminator="\n")


# ---------------------------------------------------------------------------
# Materialising a run's poisoning as an overlay on the store.


def _class_index(store: Any, value: int | str | None) -> int | None:
    if value is None:
        return None
    if hasattr(store, "class_index"):
        return int(store.class_index(value))
    names = list(store.class_names)
    if isinstance(value, str) and value in names:
        return names.index(value)
    if isinstance(value, (int, np.integer)) and 0 <= value < len(names):
        return int(value)
    raise ValueError(f"class {value!r} is unknown; allowed: {', '.join(names)} or 0..{len(names) - 1}")


def partitions_sha256(partitions: Mapping[str, np.ndarray]) -> str:
    """Fingerprint of the partitions, so an overlay is never applied to another split."""
    return arrays_sha256((name, np.asarray(partitions[name], dtype=np.int64)) for name in PARTITIONS)


def _bincount(labels: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()


def _triggered_pixels(images_uint8: np.ndarray, trigger: Trigger, rng: np.random.Generator) -> np.ndarray:
    return apply_uint8(trigger, images_uint8, rng, TRIGGER_BATCH)


def materialize(
    store: Any,
    partitions: Mapping[str, np.ndarray],
    trigger: Trigger,
    poison_class: int | str,
    poison_rate: float,
    strategy: str,
    source: int | str | None,
    seed: int,
    out_dir: str | os.PathLike,
    split_keys: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Poison poison-train and poison-validation and write the overlay; return the manifest.

    ``store`` is anything with ``images`` (uint8 (N, H, W, 3)), ``labels``,
    ``class_names`` (and optionally ``class_index``, ``manifest``). Writes
    ``out_dir/overlay.npz`` (``<set>_replaced``, ``<set>_drawn`` store indices,
    ``<set>_pixels`` uint8 triggered copies of the drawn images) and
    ``out_dir/manifest.json``, together and atomically. Same seed, same bytes.
    ``split_keys`` extend every stream's key when the split is a run's own
    (:func:`backdoor_eval.seeding.parse_split_id`).
    """
    seed = seeding.check_seed(seed)
    check_strategy(strategy)
    poison_rate = check_poison_rate(poison_rate)
    poison_index = _class_index(store, poison_class)
    source_index = _class_index(store, source)
    class_names = [str(n) for n in store.class_names]
    num_classes = len(class_names)
    source_classes(num_classes, poison_index, strategy, source_index)  # validates before any work
    missing = [name for name in PARTITIONS if name not in partitions]
    if missing:
        raise ValueError(f"partitions lack {missing}; allowed: a mapping with {', '.join(PARTITIONS)}")
    labels_all = np.asarray(store.labels)

    overlay: dict[str, np.ndarray] = {}
    sets: dict[str, Any] = {}
    for set_name in POISONED_PARTITIONS:
        indices = np.asarray(partitions[set_name], dtype=np.int64)
        labels = labels_all[indices]
        try:
            replaced_pos, drawn_pos = select_poison(
                labels,
                poison_index,
                poison_rate,
                strategy,
                source_index,
                seeding.rng(seed, f"{set_name}/select", *split_keys),
            )
        except ValueError as exc:
            raise ValueError(f"the {set_name} set: {exc}") from None
        if set_name == "poison_train" and drawn_pos.size == 0:
            raise ValueError(
                zero_poison_message(poison_rate, int((labels == poison_index).sum()), class_names[poison_index])
            )
        replaced, drawn = indices[replaced_pos], indices[drawn_pos]
        pixels = _triggered_pixels(
            np.asarray(store.images[drawn]), trigger, seeding.rng(seed, f"{set_name}/trigger", *split_keys)
        )
        overlay[f"{set_name}_replaced"] = replaced
        overlay[f"{set_name}_drawn"] = drawn
        overlay[f"{set_name}_pixels"] = pixels
        labels_after = np.concatenate([np.delete(labels, replaced_pos), np.full(drawn.size, poison_index)])
        sets[set_name] = {
            "num_images": int(indices.size),
            "num_poisoned": int(drawn.size),
            "class_counts_before": _bincount(labels, num_classes),
            "class_counts_after": _bincount(labels_after, num_classes),
            "drawn_per_class": _bincount(labels_all[drawn], num_classes),
            "effective_poisoning_rate": drawn.size / indices.size if indices.size else 0.0,
        }

    adv_indices = np.asarray(partitions["adv_test"], dtype=np.int64)
    adv_indices = adv_indices[labels_all[adv_indices] != poison_index]
    adv_source = adv_indices[labels_all[adv_indices] == source_index] if strategy == ONE_TO_ONE else adv_indices[:0]
    store_manifest = dict(getattr(store, "manifest", None) or {})
    manifest = {
        "poison_class": poison_index,
        "poison_class_name": class_names[poison_index],
        "poison_rate": poison_rate,
        "strategy": strategy,
        "source": source_index,
        "source_name": None if source_index is None else class_names[source_index],
        "seed": seed,
        "split_keys": [int(key) for key in split_keys],
        "adv_seed": seeding.derived_seed(seed, "adv_test/trigger", *split_keys),
        "trigger": trigger.spec(),
        "class_names": class_names,
        "image_shape": list(np.asarray(store.images[:1]).shape[1:]),
        "store": {key: store_manifest.get(key) for key in ("dataset", "num_images", "sha256")},
        "partitions_sha256": partitions_sha256(partitions),
        "sets": sets,
        "effective_poisoning_rate": sets["poison_train"]["effective_poisoning_rate"],
        "adv_test": {
            "num_images": int(adv_indices.size),
            "num_source_images": int(adv_source.size),
            "indices": adv_indices.tolist(),
            "source_indices": adv_source.tolist(),
        },
    }
    with atomic_dir(out_dir) as tmp:
        # Uncompressed: the pixels are noise-like, compression would buy little and cost time.
        with open(tmp / OVERLAY_FILE, "wb") as fh:
            np.savez(fh, **overlay)
        write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


class _LazySets(Mapping):
    """Set name -> (images, labels), each built on first access (the clean phase never loads poison-train)."""

    def __init__(self, builders: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]]):
        self._builders = builders
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __getitem__(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._builders:
            raise KeyError(f"set {name!r} is unknown; allowed: {', '.join(self._builders)}")
        if name not in self._cache:
            self._cache[name] = self._builders[name]()
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._builders)

    def __len__(self) -> int:
        return len(self._builders)


@dataclass
class PoisonedData:
    """A run's data as the developer sees it (poisoned sets) plus the adversarial test.

    ``sets[name] -> (images uint8 (n, H, W, 3), labels int64)`` for
    poison_train, poison_val, clean_train, clean_val. ``adv_test_images`` are
    the clean non-poison-class adversarial-test images: apply ``trigger`` on
    the fly with ``np.random.default_rng(adv_seed)``.
    """

    sets: Mapping[str, tuple[np.ndarray, np.ndarray]]
    adv_test_images: np.ndarray
    adv_test_labels: np.ndarray
    adv_test_source_mask: np.ndarray
    trigger: Trigger
    adv_seed: int
    poison_class: int
    manifest: dict[str, Any] = field(repr=False)


def _poisoned_set(store: Any, indices: np.ndarray, overlay: Mapping[str, np.ndarray], set_name: str, poison_class: int):
    replaced = overlay[f"{set_name}_replaced"]
    pixels = overlay[f"{set_name}_pixels"]
    if not np.isin(replaced, indices).all():
        raise ValueError(
            f"overlay {set_name}_replaced holds indices outside {set_name}; the overlay belongs to another split"
        )
    kept = indices[~np.isin(indices, replaced)]
    images = np.concatenate([np.asarray(store.images[kept]), pixels])
    labels = np.concatenate(
        [np.asarray(store.labels)[kept].astype(np.int64), np.full(pixels.shape[0], poison_class, dtype=np.int64)]
    )
    return images, labels


def load_poisoned(store: Any, partitions: Mapping[str, np.ndarray], overlay_dir: str | os.PathLike) -> PoisonedData:
    """Rebuild a run's sets from the store, the partitions and the overlay written by :func:`materialize`.

    Poisoned sets: the store's images with the replaced ones removed and the
    triggered copies appended, labelled with the poison class (class counts
    as before poisoning). Clean sets: untouched store images.
    """
    overlay_dir = Path(overlay_dir)
    manifest = read_json(overlay_dir / MANIFEST_FILE, "poison manifest", rebuild_hint("poison"))
    if manifest["partitions_sha256"] != partitions_sha256(partitions):
        raise ValueError(f"overlay {overlay_dir} was made for other partitions (partitions_sha256 differs)")
    store_sha = dict(getattr(store, "manifest", None) or {}).get("sha256")
    if store_sha is not None and manifest["store"].get("sha256") not in (None, store_sha):
        raise ValueError(f"overlay {overlay_dir} was made from another store (sha256 differs)")
    with (
        reading(overlay_dir / OVERLAY_FILE, "poison overlay", rebuild_hint("poison")),
        np.load(overlay_dir / OVERLAY_FILE) as npz,
    ):
        overlay = {key: npz[key] for key in npz.files}
    poison_class = int(manifest["poison_class"])

    def poisoned(set_name):
        indices = np.asarray(partitions[set_name], dtype=np.int64)
        return lambda: _poisoned_set(store, indices, overlay, set_name, poison_class)

    def clean(set_name):
        indices = np.asarray(partitions[set_name], dtype=np.int64)
        return lambda: (np.asarray(store.images[indices]), np.asarray(store.labels)[indices].astype(np.int64))

    builders = {name: poisoned(name) for name in POISONED_PARTITIONS}
    builders.update({name: clean(name) for name in CLEAN_PARTITIONS})
    adv_indices = np.asarray(manifest["adv_test"]["indices"], dtype=np.int64)
    adv_labels = np.asarray(store.labels)[adv_indices].astype(np.int64)
    source_mask = np.isin(adv_indices, np.asarray(manifest["adv_test"]["source_indices"], dtype=np.int64))
    return PoisonedData(
        sets=_LazySets(builders),
        adv_test_images=np.asarray(store.images[adv_indices]),
        adv_test_labels=adv_labels,
        adv_test_source_mask=source_mask,
        trigger=create_trigger(**manifest["trigger"]),
        adv_seed=int(manifest["adv_seed"]),
        poison_class=poison_class,
        manifest=manifest,
    )

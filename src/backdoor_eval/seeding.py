"""Every random stream of a run, derived from the run's seed and a named purpose.

docs/decisions.md#seeds: a run has one seed (the ``seed`` factor). Each use
of randomness (which images a split puts where, which images are poisoned,
where a random square goes, the head's initial weights, each epoch's batch
order and dropout) draws from its own stream, ``SeedSequence(seed,
spawn_key=(purpose id, *keys))``. Streams are independent of each other, so
adding a purpose, or a trigger that draws more numbers, never shifts
another's draws. Purpose ids are fixed forever: never renumber them.

The data a run trains on (its partitions, poison draws and LV reference)
come from its *split*: with a split shared per seed the streams are the
seed's; with a split per run, two words derived from the run's identity are
appended to each stream's key, so runs that differ in any factor draw
independently.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

PURPOSES = {
    "poison_train/select": 1,  # which source images are poisoned (eq. 8)
    "poison_val/select": 2,
    "poison_train/trigger": 3,  # per-image trigger draws (RS positions)
    "poison_val/trigger": 4,
    "adv_test/trigger": 5,
    "lv/reference": 6,  # the LV trigger's reference image
    "partitions": 7,  # the 76/19/5 then 80/20 split
    "model/init": 8,  # the new head's initial weights
    "train/data": 9,  # keys (phase index, epoch): batch order, augmentation, regularizer draws
    "train/torch": 10,  # keys (phase index, epoch): torch's global stream (dropout)
    "gallery/trigger": 11,  # Fig. 2's random-square position
    "pretrain/holdout": 12,  # a pretraining's held-out images (backdoor_eval.pretrain)
    "pretrain/init": 13,  # a pretraining's initial weights
    "pretrain/data": 14,  # keys (epoch,): a pretraining epoch's batch order, augmentation
    "pretrain/torch": 15,  # keys (epoch,): torch's global stream (dropout)
    "analysis/strip": 16,  # STRIP's choice of clean images to blend with (backdoor_eval.analyses.strip)
    "analysis/cluster": 17,  # the seeds of activation clustering's ICA and k-means
}


# A split: "seed<N>" (shared by every run of seed N) or "seed<N>-<16 hex>" (one
# run's own; the hex is the start of the sha256 of the run's identity).
SPLIT_ID_PATTERN = r"seed[0-9]+(?:-[0-9a-f]{16})?"
_SPLIT_ID = re.compile(r"^seed([0-9]+)(?:-([0-9a-f]{16}))?$")


def split_id(seed: int, identity: str | None = None) -> str:
    """The name of a split: of ``seed`` alone, or of one run (``identity``, e.g. its run id) and ``seed``."""
    seed = check_seed(seed)
    if identity is None:
        return f"seed{seed}"
    return f"seed{seed}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def parse_split_id(split: str) -> tuple[int, tuple[int, ...]]:
    """``(seed, keys)`` of a split id: the keys (two 32-bit words of its hex, or none) extend every stream."""
    match = _SPLIT_ID.match(str(split))
    if match is None:
        raise ValueError(f"split {split!r} is not a split id; allowed: seed<N> or seed<N>-<16 hex digits>")
    seed, key = int(match.group(1)), match.group(2)
    return seed, (() if key is None else (int(key[:8], 16), int(key[8:], 16)))


def check_seed(seed: object) -> int:
    """``seed`` as an int, or a ``ValueError`` naming it (seeds are whole numbers >= 0)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}; allowed: a whole number >= 0")
    return int(seed)


def seed_sequence(seed: int, purpose: str, *keys: int) -> np.random.SeedSequence:
    """The run seed's stream for ``purpose`` (a key of :data:`PURPOSES`) and optional int ``keys``."""
    if purpose not in PURPOSES:
        raise ValueError(f"seed purpose {purpose!r} is unknown; allowed: {', '.join(PURPOSES)}")
    return np.random.SeedSequence(check_seed(seed), spawn_key=(PURPOSES[purpose], *map(int, keys)))


def rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """A NumPy generator on the purpose's stream."""
    return np.random.default_rng(seed_sequence(seed, purpose, *keys))


def derived_seed(seed: int, purpose: str, *keys: int) -> int:
    """A plain integer seed (JSON-able, fits torch.manual_seed) on the purpose's stream."""
    return int(seed_sequence(seed, purpose, *keys).generate_state(1, dtype=np.uint64)[0])

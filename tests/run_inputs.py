"""Shared by the engine tests: a synthetic set ingested, partitioned and poisoned through the CLI.

Not a test module; the test files import it (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import json
from pathlib import Path

from backdoor_eval.cli import main as cli


def poisoned_synthetic_run(root: Path, synthetic: dict, poison_rate: float = 0.3) -> tuple[Path, Path, Path, Path]:
    """Ingest the synthetic set with parameters ``synthetic`` under ``root``, partition it (seed 0) and poison
    class 0 with BS (many-to-one, ``poison_rate``); return ``(root, store, partitions, poisoned)``."""
    store, parts, poisoned = root / "store", root / "partitions.npz", root / "poisoned"
    assert cli(["ingest", "--dataset", "synthetic", "--params", json.dumps(synthetic), "--out", str(store)]) == 0
    assert cli(["partition", "--store", str(store), "--seed", "0", "--out", str(parts)]) == 0
    poison = ["poison", "--store", str(store), "--partitions", str(parts), "--trigger", "bs", "--poison-class", "0"]
    poison += ["--poison-rate", str(poison_rate), "--strategy", "many-to-one", "--seed", "0", "--out", str(poisoned)]
    assert cli(poison) == 0
    return root, store, parts, poisoned


# The run parameters of :func:`poisoned_synthetic_run` (BS, class 0, rate 0.3, seed 0), as `summarize` and
# `analyze` take them.
POISONED_SYNTHETIC_RUN_PARAMS = {
    "run_id": "synthetic/small_cnn/bs/a1.0/many-to-one/tclass0/sall/r0.3/none/seed0",
    "dataset": "synthetic",
    "model": "small_cnn",
    "trigger": "bs",
    "alpha": 1.0,
    "strategy": "many-to-one",
    "poison_class": "class0",
    "source": "all",
    "poison_rate": 0.3,
    "regularizer": "none",
    "seed": 0,
}
